"""Students outside their method's algorithm: fresh architectures, exports, loading, `sample RUN`.

The architectures of DKDM's fresh students come first (`cnn_config` / `vit_config`; BOOT's students
are made in boot.py). The pipeline files beside this one (pipeline_boot.py, pipeline_ddim.py) are
what every export carries and a plain diffusers user runs;
this module is the repository's side of them, never copied into an export: `boot_pipeline` /
`ddpm_pipeline` build an export from a trained network, `ExportedStudent` loads one back for
evaluate.py and previews, and `sample_command` is `python boot.py sample RUN` / `python dkdm.py sample RUN`.
"""

from __future__ import annotations

import importlib
import inspect
import json
import math
import os
import time
from pathlib import Path

import torch
from diffusers import DDIMScheduler, DDPMScheduler
from torchvision.utils import save_image

import cli
import runkit
import teachers
from cli import OneLineParser, UserError
from pipelines.pipeline_boot import BootPipeline, to_images
from pipelines.pipeline_ddim import TrailingDDIMPipeline
from runkit import print0
from teachers import ancestral, latent_scale, load_teacher, seeded_noise


# --- Fresh students' architectures: DKDM's cnn and vit (Sec. 4.2, Table 5), BOOT's small UNet
def out_channels(teacher):
    """A denoiser standing in for `teacher` predicts eps (C channels), plus C variance channels (v of
    DKDM Eq. 12) when the teacher learned them."""
    C = teacher.sample_shape[0]
    return 2 * C if teacher.learned_variance else C


def label_slots(teacher):
    """Label embeddings: the teacher's classes + its null label (absent when unconditional)."""
    return teacher.num_classes + 1 if teacher.num_classes else None


def cnn_config(teacher, width=None):
    """A UNet2DModel smaller than the teacher: 2 levels at 8x8, 3 up to 32x32, 4 above."""
    C, H, _ = teacher.sample_shape
    w = width or (16 if H <= 8 else 64)
    mult = (1, 2) if H <= 8 else (1, 2, 2) if H <= 32 else (1, 2, 2, 4)
    attn_last = H > 8  # self-attention at the lowest resolution only, above 8x8
    down = ["DownBlock2D"] * (len(mult) - 1) + ["AttnDownBlock2D" if attn_last else "DownBlock2D"]
    up = ["AttnUpBlock2D" if attn_last else "UpBlock2D"] + ["UpBlock2D"] * (len(mult) - 1)
    return dict(
        sample_size=H,
        in_channels=C,
        out_channels=out_channels(teacher),
        block_out_channels=[w * m for m in mult],
        layers_per_block=1 if H <= 8 else 2,
        down_block_types=down,
        up_block_types=up,
        norm_num_groups=8 if w <= 32 else 32,
        attention_head_dim=8,
        num_class_embeds=label_slots(teacher),
    )


def vit_config(teacher, width=None):
    """A DiTTransformer2DModel (adaLN-zero, patch 2): 4 layers of width 128 at 8x8, 12 of 384 above."""
    C, H, _ = teacher.sample_shape
    w = width or (128 if H <= 8 else 384)
    return dict(
        sample_size=H,
        in_channels=C,
        out_channels=out_channels(teacher),
        patch_size=2,
        num_layers=4 if H <= 8 else 12,
        num_attention_heads=4,
        attention_head_dim=w // 4,
        num_embeds_ada_norm=label_slots(teacher) or 1,
    )


def adaln_zero_(model):
    """DiT's adaLN-Zero initialisation (Peebles & Xie, arXiv:2212.09748, Sec. 3.2): every block's
    modulation layer (its shift, scale and gate) and the final layer's modulation and projection
    start at zero, so each block starts as the identity and the model's output at 0. diffusers'
    DiTTransformer2DModel keeps PyTorch's default init there."""
    for name, m in model.named_modules():
        if name.endswith(".norm1.linear") or name in ("proj_out_1", "proj_out_2"):
            torch.nn.init.zeros_(m.weight)
            torch.nn.init.zeros_(m.bias)
    return model


