"""BOOT: data-free distillation of a diffusion model into a one-step generator.

Gu, Wang, Zhai, Zhang, Liu, Susskind. "BOOT: Data-free Distillation of Denoising Diffusion Models
with Bootstrapping", ICML 2024, arXiv:2306.05544.

A student y_theta(eps, t, c, w) learns the Signal-ODE (Eq. 5) of a frozen teacher f_phi from pure
noise eps: no image of the training set is ever read. Each iteration draws eps, a target time t and
a condition c, runs one Signal-ODE step t -> s = max(t - delta, t_min) from the student's own
y_theta(eps, t) with the teacher (Euler = Eq. 4/7, Heun = Eq. 15) and regresses y_theta(eps, s) on
that stop-gradient target; every k-th iteration adds the boundary loss (Eq. 8) at t_max. After
training, y_theta(eps, 0, c, w) is a sample in one network evaluation.

    python boot.py                         # CPU (time: README.md): distils the embedded digits teacher
                                           #   -> runs/boot-digits/{config.json, metrics.jsonl,
                                           #      checkpoints/, student/, preview.png}
    python boot.py --teacher gmm           # CPU, analytic teacher: prints the distance
                                           #   of the 1-step student to the teacher's ODE output
    python boot.py --dry-run               # print the resolved config, write nothing
    python boot.py sample runs/boot-digits --label 3 --n 16      # one-step samples -> PNG
    python evaluate.py --run runs/boot-digits --json eval.json   # FID vs teacher DDIM-1/10/50

    # 1 GPU, Stable Diffusion 2.1-base (latent; prompts: one per line), half-precision teacher
    python boot.py --teacher sd21 --prompts prompts.txt --half
    python boot.py sample runs/boot-sd21 --prompt "a raccoon astronaut, oil painting" --w 7.5
    # 8 GPUs (global batch 64 = 8 x 8), same numbers as one process with the same --batch
    torchrun --standalone --nproc_per_node=8 boot.py --teacher sd21 --prompts prompts.txt --half
    # DeepFloyd IF: stage I, then stage II on the stage-I student's outputs (gated: accept licence)
    torchrun --standalone --nproc_per_node=8 boot.py --teacher if --prompts prompts.txt --half
    torchrun --standalone --nproc_per_node=8 boot.py --teacher if --stage 2 \\
        --stage1-run runs/boot-if --prompts prompts.txt --half

Rerunning a command resumes its run directory from checkpoints/latest.pt (--iters may grow: a
finished run continues). Bad input stops with one line on stderr (exit code 2) before anything
is written.

The default digits run is 3,000 iterations at batch 128, each two teacher passes (Heun), a no-grad
and a training student pass; its time is measured by bench/run.py and shown in README.md (first
screen), as is every time and size figure. Ctrl-C or SIGTERM stops after the current iteration
with a checkpoint (exit code 130 / 143); the rerun resumes exactly.
`python evaluate.py --run runs/boot-digits` (n = 1,000 samples vs 797 held-out real
digits, Frechet distance in the shipped digits-classifier features; real-vs-real floor 15.6):

    teacher DDIM-1 173.2 | DDIM-10 16.8 | DDIM-50 15.9 || BOOT 1 step: 17.4 after 3,000 iterations
    (default), 15.6 after 6,250, 15.2 after 9,000 (`python boot.py --iters 9000`, which resumes the
    default run). Pixel-space FD 0.43 / 0.39 / 0.39 vs DDIM-10's 0.51.
`python boot.py --teacher gmm` (300 iterations): mean squared distance to the
teacher's DDIM-50 output from the same noise 0.0024 (n = 256), teacher DDIM-1 0.057, DDIM-10 0.0023.

Conventions (the paper leaves them open; each is tested in tests/test_boot_equations.py):
  * CFG is Eq. 9 on x0-hat, f_n + w (f_c - f_n); w = 1 is the plain conditional teacher.
  * delta lambda' = 1 - alpha_t sigma_s / (sigma_t alpha_s) = 1 - e^(lambda_s - lambda_t) exactly,
    so the Euler target is one DDIM step in signal space (Eq. 4 = Eq. 11).
  * Heun (Eq. 15) averages the two denoised predictions, y_t + dl ((f_t + f_s) / 2 - y_t). Eq. 15
    as printed uses (f_s - y~_s) as its second slope; with the exact dl that form is only first
    order (its local error is dl^2 / 2 (f_t - y_t)); the averaged form is second order.
  * Loss weights (Eq. 13/14): uniform = 1 / delta^2, lambda = 1 / (delta lambda')^2 with Alg. 1's
    discrete delta lambda' above, not the analytic d lambda/dt (on the cosine schedule at delta 0.04
    that weight would be 0.94x / 0.85x / 0.54x the discrete one at t = 0.3 / 0.6 / 0.89).
  * The student's native timestep is t_max; the target time t and w enter through a zero-
    initialised projection of their sinusoidal embeddings, and the student predicts eps at
    t_max: y = (eps - sigma_tmax eps_hat) / alpha_tmax, so at init y_theta(eps, t) = f_phi(eps, t_max).
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import sys
import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import cli
from cli import UserError


def opt(default, help_):
    return field(default=default, metadata={"help": help_})


# ---------------------------------------------------------------------------------------------
# Config: one dataclass, flags derived from it; None means "the teacher's preset" (Table 3)
# ---------------------------------------------------------------------------------------------
@dataclass
class BootConfig:
    # the teacher f_phi
    teacher: str = opt("digits", "registry name (digits, gmm, ddpm-cifar10, sd21, if), hub id or local diffusers dir")
    model_id: str | None = opt(None, "hub id or local copy replacing the registry's default for --teacher")
    preset: str | None = opt(None, "row of PRESETS (Table 3) to fill the preset fields from; default: the "
                                   "teacher's registry entry, found from what the teacher is (a local copy too)")
    stage: int = opt(1, "IF cascade stage; 2 distils IF-II on the outputs of a stage-1 student")
    stage1_run: str | None = opt(None, "finished stage-1 run directory (with --stage 2)")
    prompts: str | None = opt(None, "text file with one prompt per line (text-to-image teachers)")
    half: bool = opt(False, "run the frozen teacher in float16 (GPU only; the same in dkdm.py)")
    precision: str = opt("auto", "student: auto (bf16 autocast + TF32 matmuls on a GPU, float32 on CPU), bf16, fp32")
    grad_checkpointing: bool = opt(False, "recompute the student's activations in backward (less memory, more time)")
    clip: str = opt("auto", "targets' thresholding: auto (the teacher's own), none, static, dynamic")
    # the student y_theta(eps, t, c, w)
    student: str = opt("auto", "copy (teacher copy + zero-init t/w embedding), small (a smaller random "
                               "UNet), auto (copy where the teacher has a network)")
    t_max: float | None = opt(None, "upper end of the trained time range; the copy student's fixed native "
                                    "timestep (preset: where 1/alpha_t = 6.4, the error amplification 0.9 has on digits)")
    t_min: float = opt(0.0, "lower end of the trained time range (the sample is y_theta(eps, t_min))")
    time_cond_dim: int = opt(128, "size of the sinusoidal embedding of (t, w) fed to the student")
    # the objective (Alg. 1)
    solver: str = opt("heun", "Signal-ODE step for the targets: euler (Eq. 7) or heun (Eq. 15)")
    delta: float | None = opt(None, "bootstrapping step size delta (preset: 0.04; 0.01 for sd21)")
    weighting: str | None = opt(None, "loss weight: uniform (1/delta^2) or lambda (1/(delta lambda')^2)")
    boundary_every: int | None = opt(None, "boundary loss (Eq. 8) every k iterations; 0 = never")
    beta: float = opt(1.0, "weight of the boundary loss")
    time_sampling: str = opt("uniform", "t ~ U(t_min, t_max), or progressive (a window sliding down; ablation)")
    w: float | None = opt(None, "CFG weight (Eq. 9); default: the teacher's")
    w_max: float | None = opt(None, "draw w ~ U(w, w_max) per example; the student is conditioned on it")
    noise_level: int = opt(250, "IF stage 2: noise augmentation level of the upsampled stage-1 output")
    # optimisation
    iters: int | None = opt(None, "training iterations (preset)")
    batch: int | None = opt(None, "global batch size, divisible by the number of processes (preset)")
    lr: float | None = opt(None, "AdamW learning rate, no decay, no warm-up (preset)")
    ema: float | None = opt(None, "EMA decay of the exported student (preset)")
    seed: int = opt(0, "seed of the global noise / time / condition stream and of a fresh student")
    minutes: float | None = opt(None, "stop (checkpoint + export) after this many minutes; rerun to go on")
    # output
    out: str | None = opt(None, "run directory (default runs/boot-<teacher>[-stage2])")
    log_every: int = opt(50, "iterations between metrics.jsonl records")
    ckpt_every: int = opt(250, "iterations between checkpoints")
    keep: int = opt(1, "checkpoints kept: the last N (checkpoints/step-*.pt; latest.pt is the newest)")
    export_every: int = opt(0, "also export the EMA student + preview.png every K iterations while training (0: at the end)")
    preview: int = opt(10, "columns of preview.png: teacher DDIM-50 row vs student 1-step row")
    check: int = opt(256, "samples of the final distance check against the teacher's DDIM-50 (images "
                          "of <= 1024 values without prompts; else the preview's)")


BASE = dict(delta=0.04, weighting="uniform", boundary_every=4, iters=3000, batch=128, lr=3e-4, ema=0.995, t_max=0.9)
# t_max (the paper gives none): the student's output is (eps - sigma eps_hat) / alpha at t_max, so an error in
# eps_hat is amplified 1/alpha_tmax times. 0.9 was measured on the digits teacher (cosine: 1/alpha = 6.4; 0.98,
# 1/alpha = 32, trained noisily, README); the other presets take the t with the same 1/alpha_tmax on their own
# schedule: 0.9 on IF's cosine, 0.85 on SD's scaled-linear (6.5; 8.4 at 0.9), 0.6 on CIFAR-10's linear (6.3; 60 at 0.9).
PRESETS = {  # Table 3 where the paper gives a value; measured on this CPU for digits and gmm
    "digits": dict(),
    "gmm": dict(iters=300, batch=64, lr=1e-3, ema=0.98, boundary_every=1),
    "ddpm-cifar10": dict(lr=1e-4, ema=0.9999, iters=500_000, t_max=0.6),
    "sd21": dict(delta=0.01, weighting="lambda", lr=2e-5, batch=64, ema=0.9999, iters=500_000, t_max=0.85),
    "if": dict(weighting="lambda", lr=2e-5, batch=64, ema=0.9999, iters=500_000),
    "if-2": dict(weighting="lambda", lr=2e-5, batch=32, ema=0.9999, iters=100_000),
}
RESUMABLE = ("iters", "minutes", "log_every", "ckpt_every", "preview", "check", "precision", "grad_checkpointing",
             "keep", "export_every")  # may change on a rerun
CHOICES = dict(solver=("euler", "heun"), weighting=("uniform", "lambda"), student=("auto", "copy", "small"),
               time_sampling=("uniform", "progressive"), clip=("auto", "none", "static", "dynamic"),
               precision=cli.PRECISIONS)


def resolve(cfg: BootConfig) -> BootConfig:
    """Fill the preset fields (None) from the teacher's row of PRESETS, then BASE; local paths made absolute."""
    preset, _ = preset_for(cfg)
    row = PRESETS.get(preset, {})
    fills = {k: row.get(k, v) for k, v in BASE.items() if getattr(cfg, k) is None}
    out = cfg.out or f"runs/boot-{Path(cfg.teacher).name}" + ("-stage2" if cfg.stage == 2 else "")
    paths = {k: teachers.local_path(getattr(cfg, k)) for k in ("teacher", "model_id", "prompts", "stage1_run")}
    return dataclasses.replace(cfg, **fills, **paths, out=out, preset=preset)


