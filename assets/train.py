"""The scripts that trained the shipped assets, kept next to them: the embedded digits teacher
(assets/digits-teacher, its settings in training.json) and the digits feature classifier that
evaluate.py's offline FD uses (assets/digits-classifier, its settings in config.json).

    python assets/train.py digits [--steps 2500] [--seed 0]   # the teacher (IDDPM hybrid loss; time: training.json)
    python assets/train.py classifier [--seed 0]              # the classifier, on a seeded split

Both overwrite the shipped files; every number in the README that depends on them would move.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path


sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository's modules

import torch

import cli
import dkdm
import evaluate
import runkit
import teachers
from pipelines import students
from pipelines.pipeline_ddim import TrailingDDIMPipeline  # DDIM as teachers.ddim does it


def train_digits(out_dir=teachers.DIGITS_DIR, steps=2500, batch=128, lr=1e-3, seed=0, p_uncond=0.2):
    """Train the embedded teacher on scikit-learn's digits and save it in diffusers format."""
    from diffusers import DDPMScheduler, UNet2DConditionModel
    from tqdm import tqdm

    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    x, y = teachers.load_digits_tensor()
    model = UNet2DConditionModel(**teachers.digits_unet_config())
    ema = runkit.EMA(model, 0.999)
    scheduler = DDPMScheduler(
        num_train_timesteps=1000,
        beta_schedule="squaredcos_cap_v2",
        variance_type="learned_range",
        clip_sample=True,
        prediction_type="epsilon",
    )
    sch = teachers.Schedule(scheduler.alphas_cumprod)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)

    def lr_at(k):  # 100 warm-up steps, then a cosine to 0
        return lr * min(1.0, (k + 1) / 100) * 0.5 * (1 + math.cos(math.pi * k / steps))

    start = time.time()
    bar = tqdm(range(steps), desc="digits teacher")
    for k in bar:
        idx = torch.randint(0, len(x), (batch,), generator=g)
        labels = torch.where(torch.rand(batch, generator=g) < p_uncond, torch.full_like(y[idx], 10), y[idx])
        loss = dkdm.iddpm_loss(model, x[idx], {"class_labels": labels}, sch, g)
        for group in opt.param_groups:
            group["lr"] = lr_at(k)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        ema.update(model)
        if k % 50 == 0:
            bar.set_postfix(loss=f"{loss.item():.4f}")
    ema.copy_to(model)
    out_dir = Path(out_dir)
    TrailingDDIMPipeline(
        unet=model,
        scheduler=students.ddim_scheduler(dict(scheduler.config)),
        num_classes=10,
        variance_type=scheduler.config.variance_type,
        default_guidance=1.0,
    ).save_pretrained(out_dir)
    info = {
        "dataset": "sklearn.datasets.load_digits (1,797 8x8 digits, scaled to [-1, 1])",
        "steps": steps,
        "batch": batch,
        "lr": lr,
        "seed": seed,
        "p_uncond": p_uncond,
        "ema": 0.999,
        "loss": "IDDPM hybrid (L_simple + L_vlb, t > 0)",
        "seconds": round(time.time() - start, 1),
        "command": f"python assets/train.py digits --steps {steps} --seed {seed}",
    }
    (out_dir / "training.json").write_text(json.dumps(info, indent=2))
    print(f"saved {out_dir} ({info['seconds']} s)")
    return model


def shift_and_jitter(x, generator):
    """Augmentation: a random shift of up to one pixel (background fill) and small Gaussian noise,
    so that features of continuous-valued samples are as stable as those of the 17-level data."""
    pad = torch.nn.functional.pad(x, (1, 1, 1, 1), value=-1.0)
    dy, dx = torch.randint(0, 3, (2,), generator=generator).tolist()
    x = pad[:, :, dy : dy + 8, dx : dx + 8]
    return x + 0.05 * torch.randn(x.shape, generator=generator)


def train_classifier(out_dir=evaluate.CLASSIFIER_DIR, seed=0, held_out=360, epochs=60, batch=64, lr=2e-3):
    """Train the digits feature classifier on a seeded split; print and save held-out accuracy."""
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    x, y = teachers.load_digits_tensor()
    perm = torch.randperm(len(x), generator=g)
    test, train = perm[:held_out], perm[held_out:]
    model = evaluate.DigitsClassifier()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    steps = epochs * -(-len(train) // batch)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    start = time.time()
    from tqdm import tqdm

    for _ in tqdm(range(epochs), desc="digits classifier", unit="epoch"):
        order = train[torch.randperm(len(train), generator=g)]
        for i in range(0, len(order), batch):
            idx = order[i : i + batch]
            loss = torch.nn.functional.cross_entropy(model(shift_and_jitter(x[idx], g)), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    model.eval()
    with torch.no_grad():
        acc = (model(x[test]).argmax(1) == y[test]).float().mean().item()
    from safetensors.torch import save_file

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, out_dir / "model.safetensors")
    cfg = {
        "channels": [32, 64, 64],
        "feature_dim": 128,
        "num_classes": 10,
        "seed": seed,
        "held_out": held_out,
        "held_out_accuracy": round(acc, 4),
        "epochs": epochs,
        "batch": batch,
        "lr": lr,
        "trained_by": "python assets/train.py classifier",
        "data": "sklearn.datasets.load_digits, x = pixels / 8 - 1, split by torch.randperm(seed)",
    }
    (out_dir / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
    n_params = sum(p.numel() for p in model.parameters())
    print(
        f"digits classifier: {n_params:,} parameters, {steps} steps in {time.time() - start:.0f} s, "
        f"held-out accuracy {100 * acc:.1f} % on {held_out} images -> {out_dir}"
    )
    return acc


def main(argv=None):
    p = cli.OneLineParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("what", choices=["digits", "classifier"], help="which asset to re-train")
    p.add_argument("--steps", type=int, default=2500, help="digits: optimisation steps")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    if a.what == "digits":
        train_digits(steps=a.steps, seed=a.seed)
    else:
        train_classifier(seed=a.seed)
    return 0


if __name__ == "__main__":
    sys.exit(main())