def ddim_scheduler(config: dict):
    """diffusers' DDIMScheduler that tells the truth about `ddim` below: the same betas, trailing
    spacing, last step to alpha_bar = 1, x0-hat clipped to [-1, 1] when `clip` (the pipelines
    recompute eps from the clipped x0-hat, diffusers' use_clipped_model_output=True)."""
    keys = set(inspect.signature(DDIMScheduler.__init__).parameters) - {"self"}
    base = {k: v for k, v in config.items() if k in keys}
    return DDIMScheduler.from_config(
        base, timestep_spacing="trailing", set_alpha_to_one=True, steps_offset=0, thresholding=False
    )


PIPELINES = {"BootPipeline": BootPipeline, "TrailingDDIMPipeline": TrailingDDIMPipeline}  # exports' classes


def print_snippet(directory, info: dict, prompt=None):
    """After training: the plain-diffusers lines that load and sample the export in `directory`."""
    steps, K = ("" if info["method"] == "boot" else ", num_inference_steps=50"), info.get("num_classes")
    call, note = ("batch_size=4" + steps), ""
    if prompt is not None:
        call = f"prompt={json.dumps(prompt)}"
        if info.get("stage", 1) == 2:
            call, note = call + ", image=low_res", "low_res: the stage-I student's images, output_type='latent'"
    elif K:
        call = f"batch_size={K}, class_labels=list(range({K}))" + steps
    print0(
        "load it with plain diffusers:\nfrom diffusers import DiffusionPipeline\n"
        f"pipe = DiffusionPipeline.from_pretrained({json.dumps(str(directory))}, trust_remote_code=True)\n"
        f"images = pipe({call}).images" + (f"  # {note}" if note else "")
    )


def boot_pipeline(unet, info: dict, teacher, encoder=None):
    """A BOOT student as a BootPipeline (pipelines/pipeline_boot.py) with what it needs to run alone:
    the text encoder and tokenizer (`encoder`: the teacher that encodes the prompts), the latent
    decoder, IF-II's noising scheduler."""
    facts = {
        k: info.get(k)
        for k in (
            "T",
            "t_max",
            "alpha_tmax",
            "sigma_tmax",
            "time_cond_dim",
            "time_input",
            "native_time",
            "output",
            "guided",
            "default_w",
            "num_classes",
        )
    }
    parts = dict(sample_channels=teacher.sample_shape[0], sample_size=teacher.sample_shape[-1])
    if encoder is not None:
        parts.update(
            text_encoder=encoder.text_encoder,
            tokenizer=encoder.tokenizer,
            max_length=encoder.max_length,
            use_mask=encoder.use_mask,
        )
    if teacher.latent:
        teacher.vae.register_to_config(scaling_factor=latent_scale(teacher.vae))  # written explicitly
        parts["vae"] = teacher.vae
    if info.get("stage", 1) == 2:
        parts.update(
            image_noising_scheduler=DDPMScheduler.from_config(teacher.noising_config), noise_level=info["noise_level"]
        )
    return BootPipeline(unet=unet, **facts, **parts)