def preset_for(cfg: BootConfig):
    """(row of PRESETS, why): --preset, else the registry entry the teacher is (teachers.teacher_family);
    'base' when none fits. A local copy of SD 2.1 gets the sd21 row, not the digits defaults."""
    if cfg.preset is not None:
        return cfg.preset, "--preset"
    family, why = (cfg.teacher, "registry entry") if cfg.teacher in PRESETS else teachers.teacher_family(cfg.teacher)
    if family is None and cfg.model_id:
        family, why = teachers.teacher_family(cfg.model_id)
    key = (family or "") + ("-2" if cfg.stage == 2 else "")
    if key in PRESETS:
        return key, why
    return "base", f"no preset for {why}" if family is None else f"no preset for '{family}' ({why})"


def validate(cfg: BootConfig, world: int):
    """All checks that need no teacher: one-line UserErrors before anything is loaded or written."""
    teachers.check_finite_fields(cfg)
    if cfg.preset not in (*PRESETS, "base"):
        raise UserError(f"unknown preset '{cfg.preset}' (known: {', '.join(PRESETS)}, base)")
    for name, allowed in CHOICES.items():
        if getattr(cfg, name) not in allowed:
            raise UserError(f"unknown {name.replace('_', '-')} '{getattr(cfg, name)}' (known: {', '.join(allowed)})")
    if not 0.0 <= cfg.t_min < cfg.t_max < 1.0:
        raise UserError(f"need 0 <= t_min < t_max < 1, got t_min={cfg.t_min}, t_max={cfg.t_max}")
    if not 0.0 < cfg.delta <= cfg.t_max - cfg.t_min:
        raise UserError(f"need 0 < delta <= t_max - t_min, got delta={cfg.delta}")
    if cfg.batch < 1 or cfg.batch % world:
        raise UserError(f"global batch {cfg.batch} is not a positive multiple of the {world} processes")
    if cfg.iters < 1 or (cfg.minutes is not None and cfg.minutes <= 0):
        raise UserError(f"need --iters >= 1 and --minutes > 0 (or unset), got iters={cfg.iters}, minutes={cfg.minutes}")
    if cfg.boundary_every < 0 or cfg.beta < 0 or cfg.lr <= 0 or not 0 <= cfg.ema < 1:
        raise UserError("need boundary-every >= 0, beta >= 0, lr > 0 and 0 <= ema < 1")
    if cfg.log_every < 1 or cfg.ckpt_every < 1 or cfg.preview < 0 or cfg.check < 0 or cfg.time_cond_dim < 2:
        raise UserError("need log-every >= 1, ckpt-every >= 1, preview >= 0, check >= 0, time-cond-dim >= 2")
    if cfg.keep < 1 or cfg.export_every < 0:
        raise UserError("need keep >= 1 and export-every >= 0")
    if cfg.w_max is not None and (cfg.w is None or cfg.w_max < cfg.w):
        raise UserError("--w-max needs --w with w <= w-max (w ~ U(w, w_max) per example)")
    if cfg.stage not in (1, 2):
        raise UserError(f"--stage must be 1 or 2, got {cfg.stage}")
    if cfg.stage == 2 and not cfg.stage1_run:
        raise UserError("--stage 2 needs --stage1-run DIR, a finished stage-1 run of the same cascade")
    if cfg.stage == 2 and not (Path(cfg.stage1_run) / "student" / "generator.json").is_file():
        raise UserError(f"--stage1-run '{cfg.stage1_run}' is not a finished stage-1 run (no student/generator.json)")
    if cfg.stage == 2:
        teachers.read_json(Path(cfg.stage1_run) / "student" / "generator.json", "stage-1 student description")
        teachers.check_model_dir(Path(cfg.stage1_run) / "student" / "unet", "stage-1 student")
    if not 0 <= cfg.noise_level < 1000:
        raise UserError(f"--noise-level must lie in 0..999, got {cfg.noise_level}")
    if cfg.half and not torch.cuda.is_available():
        raise UserError("--half needs a GPU (float16 teachers are slow and inexact on CPU)")
    if cfg.prompts is not None:
        teachers.load_prompts(cfg.prompts)
    teachers.check_teacher_files(cfg.teacher, cfg.model_id, cfg.stage)
    teachers.check_output_dir(cfg.out, "--out")


