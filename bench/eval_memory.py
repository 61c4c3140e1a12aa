"""Peak memory of an evaluation at n and 4n samples (docs/runs.md, Evaluation): a row keeps the features of
its samples, never the samples, so the peak follows --batch, not n.

    python bench/eval_memory.py            # ~4 min on 2 cores: children for n = 256, 1,024, 1,024 kept

Each child builds a pixel teacher of 3 x 128 x 128 images (a small random-weight UNet2DModel from a config,
saved to a temporary directory and loaded by teachers.load_teacher) and scores one teacher row through the
evaluation's own path: evaluate.generate with evaluate.Scorer (DDIM-1 samples, Inception features after
clean-fid's resize to 299, batch 16). The Inception network is a random-weight stand-in of the same input and
output (its weights are a download); the resize, the features' size (2,048 per sample) and the row's
bookkeeping are the real ones. The child prints its peak resident memory (ru_maxrss), with glibc's malloc
told to hand blocks over 128 kB back to the system when freed (MALLOC_MMAP_THRESHOLD_), so that the peak
counts what is alive rather than what the allocator keeps. A third child keeps every sample of the row, as
a list beside the features: the control that shows what the measurement sees when images are kept.
"""

import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path


ROOT = Path(__file__).resolve().parents[1]
SIZE, BATCH, NS = 128, 16, (256, 1024)


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: kB


def child(n: int, keep_samples: bool) -> dict:
    sys.path.insert(0, str(ROOT))
    import torch
    from diffusers import DDPMPipeline, DDPMScheduler, UNet2DModel

    import evaluate as E
    import teachers

    torch.manual_seed(0)
    blocks = dict(down_block_types=("DownBlock2D",) * 2, up_block_types=("UpBlock2D",) * 2)
    unet = UNet2DModel(
        sample_size=SIZE,
        in_channels=3,
        out_channels=3,
        layers_per_block=1,
        block_out_channels=(16, 32),
        norm_num_groups=8,
        add_attention=False,
        **blocks,
    )
    stand_in = torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d(8), torch.nn.Flatten(), torch.nn.Linear(192, 2048))
    E.inception_network = lambda mode, device: lambda x: stand_in(x / 255).detach()
    with tempfile.TemporaryDirectory() as d:
        DDPMPipeline(unet=unet, scheduler=DDPMScheduler()).save_pretrained(d)
        teacher = teachers.load_teacher(d)
        scorer, kept = E.Scorer(E.PROTOCOLS["held-out"], ("inception",)), []
        score = lambda x, s: (kept.append(x) if keep_samples else None) or scorer(x)  # noqa: E731
        before, start = rss_mb(), time.time()
        with torch.no_grad():
            values, _, grid = E.generate(
                E.teacher_sampler(teacher, "ddim", 1), score, range(n), BATCH, keep=E.GRID_COLUMNS
            )
    assert values["inception"].shape == (n, 2048) and len(grid) == E.GRID_COLUMNS
    out = {"n": n, "samples_kept": keep_samples, "peak_rss_mb": rss_mb(), "before_mb": before}
    return out | {"seconds": time.time() - start}


def measure() -> dict:
    rows, env = [], {**os.environ, "MALLOC_MMAP_THRESHOLD_": str(128 * 1024)}
    for n, keep in [(n, False) for n in NS] + [(NS[-1], True)]:
        argv = [sys.executable, __file__, "--child", str(n)] + ["--keep-samples"] * keep
        p = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, check=True)
        rows.append(json.loads(p.stdout.strip().splitlines()[-1]))
    image_mb = 3 * SIZE * SIZE * 4 / 2**20  # one float32 sample
    return {"rows": rows, "image_mb": image_mb, "size": SIZE, "batch": BATCH, "date": time.strftime("%Y-%m-%d")}


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    import cli

    p = cli.OneLineParser(description="peak memory of an evaluation at n and 4n samples")
    p.add_argument("--child", type=int, default=None, help="one child: score n samples, print its peak")
    p.add_argument("--keep-samples", action="store_true", help="the child keeps every sample (the control)")
    a = p.parse_args()
    print(json.dumps(child(a.child, a.keep_samples)) if a.child else json.dumps(measure(), indent=1))