def ddpm_pipeline(unet, teacher, source):
    """A diffusion student (DKDM) as a TrailingDDIMPipeline (pipelines/pipeline_ddim.py): the
    teacher's scheduler (from `source`, its pipeline; else its alphas_cumprod) with the student's
    variance type, eps prediction and clip, and the teacher's latent decoder when it has one."""
    over = dict(
        variance_type="learned_range" if teacher.learned_variance else teacher.variance_type,
        prediction_type="epsilon",
        clip_sample=teacher.clip == "static",
        thresholding=False,
    )
    if source is not None:
        conf = {k: v for k, v in teachers._scheduler_facts(source)[1].items() if not k.startswith("_")}
        sched = DDPMScheduler.from_config(conf, **over)
    else:
        ab = teacher.schedule.alphas_cumprod
        betas = 1 - ab / torch.cat([torch.ones(1, dtype=ab.dtype), ab[:-1]])
        sched = DDPMScheduler(num_train_timesteps=len(ab), trained_betas=betas.tolist(), **over)
    if teacher.latent:  # the factor the teacher's latents use, written explicitly into the export
        teacher.vae.register_to_config(scaling_factor=latent_scale(teacher.vae))
    return TrailingDDIMPipeline(
        unet=unet,
        scheduler=ddim_scheduler(dict(sched.config)),
        vae=teacher.vae if teacher.latent else None,
        num_classes=teacher.num_classes,
        variance_type=sched.config.variance_type,
        default_guidance=teacher.default_guidance,
    )


def export_ema(ema, pipeline_of, info: dict, run_path):
    """run/student/: the EMA weights as the diffusers pipeline `pipeline_of(model)` (saved with its own
    pipeline file) and generator.json, written aside and swapped in whole. -> (dir, EMA model)."""
    model = ema.model()
    final, tmp = Path(run_path) / "student", Path(run_path) / f".student.tmp-{os.getpid()}"
    pipeline_of(model).save_pretrained(tmp)
    runkit.write_text_atomic(tmp / "generator.json", json.dumps(info, indent=2))
    runkit.replace_dir(tmp, final)  # the old export stays until the new one is whole
    return final, model


@torch.no_grad()
def write_preview(teacher, student_dir, path, n=16, steps=50):
    """preview.png: teacher (top row) and the exported student (bottom row), DDIM-50 from the same noise."""
    student = load_teacher(str(student_dir), device=teacher.device)
    seeds = list(range(n))
    noise = seeded_noise(seeds, teacher.sample_shape, teacher.device)
    cond = teacher.label_cond(torch.tensor([s % teacher.num_classes for s in seeds])) if teacher.num_classes else None
    rows = [teacher.decode(teachers.ddim(m, noise, steps, cond, teacher.default_guidance)) for m in (teacher, student)]
    save_image(torch.cat(rows).float().cpu(), path, nrow=n)


def load_pipeline(path, device="cpu"):
    """An export through this repository's copy of its pipeline class (the same code an outside
    user gets with trust_remote_code=True)."""
    index = (
        json.loads((Path(path) / "model_index.json").read_text())
        if (Path(path) / "model_index.json").is_file()
        else {}
    )
    name = index.get("_class_name", "")
    name = name[1] if isinstance(name, (list, tuple)) else name  # a [file, class] pair
    if name not in PIPELINES:
        raise UserError(
            f"'{path}' was exported by an older version of this repository; rerun its training "
            f"command (a finished run only re-exports) to write a diffusers pipeline"
        )
    # diffusers' from_pretrained would import the folder's copy of the file as remote code; the
    # repository runs its own: the components are loaded one by one, the scalars passed as they are
    parts = {}
    for key, value in index.items():
        if key.startswith("_"):
            continue
        if isinstance(value, list) and len(value) == 2 and value[0] in (None, "diffusers", "transformers"):
            lib = value[0] and importlib.import_module(value[0])
            parts[key] = lib and getattr(lib, value[1]).from_pretrained(str(Path(path) / key))
        else:
            parts[key] = value
    pipe = PIPELINES[name](**parts)
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