# CFG weights the registry teachers bring (Table 3: 7.5 SD, 7.0 IF-I, 4.0 IF-II; 1 = the plain
# conditional teacher), shown by --dry-run; other teachers tell theirs when loaded
REGISTRY_W = {"digits": 1.0, "gmm": 1.0, "sd21": 7.5, "if": 7.0, "if-2": 4.0}


def configure(argv):
    """(config, dry_run) from the command line, resolved and checked; --dry-run prints the config
    with every default filled in. `--help` is answered here before torch is imported."""
    p = cli.add_usage(cli.parser_from_dataclass(BootConfig, __doc__),
                      "boot.py sample RUN [--label K | --prompt TEXT] [--w W] [--n N] [--seed S] [--out PNG]")
    args = vars(p.parse_args(argv))
    dry_run = args.pop("dry_run")
    cfg = resolve(BootConfig(**args))
    world = int(os.environ.get("WORLD_SIZE", 1))
    if dry_run:
        validate(cfg, world)
        shown = dataclasses.asdict(cfg)
        if cfg.w is None:
            shown["w"] = REGISTRY_W.get(cfg.teacher + ("-2" if cfg.stage == 2 else ""), "the teacher's default")
        try:
            shown["memory_estimate"] = memory_report(cfg, world)
        except UserError as e:  # e.g. a hub teacher whose configs are not on this machine
            shown["memory_estimate"] = f"unavailable: {e}"
        print(json.dumps(shown, indent=2))
    else:
        print0(f"preset '{cfg.preset}' for teacher '{cfg.teacher}' ({preset_for(BootConfig(**args))[1]})")
    return cfg, dry_run


if __name__ == "__main__" and sys.argv[1:2] != ["sample"] and cli.answers_alone(sys.argv[1:]):
    configure(sys.argv[1:])  # --help: printed before torch is imported

import torch  # noqa: E402  (below the config: --help answers without it)

import teachers  # noqa: E402
from teachers import bcast, print0  # noqa: E402


# ---------------------------------------------------------------------------------------------
# --- BOOT Eq. (4)/(11): one DDIM step written in signal space, y_t = (x_t - sigma_t eps) / alpha_t
# ---------------------------------------------------------------------------------------------
def delta_lambda(schedule, t, s):
    """delta lambda' = 1 - alpha_t sigma_s / (sigma_t alpha_s) = 1 - e^(lambda_s - lambda_t) (Alg. 1, exact)."""
    return 1 - schedule.alpha(t) * schedule.sigma(s) / (schedule.sigma(t) * schedule.alpha(s))


def noisy(schedule, y, eps, t):
    """x_t = alpha_t y_t + sigma_t eps (Alg. 1 line 8): the noisy image a signal y_t stands for."""
    return bcast(schedule.alpha(t), y) * y + bcast(schedule.sigma(t), y) * eps


def signal_step(y_t, f_t, dl):
    """Eq. (4): y_s = (1 - e^(lambda_s - lambda_t)) f_phi(x_t, t) + e^(lambda_s - lambda_t) y_t."""
    return y_t + bcast(dl, y_t) * (f_t - y_t)


def step_back(t, delta: float, t_min: float):
    """s = max(t - delta, t_min). Alg. 1 line 4 prints min(); the step must not go below t_min."""
    return (t - delta).clamp(min=t_min)


# ---------------------------------------------------------------------------------------------
# --- BOOT Eq. (7)/(13)/(15): the stop-gradient bootstrapping target y^_theta(eps, s)
# ---------------------------------------------------------------------------------------------
@torch.no_grad()
def bootstrap_target(f, schedule, y_t, eps, t, s, solver: str = "heun"):
    """SG[y^_s] from the student's y_t: one Euler (Eq. 7) or Heun (Eq. 15) step of the Signal-ODE.

    f(x, t) is the guided teacher f~_phi (Eq. 9). Heun's corrector evaluates the teacher at the
    Euler point x~_s and steps with the mean of both denoised signals.
    """
    dl = delta_lambda(schedule, t, s)
    f_t = f(noisy(schedule, y_t, eps, t), t)
    y_euler = signal_step(y_t, f_t, dl)
    if solver == "euler":
        return y_euler
    f_s = f(noisy(schedule, y_euler, eps, s), s)
    return signal_step(y_t, (f_t + f_s) / 2, dl)


def loss_weight(schedule, t, delta: float, weighting: str, s=None):
    """Eq. (13)/(14): w~_t / delta^2 with w~_t = 1 (uniform) or 1 / lambda'_t^2 (text-to-image).

    Alg. 1 line 10 writes the lambda weight with the discrete step, 1 / (delta lambda')^2 where
    delta lambda' = 1 - alpha_t sigma_s / (sigma_t alpha_s) is the same quantity the target uses
    (`delta_lambda`), s = max(t - delta, t_min); it tends to (delta d lambda/dt)^2 as delta -> 0.
    """
    if weighting == "uniform":
        return torch.full_like(torch.as_tensor(t, dtype=torch.float64), 1.0 / delta**2)
    s = step_back(t, delta, 0.0) if s is None else s
    return 1.0 / delta_lambda(schedule, t, s) ** 2


def bootstrap_loss(y_s, target, weight):
    """Eq. (14): E w~_t / delta^2 ||y_theta(eps, s) - SG(y^_theta(eps, s))||^2 (mean over dimensions)."""
    per_example = (y_s - target).pow(2).flatten(1).mean(1)
    return (weight.to(per_example) * per_example).mean()