class ExportedStudent:
    """A distilled student loaded from `RUN/student`: generate(noise, cond, w) -> x0 in model space.

    The student is a diffusers pipeline (pipelines/): a one-step BootPipeline or a
    TrailingDDIMPipeline (DKDM). student/generator.json holds what only this repository needs
    (which teacher, its hub id, the IF stage-1 run) for evaluation and previews.
    """

    def __init__(self, run_dir, device="cpu"):
        d = Path(run_dir) / "student"
        self.info = check_finished_run(run_dir, check_files=False)
        self.teacher_name, self.sample_shape = self.info["teacher"], tuple(self.info["sample_shape"])
        self.num_classes, self.default_guidance = self.info.get("num_classes"), self.info.get("default_w")
        self.device, self.pipe = torch.device(device), load_pipeline(d, device)
        dkdm = self.info["method"] == "dkdm"  # a DKDM student is also read as a teacher, for ancestral sampling
        self.model = load_teacher(str(d), device=device) if dkdm else self.pipe.unet
        self.nfe = int(self.info.get("steps", 50)) if dkdm else 1

    def label_cond(self, labels):
        return {"class_labels": torch.as_tensor(labels, dtype=torch.long, device=self.device)}

    def condition(self, label, prompt, seeds):
        """The condition of `sample`: labels (--label, else 0..K-1 repeated), the prompt's embedding
        by the exported pipeline's own text encoder, and for IF-II the stage-1 student's output."""
        info, n = self.info, len(seeds)
        if info.get("num_classes") and prompt is None:
            labels = torch.arange(n) % info["num_classes"] if label is None else torch.full((n,), label)
            if labels.min() < 0 or labels.max() >= info["num_classes"]:
                raise UserError(f"--label must lie in 0..{info['num_classes'] - 1}")
            return self.label_cond(labels)
        if label is not None:
            raise UserError("this student is not class-conditional: --label does not apply")
        if prompt is None:
            if info.get("text"):
                raise UserError("this student is text-conditioned: pass --prompt TEXT")
            return None
        if getattr(self.pipe, "text_encoder", None) is None:
            raise UserError("this student is not text-conditioned: --prompt does not apply")
        cond = {"encoder_hidden_states": self.pipe.encode_prompt([prompt] * n).float()}
        if info.get("stage", 1) == 2:
            stage1 = ExportedStudent(info["stage1_run"], self.device)
            x1 = stage1.generate(seeded_noise(seeds, stage1.sample_shape, self.device), cond, None).clamp(-1, 1)
            low = self.pipe.lowres(x1, info["noise_level"], generator=torch.Generator().manual_seed(seeds[0]))
            cond = {**cond, **teachers.cond_to(low, self.device)}
        return cond

    @torch.no_grad()
    def generate(self, noise, cond=None, w=None, generator=None):
        info = self.info
        if info["method"] == "dkdm":
            if info.get("sampler", "ddim") == "ancestral":
                return ancestral(self.model, noise, self.nfe, cond, w, generator=generator)
            labels = None if cond is None else cond.get("class_labels")
            return self.pipe.denoise(noise, labels, w, self.nfe)
        return self.pipe.denoise(noise, cond, w)

    def decode(self, x):
        """Images in [0, 1] as the pipeline makes them (its own latent decoder, when it has one)."""
        return to_images(x, getattr(self.pipe, "vae", None), "pt")


def sample_device(name):
    """--device of the `sample` commands: the GPU when there is one, unless told otherwise."""
    try:
        device = torch.device(name or ("cuda" if torch.cuda.is_available() else "cpu"))
    except (RuntimeError, ValueError):
        raise UserError(f"unknown --device '{name}' (cuda, cuda:K or cpu)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--device {name}: no GPU is visible to torch here")
    return device


def check_finished_run(run, what: str = "", check_files=True) -> dict:
    """A finished run directory (student/generator.json parses; check_files: student/ is a whole export,
    no weights read): its generator.json. `what` names the run the caller wants ("stage-1", "dkdm")."""
    p, what = Path(run), f"{what} " if what else ""
    problem = (
        "does not exist"
        if not p.is_dir()
        else "is empty"
        if not any(p.iterdir())
        else "has no student/generator.json"
        if not (p / "student" / "generator.json").is_file()
        else None
    )
    if problem:
        raise UserError(f"run directory '{run}' {problem}: it is not a finished {what}run (has training finished?)")
    info = cli.read_json(p / "student" / "generator.json", f"{what}student description")
    if check_files:
        cli.check_model_dir(p / "student", f"{what}student")
    return info