# ---------------------------------------------------------------------------------------------
# --- BOOT Eq. (8): boundary loss at t_max, where the teacher sees pure noise
# ---------------------------------------------------------------------------------------------
def boundary_loss(y_tmax, f_tmax):
    """Eq. (8): E ||f_phi(eps, t_max) - y_theta(eps, t_max)||^2 (mean over dimensions)."""
    return (f_tmax - y_tmax).pow(2).mean()


# ---------------------------------------------------------------------------------------------
# --- BOOT Sec. 3.3 / Eq. (9): the guided, thresholded teacher the targets are built from
# ---------------------------------------------------------------------------------------------
def guided_teacher(teacher, cond, w, clock=None):
    """f~(x, t) = f_n + w (f_c - f_n) (Eq. 9), clipped as the teacher's convention says, in float32."""
    dtype = teacher.unet.dtype if hasattr(teacher, "unet") else torch.float32
    tcond = None if cond is None else {k: v.to(dtype) if v.is_floating_point() else v for k, v in cond.items()}

    def f(x, t):
        with clock("teacher") if clock else nullcontext():
            return teacher.x0(x.to(dtype), t.to(x.device, torch.float32), tcond, w).float()

    return f



# ---------------------------------------------------------------------------------------------
# Students: the teacher's network + zero-initialised (t, w) embedding, or a smaller fresh UNet
# ---------------------------------------------------------------------------------------------
def make_student(teacher, cfg: BootConfig, default_w):
    """(student network, generator.json info). teachers.boot_generate is the forward y_theta."""
    kind = cfg.student if cfg.student != "auto" else ("copy" if hasattr(teacher, "unet") else "small")
    sch = teacher.schedule
    t_max = torch.tensor(cfg.t_max, dtype=torch.float64)
    info = dict(method="boot", teacher=cfg.teacher, model_id=cfg.model_id, stage=cfg.stage, T=sch.T,
                t_max=cfg.t_max, alpha_tmax=float(sch.alpha(t_max)), sigma_tmax=float(sch.sigma(t_max)),
                time_cond_dim=cfg.time_cond_dim, guided=teacher.guided, default_w=default_w,
                num_classes=teacher.num_classes, sample_shape=list(teacher.sample_shape), latent=teacher.latent,
                text=hasattr(teacher, "encode_prompts"), student=kind, seed=cfg.seed)
    if cfg.stage == 2:
        info.update(stage1_run=str(Path(cfg.stage1_run).resolve()), noise_level=cfg.noise_level)
    build = copy_student if kind == "copy" else small_student
    model = build(teacher, cfg.time_cond_dim, info)
    info["class_name"] = type(model).__name__
    return model, info


def copy_student(teacher, dim: int, info: dict):
    """REFERENCE §4: from_config(teacher, time_cond_proj_dim=D), teacher weights, cond_proj zeroed."""
    from diffusers import UNet2DConditionModel

    if not hasattr(teacher, "unet"):
        raise UserError(f"teacher '{teacher.name}' has no network to copy; use --student small")
    if teacher.prediction_type != "epsilon":
        raise UserError(f"--student copy needs an eps-prediction teacher ('{teacher.name}' predicts "
                        f"{teacher.prediction_type}); use --student small")
    state = {k: v.float() for k, v in teacher.unet.state_dict().items()}
    if type(teacher.unet).__name__ == "UNet2DConditionModel":
        model = UNet2DConditionModel.from_config(teacher.unet.config, time_cond_proj_dim=dim)
        missing, unexpected = model.load_state_dict(state, strict=False)
        assert set(missing) == {"time_embedding.cond_proj.weight"} and not unexpected, (missing, unexpected)
        torch.nn.init.zeros_(model.time_embedding.cond_proj.weight)
    elif type(teacher.unet).__name__ == "UNet2DModel" and teacher.unet.config.class_embed_type is None \
            and not teacher.unet.config.num_class_embeds:
        # an unconditional UNet2DModel: t enters through a new, zeroed timestep-type class embedding
        from diffusers import UNet2DModel

        model = UNet2DModel.from_config(teacher.unet.config, class_embed_type="timestep")
        model.load_state_dict(state, strict=False)
        torch.nn.init.zeros_(model.class_embedding.linear_2.weight)
        torch.nn.init.zeros_(model.class_embedding.linear_2.bias)
        info.update(time_cond_dim=None, time_input="class_labels")
    else:
        raise UserError(f"cannot add a target-time input to a {type(teacher.unet).__name__} with a class "
                        f"embedding; use --student small")
    info["output"] = "eps"
    return model.float()


def small_student(teacher, dim: int, info: dict):
    """A fresh, smaller UNet2DConditionModel whose native timestep is the target time t."""
    from diffusers import UNet2DConditionModel

    C, H = teacher.sample_shape[0], teacher.sample_shape[-1]
    if hasattr(teacher, "unet"):
        base = dict(teacher.unet.config)
        chans = [max(8, c // 2) for c in base["block_out_channels"]]
        groups = math.gcd(*chans, base.get("norm_num_groups") or 32)
        cfg = {**base, "block_out_channels": chans, "layers_per_block": 1, "norm_num_groups": groups}
        if type(teacher.unet).__name__ != "UNet2DConditionModel":  # a UNet2DModel's config, no text
            cfg = {k: v for k, v in cfg.items() if k in ("sample_size", "in_channels", "out_channels",
                   "block_out_channels", "layers_per_block", "norm_num_groups", "down_block_types", "up_block_types")}
            cfg["mid_block_type"] = "UNetMidBlock2D"
    else:  # the analytic gmm: the embedded digits architecture, one output channel per input channel
        cfg = teachers.digits_unet_config(num_classes=teacher.num_classes or 0, channels=(32, 64))
        cfg.update(in_channels=C, out_channels=C, sample_size=H)
        if not teacher.num_classes:
            cfg.pop("num_class_embeds")
    cfg = {k: v for k, v in cfg.items() if not k.startswith("_")}
    torch.manual_seed(info["seed"])
    model = UNet2DConditionModel.from_config({**cfg, "time_cond_proj_dim": dim})
    info.update(output="sample", native_time="target")
    return model


# ---------------------------------------------------------------------------------------------
# Conditions: labels, prompts, IF stage-2 low-resolution inputs (all drawn from the global stream)
# ---------------------------------------------------------------------------------------------
def as_student_cond(cond, device):
    """The condition dict in float32 on the student's device (the teacher may run in float16)."""
    if cond is None:
        return None
    return {k: (v.float() if v.is_floating_point() else v).to(device) for k, v in cond.items()}


class Conditions:
    """Draws the condition c (and w) of a global batch; each rank keeps its slice [lo:hi]."""

    def __init__(self, teacher, cfg: BootConfig, device, prompts=None, encoder=None, stage1=None):
        self.teacher, self.cfg, self.device = teacher, cfg, device
        self.prompts, self.encoder, self.stage1 = prompts, encoder or teacher, stage1
        self.w = cfg.w if cfg.w is not None else teacher.default_guidance
        if not teacher.guided:
            self.w = None

    def draw(self, g, B, lo, hi):
        """(cond for the student (float32), w as a float or a [b] tensor) for examples lo..hi of B."""
        cfg, cond = self.cfg, None
        if self.prompts is not None:
            idx = torch.randint(0, len(self.prompts), (B,), generator=g)[lo:hi]
            cond = self.encoder.encode_prompts([self.prompts[i] for i in idx.tolist()])
        elif self.teacher.num_classes:
            cond = self.teacher.label_cond(torch.randint(0, self.teacher.num_classes, (B,), generator=g)[lo:hi])
        w = self.w
        if cfg.w_max is not None and self.w is not None:
            w = (cfg.w + (cfg.w_max - cfg.w) * torch.rand(B, generator=g, dtype=torch.float64))[lo:hi].to(self.device)
        if self.stage1 is not None:
            cond = {**cond, **self.lowres(g, B, lo, hi, cond)}
        return as_student_cond(cond, self.device), w

    def lowres(self, g, B, lo, hi, cond):
        """IF-II input: the stage-1 student's one-step output, upsampled and noised (Sec. 3.3, App. C.4)."""
        gen = self.stage1
        eps1 = torch.randn((B, *gen.sample_shape), generator=g)[lo:hi].to(self.device)
        z = torch.randn((B, gen.sample_shape[0], *self.teacher.sample_shape[1:]), generator=g)[lo:hi]
        cond1 = {"encoder_hidden_states": cond["encoder_hidden_states"].float()}
        x1 = gen.generate(eps1, cond1, gen.default_guidance).clamp(-1, 1)
        return self.teacher.lowres_cond(x1, self.cfg.noise_level, noise=z.to(self.device))


# ---------------------------------------------------------------------------------------------
# One BOOT iteration (Alg. 1)
# ---------------------------------------------------------------------------------------------
def sample_times(g, cfg: BootConfig, B: int, step: int):
    """t ~ U(t_min, t_max) (Sec. 3.2), or the progressive ablation: a window of width 2 delta
    sliding from t_max down to t_min over the run (Sec. 4.3, Fig. 6c)."""
    u = torch.rand(B, generator=g, dtype=torch.float64)
    if cfg.time_sampling == "uniform":
        return cfg.t_min + (cfg.t_max - cfg.t_min) * u
    centre = cfg.t_max - (cfg.t_max - cfg.t_min) * step / max(cfg.iters - 1, 1)
    lo, hi = max(centre - cfg.delta, cfg.t_min), min(centre + cfg.delta, cfg.t_max)
    return lo + (hi - lo) * u


def boot_step(model, raw, info, teacher, eps, t, cond, w, cfg: BootConfig, boundary: bool, clock):
    """L_BS (+ beta L_BC on boundary iterations) for one local batch; returns (loss, parts)."""
    sch, dev = teacher.schedule, eps.device
    y_theta = teachers.boot_generate
    s = step_back(t, cfg.delta, cfg.t_min)
    f = guided_teacher(teacher, cond, w, clock)
    amp = lambda: teachers.student_autocast(cfg.precision, dev)  # noqa: E731 - bf16 on a GPU by default
    with clock("student"), torch.no_grad(), amp():
        y_t = y_theta(raw, info, eps, t.to(dev, torch.float32), cond, w).float()  # Alg. 1 line 7, under SG
    target = bootstrap_target(f, sch, y_t, eps, t, s, cfg.solver)
    weight = loss_weight(sch, t, cfg.delta, cfg.weighting, s)
    tt, ee, cc, ww = s, eps, cond, w
    if boundary:  # one student forward for y_theta(eps, s) and y_theta(eps, t_max)
        tt = torch.cat([s, torch.full_like(s, cfg.t_max)])
        ee, cc = torch.cat([eps, eps]), teachers.cat_cond(cond, cond)
        ww = torch.cat([w, w]) if torch.is_tensor(w) else w
    with clock("student"), amp():
        y = y_theta(model, info, ee, tt.to(dev, torch.float32), cc, ww).float()
    loss_bs = bootstrap_loss(y[: len(eps)], target, weight)
    loss_bc = torch.zeros((), device=dev)
    if boundary:
        f_tmax = f(eps, torch.full_like(t, cfg.t_max))  # Eq. 8: the teacher sees x = eps at t_max
        loss_bc = boundary_loss(y[len(eps):], f_tmax)
    return loss_bs + cfg.beta * loss_bc, {"bs": loss_bs.detach(), "bc": loss_bc.detach()}


class Clock:
    """Wall time per part (teacher / student), synchronised on GPU."""

    def __init__(self, device):
        self.cuda = device.type == "cuda"
        self.ms = {"teacher": 0.0, "student": 0.0}

    @contextmanager
    def __call__(self, key):
        if self.cuda:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        yield
        if self.cuda:
            torch.cuda.synchronize()
        self.ms[key] += 1000 * (time.perf_counter() - t0)

    def take(self):
        out, self.ms = self.ms, {k: 0.0 for k in self.ms}
        return out


# ---------------------------------------------------------------------------------------------
# Setup: teachers, prompts, stage-1 generator, run directory (all checks before anything is written)
# ---------------------------------------------------------------------------------------------
def quiet_libraries():
    """Keep stderr for our own one-line errors: no weight-loading bars or config notices."""
    import diffusers
    import transformers

    diffusers.utils.logging.set_verbosity_error()
    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()


def load_all(cfg: BootConfig, device):
    """(teacher, Conditions): loads and checks every input, writes nothing."""
    quiet_libraries()
    dtype = torch.float16 if cfg.half else torch.float32
    teacher = teachers.load_teacher(cfg.teacher, device, dtype, model_id=cfg.model_id, stage=cfg.stage, clip=cfg.clip)
    is_text = hasattr(teacher, "encode_prompts")
    if getattr(teacher, "stage", 1) == 2 and cfg.stage != 2:
        raise UserError(f"'{cfg.teacher}' is an IF stage-II pipeline: pass --stage 2 --stage1-run DIR")
    if cfg.stage == 2 and getattr(teacher, "stage", 1) != 2:
        raise UserError(f"--stage 2 needs an IF stage-II teacher; '{cfg.teacher}' is not one")
    if cfg.w is not None and not teacher.guided:
        raise UserError(f"teacher '{cfg.teacher}' is unconditional: --w (CFG) does not apply")
    prompts = encoder = stage1 = None
    if is_text or cfg.stage == 2:
        if cfg.prompts is None:
            raise UserError(f"text-to-image teacher '{cfg.teacher}' needs --prompts FILE (one prompt per line)")
        prompts = teachers.load_prompts(cfg.prompts)
    elif cfg.prompts is not None:
        raise UserError(f"teacher '{cfg.teacher}' is not text-conditioned: --prompts does not apply")
    if cfg.stage == 2:
        stage1 = teachers.load_generator(cfg.stage1_run, device)
        if stage1.info.get("stage", 1) != 1 or stage1.sample_shape[0] != teacher.sample_shape[0]:
            raise UserError(f"'{cfg.stage1_run}' is not a stage-1 run with {teacher.sample_shape[0]}-channel outputs")
        encoder = teacher
        if not hasattr(teacher, "tokenizer"):  # IF-II may ship without T5: stage I's encodes the prompts
            info = stage1.info
            encoder = teachers.load_teacher(info["teacher"], device, dtype, model_id=info.get("model_id"))
    return teacher, Conditions(teacher, cfg, device, prompts, encoder, stage1)


def default_weight(cfg: BootConfig, teacher):
    """The w a user gets when sampling without --w (None for unguided teachers)."""
    if not teacher.guided:
        return None
    if cfg.w_max is not None:
        d = teacher.default_guidance
        return d if d is not None and cfg.w <= d <= cfg.w_max else cfg.w
    return cfg.w if cfg.w is not None else teacher.default_guidance


# ---------------------------------------------------------------------------------------------
# Training loop: one code path for one CPU/GPU process and torchrun DDP
# ---------------------------------------------------------------------------------------------
def train(cfg: BootConfig):
    validate(cfg, int(os.environ.get("WORLD_SIZE", 1)))
    teachers.check_hub(cfg.teacher, cfg.model_id, cfg.stage)  # before any process group or download
    rank, world, device = teachers.dist_env()
    # every input check (teacher, student, run directory) on every process before a process group
    teacher, conds = load_all(cfg, device)
    run = teachers.RunDir(cfg.out, dataclasses.asdict(cfg), rank, resumable=RESUMABLE, keep=cfg.keep)
    student, info = make_student(teacher, cfg, default_weight(cfg, teacher))
    rank, world, device = teachers.dist_setup()
    try:
        run.start()
        return _train(cfg, rank, world, device, teacher, conds, run, student, info)
    finally:
        run.close()
        teachers.dist_teardown()


def _train(cfg: BootConfig, rank, world, device, teacher, conds, run, student, info):
    raw = student.to(device).train()
    teachers.enable_checkpointing(raw, cfg.grad_checkpointing)
    teachers.setup_precision(cfg.precision, device)
    ema = teachers.EMA(raw, cfg.ema)
    opt = torch.optim.AdamW(raw.parameters(), lr=cfg.lr, weight_decay=0.0)
    g = torch.Generator().manual_seed(cfg.seed)  # the global stream: same on every rank
    step, elapsed, window = 0, 0.0, None
    state = run.load()
    run.truncate_metrics(None if state is None else state["step"])
    if state is not None:
        raw.load_state_dict(state["model"])
        ema.load_state_dict(state["ema"])
        opt.load_state_dict(state["opt"])
        g.set_state(state["gen"].cpu())  # a CPU generator's state, whatever the map_location
        step, elapsed, window = state["step"], state["elapsed"], state.get("window")
        print0(f"resuming {cfg.out} at step {step}")
    model = raw
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel as DDP

        model = DDP(raw, device_ids=[device.index] if device.type == "cuda" else None)
    with teachers.Interrupt() as stop:
        step = loop(cfg, model, raw, info, ema, opt, g, teacher, conds, run, step, elapsed, rank, world, device,
                    window, stop)
    if stop.halted:  # checkpoint written at the end of the interrupted iteration
        stop.report(step, run.ckpt)
        raise SystemExit(stop.exit_code)
    if rank == 0:
        finish(cfg, raw, ema, info, teacher, conds, device)
    return step


def checkpoint(run, raw, ema, opt, g, step, elapsed, window=None):
    """window = (loss sums, iterations) of the metrics window still open: a resumed run's next record
    averages the same iterations as an uninterrupted run's."""
    run.save({"model": raw.state_dict(), "ema": ema.state_dict(), "opt": opt.state_dict(),
              "gen": g.get_state(), "step": step, "elapsed": elapsed, "window": window})


def loop(cfg, model, raw, info, ema, opt, g, teacher, conds, run, step, elapsed, rank, world, device, window=None,
         stop=None):
    """Alg. 1 until cfg.iters (or cfg.minutes); checkpoints, metrics.jsonl, progress bar."""
    from tqdm import tqdm

    B, b = cfg.batch, cfg.batch // world
    lo, hi = rank * b, (rank + 1) * b
    clock, t_run = Clock(device), time.time()
    bar = tqdm(total=cfg.iters, initial=step, disable=rank != 0, desc=f"boot {cfg.teacher}", dynamic_ncols=True)
    since, t_log, sums = 0, time.perf_counter(), torch.zeros(4, dtype=torch.float64)
    if window is not None:  # the open metrics window of the checkpoint
        sums, since = window["sums"].clone(), int(window["since"])
    while step < cfg.iters:
        eps = torch.randn((B, *teacher.sample_shape), generator=g)[lo:hi].to(device)  # Alg. 1 line 2
        t = sample_times(g, cfg, B, step)[lo:hi].to(device)  # line 4
        cond, w = conds.draw(g, B, lo, hi)  # line 3
        boundary = cfg.boundary_every > 0 and step % cfg.boundary_every == 0
        loss, parts = boot_step(model, raw, info, teacher, eps, t, cond, w, cfg, boundary, clock)
        with clock("student"):
            opt.zero_grad(set_to_none=True)
            loss.backward()  # DDP averages the gradients over ranks: the global-batch mean
            run.check_update(loss, raw.parameters(), step + 1)  # loss and gradient norm, before the step
            opt.step()
            ema.update(raw)
        step, since = step + 1, since + 1
        sums += torch.stack([loss.detach().double().cpu(), parts["bs"].double().cpu(),
                             parts["bc"].double().cpu(), torch.tensor(float(boundary), dtype=torch.float64)])
        bar.update(1)
        flags = stop_flags(cfg, elapsed + time.time() - t_run, stop)
        minutes_up, halt = flags["minutes"], flags["halt"]  # halt: SIGINT / SIGTERM, checkpoint now
        if step % cfg.log_every == 0 or step == cfg.iters or minutes_up:
            now = time.perf_counter()
            rec = log_record(sums, clock.take(), 1000 * (now - t_log), since, step, device)
            rec["elapsed_s"] = round(elapsed + time.time() - t_run, 1)
            run.log(rec)
            bar.set_postfix(loss=f"{rec['loss']:.4f}", bc=f"{rec['bc']:.4f}",
                            ms=f"T{rec['ms_teacher']:.0f}/S{rec['ms_student']:.0f}/O{rec['ms_other']:.0f}")
            since, t_log, sums = 0, now, torch.zeros_like(sums)
        elif rank == 0:  # losses and the time split from the first iteration: this process's window so far
            bar.set_postfix(bar_stats(sums, clock.ms, 1000 * (time.perf_counter() - t_log), since), refresh=False)
        if step % cfg.ckpt_every == 0 or step == cfg.iters or minutes_up or halt:
            checkpoint(run, raw, ema, opt, g, step, elapsed + time.time() - t_run, {"sums": sums.clone(), "since": since})
        if halt:  # the open metrics window travels in the checkpoint: the rerun logs what a straight run would
            if stop is not None:
                stop.halted = True
            break
        if cfg.export_every and step % cfg.export_every == 0 and step < cfg.iters and not minutes_up and rank == 0:
            finish(cfg, raw, ema, info, teacher, conds, device)  # student/ + preview.png to look at mid-run
        if minutes_up:
            print0(f"\n--minutes {cfg.minutes} reached at step {step}; rerun the command to continue")
            break
    bar.close()
    return step


def stop_flags(cfg, elapsed_s, stop=None):
    """Reasons to stop after this iteration (the --minutes budget; a SIGINT / SIGTERM, which torchrun
    forwards to every process but not at the same step), decided once on rank 0 and broadcast: every
    process leaves the loop at the same step (a per-process decision would leave collectives unmatched)."""
    return teachers.rank0_decides(minutes=cfg.minutes is not None and elapsed_s > 60 * cfg.minutes,
                                  halt=stop is not None and stop.requested)


def bar_stats(sums, ms, total_ms, n):
    """The progress bar's postfix between log records: window means of this process alone (no
    collective, so rank 0 may show it every iteration)."""
    n = max(n, 1)
    t, s = ms["teacher"] / n, ms["student"] / n
    return {"loss": f"{sums[0].item() / n:.4f}", "bc": f"{sums[2].item() / max(sums[3].item(), 1):.4f}",
            "ms": f"T{t:.0f}/S{s:.0f}/O{max(total_ms / n - t - s, 0.0):.0f}"}


def log_record(sums, ms, total_ms, n, step, device):
    """Losses averaged over the window and the ranks (bc over boundary iterations); per-iteration
    milliseconds split teacher / student / other."""
    vals = torch.tensor(teachers.mean_over_ranks(sums.tolist(), device))
    n = max(n, 1)
    per = {k: v / n for k, v in ms.items()}
    return {"step": step, "loss": vals[0].item() / n, "bs": vals[1].item() / n,
            "bc": vals[2].item() / max(vals[3].item(), 1),
            "ms_teacher": round(per["teacher"], 1), "ms_student": round(per["student"], 1),
            "ms_other": round(max(total_ms / n - per["teacher"] - per["student"], 0.0), 1)}


# ---------------------------------------------------------------------------------------------
# Output: the EMA student in diffusers format + generator.json, a preview grid, a distance check
# ---------------------------------------------------------------------------------------------
def finish(cfg, raw, ema, info, teacher, conds, device):
    import copy

    student = copy.deepcopy(raw)
    ema.copy_to(student)
    student.eval().requires_grad_(False)
    d, tmp = Path(cfg.out) / "student", Path(cfg.out) / f".student.tmp-{os.getpid()}"
    teachers.export_pipeline(student_pipeline(student, info, teacher, conds), tmp)  # written aside,
    teachers.write_text_atomic(tmp / "generator.json", json.dumps(info, indent=2))
    teachers.replace_dir(tmp, d)  # then swapped in whole
    if cfg.preview or cfg.check:
        preview(cfg, student, info, teacher, conds, device)
    else:
        print0(f"wrote {d} (--preview 0 --check 0: no preview.png, no distance check)")
    print0("load it with plain diffusers:\n" + teachers.pipeline_snippet(d, *snippet_call(info, conds)))


def snippet_call(info, conds):
    """(arguments of a one-step call, a note) for the snippet printed after training."""
    if conds.prompts is not None:
        call = f"prompt={json.dumps(conds.prompts[0])}"
        if conds.stage1 is not None:
            return call + ", image=low_res", "low_res: the stage-I student's images, output_type='latent'"
        return call, ""
    if info.get("num_classes"):
        return f"batch_size={info['num_classes']}, class_labels=list(range({info['num_classes']}))", ""
    return "batch_size=4", ""


def student_pipeline(student, info, teacher, conds):
    """The exported student: a BootPipeline (pipelines/pipeline_boot.py) with what it needs to run
    alone: the text encoder and tokenizer, the latent decoder, IF-II's noising scheduler."""
    from pipelines.pipeline_boot import BootPipeline

    facts = {k: info.get(k) for k in ("T", "t_max", "alpha_tmax", "sigma_tmax", "time_cond_dim", "time_input",
                                      "native_time", "output", "guided", "default_w", "num_classes")}
    parts = dict(sample_channels=teacher.sample_shape[0], sample_size=teacher.sample_shape[-1])
    enc = conds.encoder if conds.prompts is not None else None
    if enc is not None:
        parts.update(text_encoder=enc.text_encoder, tokenizer=enc.tokenizer, max_length=enc.max_length,
                     use_mask=enc.use_mask)
    if teacher.latent:
        teacher.vae.register_to_config(scaling_factor=teachers.latent_scale(teacher.vae))  # written explicitly
        parts["vae"] = teacher.vae
    if conds.stage1 is not None:
        from diffusers import DDPMScheduler

        parts.update(image_noising_scheduler=DDPMScheduler.from_config(teacher.noising_config),
                     noise_level=info["noise_level"])
    return BootPipeline(unet=student, **facts, **parts)


@torch.no_grad()
def preview(cfg, student, info, teacher, conds, device):
    """preview.png: teacher DDIM-50 (top) vs student one step (bottom) from the same noise. Prints
    the mean squared distance of the student to the teacher's DDIM-50 ODE solution beside the
    teacher's own DDIM-1 and DDIM-10 (on --check samples for small images, else on the preview's)."""
    from torchvision.utils import save_image

    small = math.prod(teacher.sample_shape) <= 1024 and conds.prompts is None
    n = max(cfg.preview, cfg.check) if small else cfg.preview
    noise = teachers.seeded_noise(range(n), teacher.sample_shape, device)
    cond, w = preview_cond(cfg, teacher, conds, n, device)
    f = guided_teacher(teacher, cond, w)
    ddim = lambda steps: teachers.ddim(_Guided(teacher, f), noise, steps)  # noqa: E731
    x = {"DDIM-50": ddim(50), "DDIM-1": ddim(1), "DDIM-10": ddim(10)}
    x["student"] = teachers.boot_generate(student, info, noise, torch.zeros(n, device=device), cond, w)
    k = cfg.preview
    if k:
        rows = torch.cat([teacher.decode(x[key][:k].to(_dtype(teacher))) for key in ("DDIM-50", "student")])
        save_image(rows.float(), Path(cfg.out) / "preview.png", nrow=k)
    dist = {key: (x[key] - x["DDIM-50"]).pow(2).mean().item() for key in ("student", "DDIM-1", "DDIM-10")}
    print0(f"mean sq. distance to the teacher's DDIM-50 from the same noise (n={n}): student 1-step "
           f"{dist['student']:.4f} | teacher DDIM-1 {dist['DDIM-1']:.4f}, DDIM-10 {dist['DDIM-10']:.4f}")
    print0(f"wrote {Path(cfg.out) / 'student'}" + (f" and {Path(cfg.out) / 'preview.png'}" if k else ""))
    teachers.write_text_atomic(Path(cfg.out) / "distance.json", json.dumps({"n": n, **dist}, indent=2))
    return dist


def _dtype(teacher):
    """The dtype the teacher's networks (and its latent decoder) were loaded in."""
    return teacher.unet.dtype if hasattr(teacher, "unet") else torch.float32


class _Guided:
    """The guided teacher f~ seen through the samplers' interface (x0 + schedule)."""

    def __init__(self, teacher, f):
        self.schedule, self.f = teacher.schedule, f

    def x0(self, x, t, cond=None, w=None):
        return self.f(x, t)


def preview_cond(cfg, teacher, conds, n, device):
    """Labels 0..K-1 repeated, or the first prompts; a fixed stage-1 draw for IF-II."""
    w = conds.w
    if cfg.w_max is not None and w is not None:
        w = default_weight(cfg, teacher)
    if conds.prompts is not None:
        cond = conds.encoder.encode_prompts([conds.prompts[i % len(conds.prompts)] for i in range(n)])
        if conds.stage1 is not None:
            g = torch.Generator().manual_seed(10_000)
            cond = {**cond, **conds.lowres(g, n, 0, n, cond)}
    elif teacher.num_classes:
        cond = teacher.label_cond(torch.arange(n) % teacher.num_classes)
    else:
        cond = None
    return as_student_cond(cond, device), w


# ---------------------------------------------------------------------------------------------
# One-step sampling of a finished run:  python boot.py sample RUN [--label K | --prompt TEXT] [--w W]
# ---------------------------------------------------------------------------------------------
def sample_main(argv):
    p = teachers.OneLineParser(prog="boot.py sample", description="one-step samples of a finished BOOT run")
    p.add_argument("run", help="run directory (with student/)")
    p.add_argument("--label", type=int, default=None, help="class label (class-conditional teachers)")
    p.add_argument("--prompt", default=None, help="text prompt (text-to-image teachers)")
    p.add_argument("--w", type=float, default=None, help="guidance weight the student is conditioned on")
    p.add_argument("--n", type=int, default=16, help="number of samples (seeds --seed .. --seed + n - 1)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="PNG path (default RUN/samples.png)")
    p.add_argument("--device", default=None, help="cuda, cuda:K or cpu (default: cuda when there is a GPU)")
    a = p.parse_args(argv)
    if a.n < 1:
        raise UserError("--n must be at least 1")
    if a.w is not None and not math.isfinite(a.w):
        raise UserError(f"--w must be a finite number, got {a.w}")
    device = teachers.sample_device(a.device)  # a flag error first, before anything is read
    if not (Path(a.run) / "student" / "generator.json").is_file():
        raise UserError(f"'{a.run}' has no student/generator.json (not a finished run directory)")
    teachers.read_json(Path(a.run) / "student" / "generator.json", "student description")
    teachers.check_model_dir(Path(a.run) / "student" / "unet", "student")
    teachers.check_output_file(a.out or str(Path(a.run) / "samples.png"), "--out")
    quiet_libraries()
    gen = teachers.load_generator(a.run, device)  # the exported pipeline: encoder and decoder loaded once
    cond = sample_cond(gen, a.label, a.prompt, a.n, a.seed)
    noise = teachers.seeded_noise(range(a.seed, a.seed + a.n), gen.sample_shape, device)
    t0 = time.perf_counter()
    x = gen.generate(noise, cond, a.w)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    dt = time.perf_counter() - t0
    from torchvision.utils import save_image

    out = a.out or str(Path(a.run) / "samples.png")
    save_image(gen.decode(x).float().cpu(), out, nrow=int(math.sqrt(a.n)) or 1)
    print(f"{a.n} one-step samples in {dt:.2f} s on {device} -> {out}")


def sample_cond(gen, label, prompt, n, seed):
    """The condition of `boot.py sample`: labels, prompt embeddings, IF-II's stage-1 input."""
    info = gen.info
    if info.get("num_classes") and prompt is None:
        k = label if label is not None else None
        labels = torch.arange(n) % info["num_classes"] if k is None else torch.full((n,), k)
        if labels.min() < 0 or labels.max() >= info["num_classes"]:
            raise UserError(f"--label must lie in 0..{info['num_classes'] - 1}")
        return gen.label_cond(labels)
    if label is not None:
        raise UserError("this student is not class-conditional: --label does not apply")
    stage2 = info.get("stage", 1) == 2
    if prompt is None:
        if info.get("text"):
            raise UserError("this student is text-conditioned: pass --prompt TEXT")
        return None
    pipe = gen.pipe  # the exported pipeline's own text encoder and IF-II input: no teacher needed
    if pipe.text_encoder is None:
        raise UserError("this student is not text-conditioned: --prompt does not apply")
    cond = {"encoder_hidden_states": pipe.encode_prompt([prompt] * n).float()}
    if stage2:
        stage1 = teachers.load_generator(info["stage1_run"], gen.device)
        noise1 = teachers.seeded_noise(range(seed, seed + n), stage1.sample_shape, gen.device)
        x1 = stage1.generate(noise1, cond, None).clamp(-1, 1)
        low = pipe.lowres(x1, info["noise_level"], generator=torch.Generator().manual_seed(seed))
        cond = {**cond, **{k: v.float() if v.is_floating_point() else v for k, v in low.items()}}
    return cond


# ---------------------------------------------------------------------------------------------
# --dry-run: memory per GPU and network passes of one iteration, from the teacher's configs only
# ---------------------------------------------------------------------------------------------
def memory_report(cfg: BootConfig, world: int) -> dict:
    """The teacher and student built from configs (no weights read); the student's activations for
    one sample measured on CPU under the precision a GPU run uses (auto = bf16 autocast)."""
    quiet_libraries()
    with teachers.config_only():
        dtype = torch.float16 if cfg.half else torch.float32
        teacher = teachers.load_teacher(cfg.teacher, "meta", dtype, model_id=cfg.model_id, stage=cfg.stage, clip=cfg.clip)
        from accelerate import init_empty_weights

        with init_empty_weights():  # parameters on the meta device, nothing else
            student, info = make_student(teacher, cfg, default_weight(cfg, teacher))
    student.to_empty(device="cpu").train()  # uninitialised values: only the shapes matter here
    eps, t = torch.zeros(1, *teacher.sample_shape), torch.full((1,), 0.5)
    cond = {k: torch.zeros((1, *v.shape[1:]), dtype=v.dtype) for k, v in teacher.null.items()} or None
    if cfg.stage == 2:
        cond = {**cond, "lowres": torch.zeros(1, *teacher.sample_shape), "class_labels": torch.tensor([cfg.noise_level])}
    cond, w = as_student_cond(cond, "cpu"), default_weight(cfg, teacher)
    precision = "bf16" if cfg.precision == "auto" else cfg.precision

    def forward():
        with teachers.student_autocast(precision, "cpu"):
            teachers.boot_generate(student, info, eps, t, cond, w).float().mean()

    act = teachers.saved_activation_bytes(student, forward)
    cfg_pair = teacher.guided and (w is not None or cfg.w_max is not None) and w != 1.0
    k = cfg.boundary_every
    passes = {"teacher_forwards": (2 if cfg.solver == "heun" else 1) + (1 / k if k else 0),
              "teacher_forward_batch": "2 b (CFG pair)" if cfg_pair else "b",
              "student_forwards_no_grad": 1, "student_forward_backward": 1,
              "student_train_batch": f"2 b every {k} iterations (boundary), else b" if k else "b"}
    mods = [getattr(teacher, name, None) for name in ("unet", "text_encoder", "vae")]
    return teachers.memory_estimate(mods, 2 if cfg.half else 4, student, act, 2 if k else 1, cfg.batch // world, passes)


# ---------------------------------------------------------------------------------------------
# main
# ---------------------------------------------------------------------------------------------
def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    try:
        if argv[:1] == ["sample"]:
            sample_main(argv[1:])
            return 0
        cfg, dry_run = configure(argv)
        if dry_run:
            return 0
        train(cfg)
    except UserError as e:
        if int(os.environ.get("RANK", 0)) == 0:
            print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