def sample_command(method: str, argv) -> None:
    """`python boot.py sample RUN` / `python dkdm.py sample RUN`: samples of a finished run from its
    exported pipeline alone. BOOT students take one step (--label / --prompt / --w); DKDM students
    run IDDPM ancestral or DDIM sampling (--sampler / --steps, labels seed mod classes)."""
    boot = method == "boot"
    p = OneLineParser(prog=f"{method}.py sample", description=f"samples of a finished {method.upper()} run")
    p.add_argument("run", help="run directory (with student/)")
    p.add_argument(
        "--n", type=int, default=16 if boot else 64, help="number of samples (seeds --seed .. --seed + n - 1)"
    )
    p.add_argument("--seed", type=int, default=0, help="first noise seed")
    p.add_argument(
        "--out", default=None, help="PNG path (default: RUN/samples.png; dkdm: RUN/samples-<sampler><steps>.png)"
    )
    p.add_argument("--device", default=None, help="cuda, cuda:K or cpu (default: cuda when there is a GPU)")
    if boot:
        p.add_argument("--label", type=int, default=None, help="class label (class-conditional teachers)")
        p.add_argument("--prompt", default=None, help="text prompt (text-to-image teachers)")
        p.add_argument("--w", type=float, default=None, help="guidance weight the student is conditioned on")
    else:
        p.add_argument("--sampler", choices=["ancestral", "ddim"], default="ancestral", help="IDDPM ancestral or DDIM")
        p.add_argument("--steps", type=int, default=50, help="sampler steps")
    a = p.parse_args(argv)
    if a.n < 1 or not boot and a.steps < 1:
        raise UserError("--n must be at least 1" if boot else "--steps and --n must be at least 1")
    if boot and a.w is not None and not math.isfinite(a.w):
        raise UserError(f"--w must be a finite number, got {a.w}")
    device = sample_device(a.device)  # a flag error first, before anything is read
    info = check_finished_run(a.run, method)
    if info.get("method") != method:
        raise UserError(f"'{a.run}' is not a {method} run (its student is a {info.get('method')} student)")
    out = a.out or str(Path(a.run) / ("samples.png" if boot else f"samples-{a.sampler}{a.steps}.png"))
    cli.check_output_file(out, "--out")
    teachers.quiet_libraries()
    gen, seeds = ExportedStudent(a.run, device), range(a.seed, a.seed + a.n)
    noise = seeded_noise(seeds, gen.sample_shape, device)
    if boot:
        cond = gen.condition(a.label, a.prompt, seeds)
        return write_samples(gen, lambda: gen.generate(noise, cond, a.w), out, "one-step samples")
    teachers.trailing_steps(gen.model.schedule.T, a.steps)
    cond = gen.label_cond([s % gen.num_classes for s in seeds]) if gen.num_classes else None
    gen.info["sampler"], gen.nfe, g = a.sampler, a.steps, torch.Generator(device).manual_seed(a.seed)
    make = lambda: gen.generate(noise, cond, gen.default_guidance, generator=g)  # noqa: E731 - ddim: the pipeline's
    write_samples(gen, make, out, f"{a.sampler}-{a.steps} samples")


@torch.no_grad()
def write_samples(gen, make, out, what: str):
    """`sample`'s end: time `make()` (synchronised on a GPU), save the grid, say so."""
    t0 = time.perf_counter()
    x = make()
    if gen.device.type == "cuda":
        torch.cuda.synchronize(gen.device)
    dt = time.perf_counter() - t0
    save_image(gen.decode(x).float().cpu(), out, nrow=int(math.sqrt(len(x))) or 1)
    print(f"{len(x)} {what} in {dt:.2f} s on {gen.device} -> {out}")
