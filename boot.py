"""BOOT: data-free distillation of a diffusion model into a one-step generator.

Gu, Wang, Zhai, Zhang, Liu, Susskind. "BOOT: Data-free Distillation of Denoising Diffusion Models
with Bootstrapping", ICML 2024, arXiv:2306.05544.

A student y_theta(eps, t, c, w) learns the Signal-ODE (Eq. 5) of a frozen teacher f_phi from pure
noise eps: no image of the training set is ever read. Each iteration draws eps, a target time t and
a condition c, runs one Signal-ODE step t -> s = max(t - delta, t_min) from the student's own
y_theta(eps, t) with the teacher (Euler = Eq. 4/7, Heun = Eq. 15) and regresses y_theta(eps, s) on
that stop-gradient target; every k-th iteration adds the boundary loss (Eq. 8) at t_max. After
training, y_theta(eps, 0, c, w) is a sample in one network evaluation.

Read it in the paper's order: the Signal-ODE step and the losses (Eq. 4, 7, 13-15, 8, 9) -> the
student y_theta, one function per kind -> the conditions c ~ D -> one training step -> `train`,
Algorithm 1 as one loop. Below the "Running it" banner: config, presets, checks, loading, export
and the command line, which the method does not need.

    python boot.py                         # CPU: distils the embedded digits teacher -> runs/boot-digits/
    python boot.py --teacher gmm           # CPU, the analytic teacher, in seconds
    python boot.py --dry-run               # the resolved config and the memory per GPU, nothing written
    python boot.py sample runs/boot-digits --label 3 --n 16      # one-step samples -> PNG
    python evaluate.py --run runs/boot-digits                    # FD / KID vs the teacher's DDIM-1/10/50
    # Stable Diffusion 2.1-base on 8 GPUs (global batch 64 = 8 x 8; prompts: tools/prompts.py), fp16 teacher
    torchrun --standalone --nproc_per_node=8 boot.py --teacher sd21 --prompts prompts.txt --half
    # DeepFloyd IF: stage I, then stage II on the stage-I student's outputs (gated: accept the licence)
    torchrun --standalone --nproc_per_node=8 boot.py --teacher if --prompts prompts.txt --half
    torchrun --standalone --nproc_per_node=8 boot.py --teacher if --stage 2 \\
        --stage1-run runs/boot-if --prompts prompts.txt --half

Rerunning a command resumes its run; Ctrl-C stops it with a checkpoint; bad input stops with one
line (exit code 2) before anything is written (runkit.py, docs/runs.md).

Conventions the paper leaves open, each tested in tests/test_boot_*.py: CFG is Eq. 9 on x0-hat
(w = 1: the plain conditional teacher); delta lambda' is exact (`delta_lambda`), so the Euler
target is one DDIM step in signal space; Heun averages the two denoised signals (`bootstrap_target`);
the loss weights use Alg. 1's discrete delta lambda' (`loss_weight`); the student keeps its native
timestep at t_max and predicts eps there, so at init y_theta(eps, t) = f_phi(eps, t_max) for every
t (`y_teacher_copy`, `copy_student`).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import sys
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import cli
from cli import UserError, flag


if __name__ == "__main__" and cli.answers_alone(sys.argv[1:]):
    cli.help_from_source(__file__, "BootConfig")  # --help from the config at the end, before torch is imported

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from diffusers import UNet2DConditionModel, UNet2DModel  # noqa: E402
from diffusers.models.embeddings import get_timestep_embedding  # noqa: E402
from torchvision.utils import save_image  # noqa: E402

import costs  # noqa: E402
import evaluate  # noqa: E402
import runkit  # noqa: E402
import teachers  # noqa: E402
from pipelines import students  # noqa: E402
from runkit import print0  # noqa: E402
from teachers import bcast  # noqa: E402


# --- BOOT Eq. (4)/(11): one DDIM step written in signal space, y_t = (x_t - sigma_t eps) / alpha_t
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


# --- BOOT Eq. (7)/(13)/(15): the stop-gradient bootstrapping target y^_theta(eps, s)
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


def bootstrap_loss(y_s, target, weight, loss: str = "l2"):
    """Eq. (14): E w~_t / delta^2 d(y_theta(eps, s), SG(y^_theta(eps, s))), the weight per example.

    d is the squared L2 distance, mean over dimensions (the paper's); the pseudo-Huber distance of
    improved consistency training (Song & Dhariwal 2023), sqrt(||y - y^||^2 + c^2) - c with c =
    0.00054 sqrt(dimensions); or LPIPS on the images (Sec. 4.1: BOOT's best CIFAR-10 row)."""
    if loss == "lpips":  # grey repeated to RGB, below 224 x 224 upsampled to it (as consistency models do)
        x = torch.cat([y_s, target]).float().expand(-1, 3, -1, -1)
        x = F.interpolate(x, size=(224, 224), mode="bilinear", align_corners=False) if x.shape[-1] < 224 else x
        per_example = lpips_network(y_s.device)(*x.chunk(2)).flatten()
    elif loss == "huber":
        c = 0.00054 * math.sqrt(y_s[0].numel())
        per_example = ((y_s - target).pow(2).flatten(1).sum(1) + c**2).sqrt() - c
    else:
        per_example = (y_s - target).pow(2).flatten(1).mean(1)
    return (weight.to(per_example) * per_example).mean()


@functools.lru_cache(maxsize=2)
def lpips_network(device):
    """LPIPS (Zhang et al. 2018, the `lpips` package) with its AlexNet trunk, frozen; torchvision fetches
    the trunk's ImageNet weights once (one line naming them when they cannot be had)."""
    import lpips

    try:
        net = lpips.LPIPS(net="alex", verbose=False)
    except Exception as e:  # noqa: BLE001 - URLError, HTTPError, OSError: no network, no cached weights
        raise UserError(
            f"--loss lpips needs torchvision's AlexNet ImageNet weights (alexnet-owt-7be5be79.pth) in "
            f"{torch.hub.get_dir()}/checkpoints; download them once with network "
            f"({type(e).__name__}: {cli.first_line(e)})"
        ) from None
    return net.to(device).eval().requires_grad_(False)


# --- BOOT Eq. (8): boundary loss at t_max, where the teacher sees pure noise
def boundary_loss(y_tmax, f_tmax):
    """Eq. (8): E ||f_phi(eps, t_max) - y_theta(eps, t_max)||^2 (mean over dimensions): squared L2 whatever
    --loss says, the paper's distance for this anchor."""
    return (f_tmax - y_tmax).pow(2).mean()


# --- BOOT Sec. 3.3 / Eq. (9): the guided, thresholded teacher the targets are built from
def guided_teacher(teacher, cond, w, meter=None):
    """f~(x, t) = f_n + w (f_c - f_n) (Eq. 9), clipped as the teacher's convention says, in float32."""
    dtype, tcond = teacher.dtype, teachers.cond_to(cond, dtype=teacher.dtype)

    def f(x, t):
        with meter.time("teacher") if meter else nullcontext():
            return teacher.x0(x.to(dtype), t.to(x.device, torch.float32), tcond, w).float()

    return f


# --- The student y_theta(eps, t, c, w) (Sec. 3.2, App. C.3): one network call from the noise eps to the signal y_t
# Each kind of student is one function below. Every exported student carries its own copy of these few lines
# (pipelines/pipeline_boot.py: a plain diffusers user needs nothing of this repository); tests/test_exports.py
# holds the copy bitwise equal to them.
def time_embedding(t, w, dim: int):
    """The student's extra input: sinusoidal embeddings of the target time t (x 1000) and the CFG weight w
    (x 100), cos first, dim / 2 each (w = None embeds as 0). It enters the network through a new, zero-initialised
    projection (diffusers' time_cond_proj_dim), so at initialisation the student ignores it."""
    t = torch.as_tensor(t, dtype=torch.float32).reshape(-1)
    w = torch.zeros_like(t) if w is None else torch.as_tensor(w, dtype=torch.float32, device=t.device)
    w = w.reshape(-1).expand_as(t)
    half = dim // 2
    e_t = get_timestep_embedding(t * 1000, half, flip_sin_to_cos=True, downscale_freq_shift=0)
    e_w = get_timestep_embedding(w * 100, dim - half, flip_sin_to_cos=True, downscale_freq_shift=0)
    return torch.cat([e_t, e_w], dim=1)


@dataclass(frozen=True)
class Student:
    """What y_theta needs besides the network's weights: which kind of student, and the teacher's constants."""

    kind: str  # "copy" (the teacher's network + cond_proj), "copy-class" (+ a class embedding), "small"
    T: int  # the teacher's integer timesteps: continuous time t in [0, 1] is the network's timestep t (T - 1)
    t_max: float  # the copies' fixed native timestep
    alpha_tmax: float
    sigma_tmax: float
    time_cond_dim: int | None  # size of time_embedding; None: t enters through a class embedding
    default_w: float | None  # the CFG weight when none is given; None for an unguided teacher


def y_teacher_copy(net, s: Student, eps, t, cond, w):
    """The teacher's network at its own timestep t_max, told the target time t and the weight w through the
    zero-initialised cond_proj; it predicts noise, and y = (eps - sigma_tmax eps_hat) / alpha_tmax is its x0-hat.
    At initialisation y_theta(eps, t) = f_phi(eps, t_max) for every t (App. C.3)."""
    native = torch.full_like(t, s.t_max * (s.T - 1))
    emb = time_embedding(t, w, s.time_cond_dim).to(eps)
    eps_hat = teachers.call_net(net, eps, native, cond, timestep_cond=emb)[:, : eps.shape[1]]
    return (eps - s.sigma_tmax * eps_hat) / s.alpha_tmax


def y_class_copy(net, s: Student, eps, t, cond, w):
    """A copy of an unconditional UNet2DModel, which has no cond_proj: the target time t enters through a new,
    zero-initialised class embedding of timestep type; y as the teacher copy's. Unguided: no w."""
    native = torch.full_like(t, s.t_max * (s.T - 1))
    cond = {**(cond or {}), "class_labels": t * (s.T - 1)}
    eps_hat = teachers.call_net(net, eps, native, cond)[:, : eps.shape[1]]
    return (eps - s.sigma_tmax * eps_hat) / s.alpha_tmax


def y_small(net, s: Student, eps, t, cond, w):
    """A smaller fresh network: the target time is its own timestep, (t, w) also enter through time_embedding,
    and it outputs the signal y directly."""
    emb = time_embedding(t, w, s.time_cond_dim).to(eps)
    return teachers.call_net(net, eps, t * (s.T - 1), cond, timestep_cond=emb)[:, : eps.shape[1]]


Y_THETA = {"copy": y_teacher_copy, "copy-class": y_class_copy, "small": y_small}


def y_theta(net, s: Student, eps, t, cond=None, w=None):
    """y_theta(eps, t, c, w) (Sec. 3.2): the signal y_t of the teacher's DDIM trajectory from eps, in one network
    call; y_theta(eps, 0, c, w) is a sample. w = None: the student's default weight."""
    return Y_THETA[s.kind](net, s, eps, t, cond, s.default_w if w is None else w)


def copy_student(teacher, dim: int):
    """(network, kind): the teacher's network and weights with a new zero-initialised input for the target time
    (App. C.3): from_config(teacher, time_cond_proj_dim=D) with cond_proj = 0, or, for an unconditional
    UNet2DModel, a timestep-type class embedding whose last layer is 0. At init it is the teacher, exactly."""
    if not hasattr(teacher, "unet"):
        raise UserError(f"teacher '{teacher.name}' has no network to copy; use --student small")
    if teacher.prediction_type != "epsilon":
        raise UserError(
            f"--student copy needs an eps-prediction teacher ('{teacher.name}' predicts "
            f"{teacher.prediction_type}); use --student small"
        )
    state = {k: v.float() for k, v in teacher.unet.state_dict().items()}
    config = teacher.unet.config
    if type(teacher.unet).__name__ == "UNet2DConditionModel":
        model = UNet2DConditionModel.from_config(config, time_cond_proj_dim=dim)
        missing, unexpected = model.load_state_dict(state, strict=False)
        assert set(missing) == {"time_embedding.cond_proj.weight"} and not unexpected, (missing, unexpected)
        torch.nn.init.zeros_(model.time_embedding.cond_proj.weight)
        return model.float(), "copy"
    if (
        type(teacher.unet).__name__ == "UNet2DModel"
        and config.class_embed_type is None
        and not config.num_class_embeds
    ):
        model = UNet2DModel.from_config(config, class_embed_type="timestep")
        model.load_state_dict(state, strict=False)
        torch.nn.init.zeros_(model.class_embedding.linear_2.weight)
        torch.nn.init.zeros_(model.class_embedding.linear_2.bias)
        return model.float(), "copy-class"
    raise UserError(
        f"cannot add a target-time input to a {type(teacher.unet).__name__} with a class embedding; "
        "use --student small"
    )


def small_student(teacher, dim: int, seed: int):
    """(network, "small"): a fresh UNet2DConditionModel half the teacher's width, one layer per block, whose native
    timestep is the target time t; the analytic gmm teacher gets the embedded digits architecture."""
    C, H = teacher.sample_shape[0], teacher.sample_shape[-1]
    if hasattr(teacher, "unet"):
        base = dict(teacher.unet.config)
        chans = [max(8, c // 2) for c in base["block_out_channels"]]
        groups = math.gcd(*chans, base.get("norm_num_groups") or 32)
        cfg = {**base, "block_out_channels": chans, "layers_per_block": 1, "norm_num_groups": groups}
        if type(teacher.unet).__name__ != "UNet2DConditionModel":  # a UNet2DModel's config: no text
            keep = ("sample_size", "in_channels", "out_channels", "block_out_channels", "layers_per_block")
            keep += ("norm_num_groups", "down_block_types", "up_block_types")
            cfg = {k: v for k, v in cfg.items() if k in keep}
            cfg["mid_block_type"] = "UNetMidBlock2D"
    else:
        cfg = teachers.digits_unet_config(num_classes=teacher.num_classes or 0, channels=(32, 64))
        cfg.update(in_channels=C, out_channels=C, sample_size=H)
        if not teacher.num_classes:
            cfg.pop("num_class_embeds")
    cfg = {k: v for k, v in cfg.items() if not k.startswith("_")}
    torch.manual_seed(seed)
    return UNet2DConditionModel.from_config({**cfg, "time_cond_proj_dim": dim}), "small"


# --- Conditions c ~ D (Alg. 1 line 3): labels, prompts, IF stage II's stage-1 inputs
class Context:
    """The condition c (and CFG weight w) of each training example, drawn from the global stream g
    (BOOT Alg. 1 line 3, c ~ D): labels, prompts encoded by `encoder`, and for IF stage II the
    stage-I student's one-step output, upsampled and noised (Sec. 3.3, App. C.4). w is the teacher's
    (or w_range[0]), or U(w_range) per example. Each process keeps its slice lo:hi of a global draw."""

    def __init__(self, teacher, prompts=None, encoder=None, stage1=None, w_range=(None, None), noise_level=250):
        self.teacher, self.prompts, self.encoder, self.stage1 = teacher, prompts, encoder or teacher, stage1
        self.w_range, self.noise_level, self.device = w_range, noise_level, teacher.device
        self.w = None if not teacher.guided else w_range[0] if w_range[0] is not None else teacher.default_guidance

    def draw(self, g, B, lo, hi):
        """(cond for the student (float32), w as a float or a [b] tensor) for examples lo..hi of B."""
        (w_lo, w_hi), cond, w = self.w_range, None, self.w
        if self.prompts is not None:
            idx = torch.randint(0, len(self.prompts), (B,), generator=g)[lo:hi]
            cond = self.encoder.encode_prompts([self.prompts[i] for i in idx.tolist()])
        elif self.teacher.num_classes:
            cond = self.teacher.label_cond(torch.randint(0, self.teacher.num_classes, (B,), generator=g)[lo:hi])
        if w_hi is not None and self.w is not None:
            w = (w_lo + (w_hi - w_lo) * torch.rand(B, generator=g, dtype=torch.float64))[lo:hi].to(self.device)
        if self.stage1 is not None:
            cond = {**cond, **self.lowres(g, B, lo, hi, cond)}
        return teachers.cond_to(cond, self.device), w

    def lowres(self, g, B, lo, hi, cond):
        """IF-II input: the stage-1 student's one-step output, upsampled and noised (Sec. 3.3, App. C.4)."""
        gen = self.stage1
        eps1 = torch.randn((B, *gen.sample_shape), generator=g)[lo:hi].to(self.device)
        z = torch.randn((B, gen.sample_shape[0], *self.teacher.sample_shape[1:]), generator=g)[lo:hi]
        cond1 = {"encoder_hidden_states": cond["encoder_hidden_states"].float()}
        x1 = gen.generate(eps1, cond1, gen.default_guidance).clamp(-1, 1)
        return self.teacher.lowres_cond(x1, self.noise_level, noise=z.to(self.device))

    def fixed(self, n):
        """The conditions of a preview: labels 0..K-1 repeated, or the first prompts in turn, with a
        fixed stage-1 draw for IF-II."""
        cond = None
        if self.prompts is not None:
            cond = self.encoder.encode_prompts([self.prompts[i % len(self.prompts)] for i in range(n)])
            if self.stage1 is not None:
                cond = {**cond, **self.lowres(torch.Generator().manual_seed(10_000), n, 0, n, cond)}
        elif self.teacher.num_classes:
            cond = self.teacher.label_cond(torch.arange(n) % self.teacher.num_classes)
        return teachers.cond_to(cond, self.device)


# --- One training iteration (Alg. 1 lines 2-12)
def sample_times(g, cfg: BootConfig, B: int, step: int):
    """t ~ U(t_min, t_max) (Sec. 3.2), or the progressive ablation: a window of width 2 delta
    sliding from t_max down to t_min over the run (Sec. 4.3, Fig. 6c)."""
    u = torch.rand(B, generator=g, dtype=torch.float64)
    if cfg.time_sampling == "uniform":
        return cfg.t_min + (cfg.t_max - cfg.t_min) * u
    centre = cfg.t_max - (cfg.t_max - cfg.t_min) * step / max(cfg.iters - 1, 1)
    lo, hi = max(centre - cfg.delta, cfg.t_min), min(centre + cfg.delta, cfg.t_max)
    return lo + (hi - lo) * u


def boot_step(model, student: Student, teacher, batch, cfg: BootConfig, boundary: bool, meter):
    """Alg. 1 lines 4-11 on this process's batch (eps, t, c, w): L_BS (+ beta L_BC on boundary
    iterations). Returns (loss, {"bs", "bc"}); `meter` times the teacher and the student."""
    eps, t, cond, w = batch
    raw, sch, dev = getattr(model, "module", model), teacher.schedule, eps.device  # DDP's module: no-grad pass
    s = step_back(t, cfg.delta, cfg.t_min)  # line 4
    f = guided_teacher(teacher, cond, w, meter)  # line 9's f~ (Eq. 9)
    amp = lambda: runkit.student_autocast(cfg.precision, dev)  # noqa: E731 - bf16 on a GPU by default
    timed = meter.time if meter else lambda part: nullcontext()
    with timed("student"), torch.no_grad(), amp():
        y_t = y_theta(raw, student, eps, t.to(dev, torch.float32), cond, w).float()  # line 7, under SG
    target = bootstrap_target(f, sch, y_t, eps, t, s, cfg.solver)  # lines 5-6, 8-10 (Eq. 7 / 15)
    weight = loss_weight(sch, t, cfg.delta, cfg.weighting, s)  # line 10: 1 / (delta lambda')^2 or 1 / delta^2
    times, noise, conds, ws = s, eps, cond, w
    if boundary:  # one student forward for y_theta(eps, s) and y_theta(eps, t_max) (line 7)
        times, noise = torch.cat([s, torch.full_like(s, cfg.t_max)]), torch.cat([eps, eps])
        conds, ws = teachers.cat_cond(cond, cond), torch.cat([w, w]) if torch.is_tensor(w) else w
    with timed("student"), amp():
        y = y_theta(model, student, noise, times.to(dev, torch.float32), conds, ws).float()
    loss_bs = bootstrap_loss(y[: len(eps)], target, weight, cfg.loss)  # line 10
    loss_bc = torch.zeros((), device=dev)
    if boundary:
        f_tmax = f(eps, torch.full_like(t, cfg.t_max))  # line 9: the teacher sees x = eps at t_max
        loss_bc = boundary_loss(y[len(eps) :], f_tmax)  # line 11 (Eq. 8)
    return loss_bs + cfg.beta * loss_bc, {"bs": loss_bs.detach(), "bc": loss_bc.detach()}


# --- Algorithm 1: the training run, one flat loop for one CPU / GPU process and torchrun DDP
def train(cfg: BootConfig):
    """Algorithm 1 (paper, Appendix) as one loop; runkit.py resumes, logs and checkpoints."""
    teacher, context, net, student, run = load_inputs(cfg)  # every input check on every process; nothing written
    with runkit.training(run) as (rank, world, device):  # process group, run lock, Ctrl-C / SIGTERM
        raw, ema, opt = runkit.optimisation(net, cfg, device)
        g = torch.Generator().manual_seed(cfg.seed)  # the global noise / time / condition stream: same on every rank
        saved = {"model": raw, "ema": ema, "opt": opt, "gen": g}  # what a checkpoint holds
        step, why = run.resume(saved, f"boot {cfg.teacher}"), None
        model = runkit.ddp(raw, device, world)
        # metrics.jsonl's losses; bc is averaged over the boundary iterations only
        meter = runkit.Meter(device, ("loss", "bs", "bc"), ("loss", "bc"), run.window)
        extra = proxy(cfg, teacher, context, ema, student, meter)  # --eval-every (rank 0)
        B, b = cfg.batch, cfg.batch // world
        lo, hi = rank * b, (rank + 1) * b  # this process's slice of every global draw
        while step < cfg.iters:  # line 1
            eps = torch.randn((B, *teacher.sample_shape), generator=g)[lo:hi].to(device)  # line 2
            t = sample_times(g, cfg, B, step)[lo:hi].to(device)  # line 4 (s = t - delta: boot_step)
            cond, w = context.draw(g, B, lo, hi)  # line 3 (and w, when the student learns it)
            boundary = cfg.boundary_every > 0 and step % cfg.boundary_every == 0
            loss, parts = boot_step(model, student, teacher, (eps, t, cond, w), cfg, boundary, meter)  # lines 4-11
            with meter.time("student"):  # line 12
                opt.zero_grad(set_to_none=True)
                loss.backward()  # DDP averages the gradients over ranks: the global-batch mean
                run.check_update(loss, raw.parameters(), step + 1)  # a non-finite loss or gradient stops the run
                opt.step()
                ema.update(raw)
            step += 1
            meter.add(loss=loss, bs=parts["bs"], **({"bc": parts["bc"]} if boundary else {}))
            # records and checkpoints; stops at the budget or on a signal, as rank 0 sees it
            why = run.end_iteration(step, meter, saved, extra)
            if why:
                break
            if cfg.export_every and step % cfg.export_every == 0 and rank == 0:
                finish(cfg, raw, ema, student, teacher, context, device)  # student/ + preview.png mid-run
        if rank == 0:
            d = finish(cfg, raw, ema, student, teacher, context, device)
            facts = generator_facts(cfg, teacher, student, raw)
            students.print_snippet(d, facts, context.prompts and context.prompts[0])
    return step


# =====================================================================================================================
# Running it: the config and the teachers' presets, the input checks, loading, the export, the command line.
# Nothing above needs them to be read.
# =====================================================================================================================


@dataclass
class BootConfig:
    # the teacher f_phi
    teacher: str = flag("digits", "registry name (digits, gmm, ddpm-cifar10, sd21, if), hub id or local diffusers dir")
    model_id: str | None = flag(None, "hub id or local copy replacing the registry's default for --teacher")
    preset: str | None = flag(
        None,
        "row of PRESETS (Table 3) to fill the preset fields from; default: the "
        "teacher's registry entry, found from what the teacher is (a local copy too)",
    )
    stage: int = flag(1, "IF cascade stage; 2 distils IF-II on the outputs of a stage-1 student")
    stage1_run: str | None = flag(None, "finished stage-1 run directory (with --stage 2)")
    prompts: str | None = flag(None, "text file with one prompt per line (text-to-image teachers)")
    half: bool = flag(False, "run the frozen teacher in float16 (GPU only; the same in dkdm.py)")
    precision: str = flag("auto", "student: auto (bf16 autocast + TF32 matmuls on a GPU, float32 on CPU), bf16, fp32")
    grad_checkpointing: bool = flag(False, "recompute the student's activations in backward (less memory, more time)")
    clip: str = flag("auto", "targets' thresholding: auto (the teacher's own), none, static, dynamic")
    # the student y_theta(eps, t, c, w)
    student: str = flag(
        "auto",
        "copy (teacher copy + zero-init t/w embedding), small (a smaller random "
        "UNet), auto (copy where the teacher has a network)",
    )
    t_max: float | None = flag(
        None,
        "upper end of the trained time range; the copy student's fixed native "
        "timestep (preset: where 1/alpha_t = 6.4, the error amplification 0.9 has on digits)",
    )
    t_min: float = flag(0.0, "lower end of the trained time range (the sample is y_theta(eps, t_min))")
    time_cond_dim: int = flag(128, "size of the sinusoidal embedding of (t, w) fed to the student")
    # the objective (Alg. 1)
    solver: str = flag("heun", "Signal-ODE step for the targets: euler (Eq. 7) or heun (Eq. 15)")
    loss: str | None = flag(
        None,
        "distance of the bootstrapping term: l2 (Eq. 14), huber (pseudo-Huber), lpips (pixel "
        "teachers; preset: lpips for ddpm-cifar10, as Sec. 4.1, else l2)",
    )
    delta: float | None = flag(None, "bootstrapping step size delta (preset: 0.04; 0.01 for sd21)")
    weighting: str | None = flag(None, "loss weight: uniform (1/delta^2) or lambda (1/(delta lambda')^2)")
    boundary_every: int | None = flag(None, "boundary loss (Eq. 8) every k iterations; 0 = never")
    beta: float = flag(1.0, "weight of the boundary loss")
    time_sampling: str = flag("uniform", "t ~ U(t_min, t_max), or progressive (a window sliding down; ablation)")
    w: float | None = flag(None, "CFG weight (Eq. 9); default: the teacher's")
    w_max: float | None = flag(None, "draw w ~ U(w, w_max) per example; the student is conditioned on it")
    noise_level: int = flag(250, "IF stage 2: noise augmentation level of the upsampled stage-1 output")
    # optimisation
    iters: int | None = flag(None, "training iterations (preset)")
    batch: int | None = flag(None, "global batch size, divisible by the number of processes (preset)")
    lr: float | None = flag(None, "AdamW learning rate, no decay, no warm-up (preset)")
    ema: float | None = flag(None, "EMA decay of the exported student (preset)")
    seed: int = flag(0, "seed of the global noise / time / condition stream and of a fresh student")
    minutes: float | None = flag(None, "stop (checkpoint + export) after this many minutes; rerun to go on")
    # output
    out: str | None = flag(None, "run directory (default runs/boot-<teacher>[-stage2])")
    log_every: int = flag(50, "iterations between metrics.jsonl records")
    eval_every: int | None = flag(
        None,
        "a proxy FD and KID of the EMA student every K iterations, a multiple of "
        "--log-every (metrics.jsonl; 0: never; default: 500, or the next multiple)",
    )
    ckpt_every: int = flag(250, "iterations between checkpoints")
    keep: int = flag(1, "checkpoints kept: the last N (checkpoints/step-*.pt; latest.pt is the newest)")
    export_every: int = flag(
        0, "also export the EMA student + preview.png every K iterations while training (0: at the end)"
    )
    preview: int = flag(10, "columns of preview.png: teacher DDIM-50 row vs student 1-step row")
    check: int = flag(
        256,
        "samples of the final distance check against the teacher's DDIM-50 (images "
        "of <= 1024 values without prompts; else the preview's)",
    )


BASE = dict(
    delta=0.04, weighting="uniform", boundary_every=4, iters=3000, batch=128, lr=3e-4, ema=0.995, t_max=0.9, loss="l2"
)
# t_max (the paper gives none): the student's output is (eps - sigma eps_hat) / alpha at t_max, so an error in
# eps_hat is amplified 1/alpha_tmax times. 0.9 was measured on the digits teacher (cosine: 1/alpha = 6.4; 0.98,
# 1/alpha = 32, trained noisily, README); the other presets take the t with the same 1/alpha_tmax on their own
# schedule: 0.9 on IF's cosine, 0.85 on SD's scaled-linear (6.5; 8.4 at 0.9), 0.6 on CIFAR-10's linear (6.3; 60
# at 0.9).
PRESETS = {  # Table 3 where the paper gives a value; measured on this CPU for digits and gmm
    "digits": dict(),
    "gmm": dict(iters=300, batch=64, lr=1e-3, ema=0.98, boundary_every=1),
    "ddpm-cifar10": dict(lr=1e-4, ema=0.9999, iters=500_000, t_max=0.6, loss="lpips"),  # Table 2's best row
    "sd21": dict(delta=0.01, weighting="lambda", lr=2e-5, batch=64, ema=0.9999, iters=500_000, t_max=0.85),
    "if": dict(weighting="lambda", lr=2e-5, batch=64, ema=0.9999, iters=500_000),
    "if-2": dict(weighting="lambda", lr=2e-5, batch=32, ema=0.9999, iters=100_000),
}
# the fields a rerun may change (the run resumes); any other difference is refused
RESUMABLE = ("iters", "minutes", "log_every", "ckpt_every", "preview", "check", "precision", "grad_checkpointing")
RESUMABLE += ("keep", "export_every", "eval_every")
CHOICES = dict(
    solver=("euler", "heun"),
    loss=("l2", "huber", "lpips"),
    weighting=("uniform", "lambda"),
    student=("auto", "copy", "small"),
    time_sampling=("uniform", "progressive"),
    clip=("auto", "none", "static", "dynamic"),
    precision=cli.PRECISIONS,
)


def resolve(cfg: BootConfig) -> BootConfig:
    """Fill the preset fields (None) from the teacher's row of PRESETS, then BASE; local paths made absolute."""
    preset, _ = preset_for(cfg)
    row = PRESETS.get(preset, {})
    fills = {k: row.get(k, v) for k, v in BASE.items() if getattr(cfg, k) is None}
    out = cfg.out or f"runs/boot-{Path(cfg.teacher).name}" + ("-stage2" if cfg.stage == 2 else "")
    paths = {k: teachers.local_path(getattr(cfg, k)) for k in ("teacher", "model_id", "prompts", "stage1_run")}
    step = max(cfg.log_every, 1)  # --log-every 0 is refused by check_config
    every = -(-500 // step) * step if cfg.eval_every is None else cfg.eval_every  # >= 500, a multiple
    return dataclasses.replace(cfg, **fills, **paths, out=out, preset=preset, eval_every=every)


def preset_for(cfg: BootConfig):
    """(row of PRESETS, why): --preset, else the registry entry the teacher is (teachers.teacher_family);
    'base' when none fits. A local copy of SD 2.1 gets the sd21 row, not the digits defaults."""
    if cfg.preset is not None:
        return cfg.preset, "--preset"
    family, why = (
        (cfg.teacher, "registry entry") if cfg.teacher in PRESETS else teachers.family_of(cfg.teacher, cfg.model_id)
    )
    key = (family or "") + ("-2" if cfg.stage == 2 else "")
    if key in PRESETS:
        return key, why
    return "base", f"no preset for {why}" if family is None else f"no preset for '{family}' ({why})"


def check_prompts(cfg: BootConfig, text: bool | None):
    """The prompts when the teacher is text-to-image (text), none otherwise; text None: not known yet."""
    prompts = cli.load_prompts(cfg.prompts) if cfg.prompts is not None else None  # the file's own errors first
    if text is not None and text != (prompts is not None):
        raise UserError(
            f"text-to-image teacher '{cfg.teacher}' needs --prompts FILE (one prompt per line; tools/prompts.py "
            "builds one)"
            if text
            else f"teacher '{cfg.teacher}' is not text-conditioned: --prompts does not apply"
        )
    return prompts


def validate(cfg: BootConfig, world: int):
    """All checks that need no teacher: one-line UserErrors before anything is loaded or written."""
    cli.check_run_fields(cfg)
    checks = [
        (cfg.preset in (*PRESETS, "base"), f"unknown preset '{cfg.preset}' (known: {', '.join(PRESETS)}, base)"),
        *(
            (getattr(cfg, k) in v, f"unknown {k.replace('_', '-')} '{getattr(cfg, k)}' (known: {', '.join(v)})")
            for k, v in CHOICES.items()
        ),
        (0.0 <= cfg.t_min < cfg.t_max < 1.0, f"need 0 <= t_min < t_max < 1, got t_min={cfg.t_min}, t_max={cfg.t_max}"),
        (0.0 < cfg.delta <= cfg.t_max - cfg.t_min, f"need 0 < delta <= t_max - t_min, got delta={cfg.delta}"),
        (
            cfg.batch >= 1 and cfg.batch % world == 0,
            f"global batch {cfg.batch} is not a positive multiple of the {world} processes",
        ),
        (cfg.boundary_every >= 0 and cfg.beta >= 0, "need boundary-every >= 0 and beta >= 0"),
        (
            cfg.preview >= 0 and cfg.check >= 0 and cfg.time_cond_dim >= 2,
            "need preview >= 0, check >= 0, time-cond-dim >= 2",
        ),
        (
            cfg.w_max is None or (cfg.w is not None and cfg.w <= cfg.w_max),
            "--w-max needs --w with w <= w-max (w ~ U(w, w_max) per example)",
        ),
        (cfg.stage in (1, 2), f"--stage must be 1 or 2, got {cfg.stage}"),
        (0 <= cfg.noise_level < 1000, f"--noise-level must lie in 0..999, got {cfg.noise_level}"),
        (
            cfg.stage != 2 or cfg.stage1_run,
            "--stage 2 needs --stage1-run DIR, a finished stage-1 run of the same cascade",
        ),
    ]
    for ok, message in checks:
        if not ok:
            raise UserError(message)
    if cfg.stage == 2:
        students.check_finished_run(cfg.stage1_run, "stage-1")
    check_prompts(cfg, teachers.is_text_teacher(cfg.teacher, cfg.model_id))  # known before loading: checked here
    teachers.check_teacher_files(cfg.teacher, cfg.model_id, cfg.stage)
    cli.check_output_dir(cfg.out, "--out")


# CFG weights the registry teachers bring (Table 3: 7.5 SD, 7.0 IF-I, 4.0 IF-II; 1 = the plain
# conditional teacher), shown by --dry-run; other teachers tell theirs when loaded
REGISTRY_W = {"digits": 1.0, "gmm": 1.0, "sd21": 7.5, "if": 7.0, "if-2": 4.0}


USAGE = "boot.py sample RUN [--label K | --prompt TEXT] [--w W] [--n N] [--seed S] [--out PNG]"


def parser():
    """The command line: BootConfig's flags, and `boot.py sample RUN ...`."""
    return cli.add_usage(cli.add_processes(cli.parser_from_dataclass(BootConfig, __doc__)), USAGE)


def configure(argv):
    """(config, dry_run) from the command line, resolved and checked; --dry-run prints the config
    with every default filled in and the memory per GPU."""
    args = vars(parser().parse_args(argv))
    dry_run, world = cli.planned(args)
    cfg = resolve(BootConfig(**args))
    if dry_run:
        validate(cfg, world)
        shown = dataclasses.asdict(cfg)
        if cfg.w is None:
            shown["w"] = REGISTRY_W.get(cfg.teacher + ("-2" if cfg.stage == 2 else ""), "the teacher's default")
        try:
            shown["memory_estimate"] = memory_estimate(cfg, world)
        except UserError as e:  # e.g. a hub teacher whose configs are not on this machine
            shown["memory_estimate"] = f"unavailable: it needs the teacher's configs ({e})"
        row = TIMED.get(cfg.preset)  # as bench/gpu.py measured it: teacher copy, --half, bf16 student
        shown["time_estimate"] = costs.measured_time(row, cfg.iters, world, cfg.batch // world)
        print(json.dumps(shown, indent=2))
    else:
        print0(f"preset '{cfg.preset}' for teacher '{cfg.teacher}' ({preset_for(BootConfig(**args))[1]})")
    return cfg, dry_run


TIMED = {"sd21": "boot_sd21"}  # the presets whose iteration bench/gpu.py times on a GPU: its row


def memory_estimate(cfg: BootConfig, world: int) -> dict:
    """--dry-run's memory per GPU (costs.estimate): the teacher and the student built from their configs (no
    weights read: accelerate's init_empty_weights), a training forward y_theta(eps, t) at t = 0.5, the network
    passes of Alg. 1."""
    from accelerate import init_empty_weights

    teachers.quiet_libraries()
    dtype = torch.float16 if cfg.half else torch.float32
    kw = dict(model_id=cfg.model_id, stage=cfg.stage, clip=cfg.clip, weights=False)
    teacher = teachers.load_teacher(cfg.teacher, "meta", dtype, **kw)
    w = default_weight(cfg, teacher)
    with init_empty_weights():  # parameters on the meta device, nothing else
        net, student = make_student(teacher, cfg, w)
    net.to_empty(device="cpu").train()  # uninitialised values: only the shapes matter here

    def forward(n):
        cond = {k: torch.zeros((n, *v.shape[1:]), dtype=v.dtype) for k, v in teacher.null.items()} or None
        if cfg.stage == 2:
            lowres = torch.zeros(n, *teacher.sample_shape)
            cond = {**cond, "lowres": lowres, "class_labels": torch.full((n,), cfg.noise_level)}
        eps, t = torch.zeros(n, *teacher.sample_shape), torch.full((n,), 0.5)
        return y_theta(net, student, eps, t, teachers.cond_to(cond, "cpu"), w)

    cfg_pair, k = teacher.guided and (w is not None or cfg.w_max is not None) and w != 1.0, cfg.boundary_every
    passes = {
        "teacher_forwards": (2 if cfg.solver == "heun" else 1) + (1 / k if k else 0),
        "teacher_forward_batch": "2 b (CFG pair)" if cfg_pair else "b",
        "student_forwards_no_grad": 1,
        "student_forward_backward": 1,
        "student_train_batch": f"2 b every {k} iterations (boundary), else b" if k else "b",
    }
    return costs.estimate(teacher, net, forward, cfg.precision, (cfg.batch // world, 2 if k else 1), passes)


def load_inputs(cfg: BootConfig):
    """(teacher, conditions, student network, Student, run directory): every input checked, on every process,
    before any process group is made or anything is written."""
    validate(cfg, int(os.environ.get("WORLD_SIZE", 1)))
    runkit.teacher_dtype(cfg.half, runkit.env()[2])  # --half needs a GPU (a dry-run plans for one anywhere)
    teachers.check_hub(cfg.teacher, cfg.model_id, cfg.stage)  # before any download
    rank, world, device = runkit.env()
    teacher, context = load_teacher_and_context(cfg, device)
    run = runkit.RunDir(cfg.out, dataclasses.asdict(cfg), rank, resumable=RESUMABLE, keep=cfg.keep)
    net, student = make_student(teacher, cfg, default_weight(cfg, teacher))
    return teacher, context, net, student, run


def load_teacher_and_context(cfg: BootConfig, device):
    """(teacher, Context): the teacher, and what a conditioned teacher needs besides labels (Alg. 1's
    context dataset D): prompts, the teacher that encodes them, the IF stage-I student that stage II is
    conditioned on. Loads and checks every input (one line each when one does not fit), writes nothing."""
    teachers.quiet_libraries()
    dtype = runkit.teacher_dtype(cfg.half, device)
    teacher = teachers.load_teacher(cfg.teacher, device, dtype, model_id=cfg.model_id, stage=cfg.stage, clip=cfg.clip)
    stage2, encoder, stage1 = getattr(teacher, "stage", 1) == 2, None, None
    if stage2 != (cfg.stage == 2):
        raise UserError(
            f"'{cfg.teacher}' is an IF stage-II pipeline: pass --stage 2 --stage1-run DIR"
            if stage2
            else f"--stage 2 needs an IF stage-II teacher; '{cfg.teacher}' is not one"
        )
    if cfg.w is not None and not teacher.guided:
        raise UserError(f"teacher '{cfg.teacher}' is unconditional: --w (CFG) does not apply")
    if cfg.loss == "lpips" and teacher.latent:  # decoding y and its target every iteration: two VAE passes more
        raise UserError(f"--loss lpips compares images; teacher '{cfg.teacher}' is latent: use --loss l2 or huber")
    if cfg.loss == "lpips":
        lpips_network(device)  # its trunk's weights, or one line saying which
    prompts = check_prompts(cfg, hasattr(teacher, "encode_prompts") or stage2)
    if stage2:
        stage1 = students.ExportedStudent(cfg.stage1_run, teacher.device)
        if stage1.info.get("stage", 1) != 1 or stage1.sample_shape[0] != teacher.sample_shape[0]:
            raise UserError(f"'{cfg.stage1_run}' is not a stage-1 run with {teacher.sample_shape[0]}-channel outputs")
        encoder, info = teacher, stage1.info
        if not hasattr(teacher, "tokenizer"):  # IF-II may ship without T5: stage I's encodes the prompts
            encoder = teachers.load_teacher(
                info["teacher"], teacher.device, teacher.dtype, model_id=info.get("model_id")
            )
    return teacher, Context(teacher, prompts, encoder, stage1, (cfg.w, cfg.w_max), cfg.noise_level)


def default_weight(cfg: BootConfig, teacher):
    """The w a user gets when sampling without --w (None for unguided teachers)."""
    if not teacher.guided:
        return None
    if cfg.w_max is not None:
        d = teacher.default_guidance
        return d if d is not None and cfg.w <= d <= cfg.w_max else cfg.w
    return cfg.w if cfg.w is not None else teacher.default_guidance


def make_student(teacher, cfg: BootConfig, default_w):
    """(network, Student): a copy of the teacher (--student copy; auto where the teacher has a network) or a
    smaller fresh network (--student small), and the constants y_theta needs."""
    kind = cfg.student if cfg.student != "auto" else ("copy" if hasattr(teacher, "unet") else "small")
    if kind == "copy":
        net, kind = copy_student(teacher, cfg.time_cond_dim)
    else:
        net, kind = small_student(teacher, cfg.time_cond_dim, cfg.seed)
    sch, t_max = teacher.schedule, torch.tensor(cfg.t_max, dtype=torch.float64)
    dim = None if kind == "copy-class" else cfg.time_cond_dim
    alpha, sigma = float(sch.alpha(t_max)), float(sch.sigma(t_max))
    constants = dict(T=sch.T, t_max=cfg.t_max, alpha_tmax=alpha, sigma_tmax=sigma, time_cond_dim=dim)
    return net, Student(kind=kind, **constants, default_w=default_w)


# How the exported pipeline (pipelines/pipeline_boot.py, its config) calls each kind of student
PIPELINE_CALL = {
    "copy": dict(output="eps"),
    "copy-class": dict(output="eps", time_input="class_labels"),
    "small": dict(output="sample", native_time="target"),
}


def generator_facts(cfg: BootConfig, teacher, student: Student, net) -> dict:
    """student/generator.json: the student's constants, how its pipeline calls it, and what evaluate.py and
    `boot.py sample` need to know of the run (the teacher, its shape and conditions, IF stage II's inputs)."""
    facts = dict(method="boot", teacher=cfg.teacher, model_id=cfg.model_id, stage=cfg.stage)
    facts.update({k: v for k, v in dataclasses.asdict(student).items() if k != "kind"}, guided=teacher.guided)
    facts.update(num_classes=teacher.num_classes, sample_shape=list(teacher.sample_shape), latent=teacher.latent)
    facts.update(text=hasattr(teacher, "encode_prompts"), student=student.kind, seed=cfg.seed)
    if cfg.stage == 2:
        facts.update(stage1_run=str(Path(cfg.stage1_run).resolve()), noise_level=cfg.noise_level)
    return {**facts, "class_name": type(net).__name__, **PIPELINE_CALL[student.kind]}


# --- Output: the EMA student in diffusers format + generator.json, a preview grid, a distance check
def finish(cfg, raw, ema, student: Student, teacher, context, device):
    """student/ (the EMA student as a BootPipeline + generator.json), then preview.png and the distance check."""
    encoder = context.encoder if context.prompts is not None else None  # the exported pipeline encodes its prompts
    facts = generator_facts(cfg, teacher, student, raw)
    d, net = students.export_ema(ema, lambda m: students.boot_pipeline(m, facts, teacher, encoder), facts, cfg.out)
    if cfg.preview or cfg.check:
        preview(cfg, net, student, teacher, context, device)
    else:
        print0(f"wrote {d} (--preview 0 --check 0: no preview.png, no distance check)")
    return d


def proxy(cfg, teacher, context, ema, student: Student, meter):
    """metrics.jsonl's proxy at every --eval-every-th step (rank 0): FD and KID of the EMA student's one-step
    samples against the teacher's own DDIM-50 (evaluate.Probe). None: no proxy."""
    w = default_weight(cfg, teacher)

    def sample(noise, cond):
        t = torch.zeros(len(noise), device=noise.device)
        return teacher.decode(y_theta(ema.model(), student, noise, t, cond, w).to(teacher.dtype))

    return evaluate.proxy(cfg.eval_every, teacher, context.fixed, w, meter, sample)


@torch.no_grad()
def preview(cfg, net, student: Student, teacher, context, device):
    """preview.png: teacher DDIM-50 (top) vs student one step (bottom) from the same noise. Prints
    the mean squared distance of the student to the teacher's DDIM-50 ODE solution beside the
    teacher's own DDIM-1 and DDIM-10 (on --check samples for small images, else on the preview's)."""
    small = math.prod(teacher.sample_shape) <= 1024 and context.prompts is None
    n = max(cfg.preview, cfg.check) if small else cfg.preview
    noise = teachers.seeded_noise(range(n), teacher.sample_shape, device)
    cond, w = context.fixed(n), context.w
    if cfg.w_max is not None and w is not None:  # a student conditioned on w: preview the default w
        w = default_weight(cfg, teacher)
    f = guided_teacher(teacher, cond, w)
    ddim = lambda steps: teachers.ddim(f, noise, steps, schedule=teacher.schedule)  # noqa: E731
    x = {"DDIM-50": ddim(50), "DDIM-1": ddim(1), "DDIM-10": ddim(10)}
    x["student"] = y_theta(net, student, noise, torch.zeros(n, device=device), cond, w)
    k = cfg.preview
    if k:
        rows = torch.cat([teacher.decode(x[key][:k].to(teacher.dtype)) for key in ("DDIM-50", "student")])
        save_image(rows.float(), Path(cfg.out) / "preview.png", nrow=k)
    dist = {key: (x[key] - x["DDIM-50"]).pow(2).mean().item() for key in ("student", "DDIM-1", "DDIM-10")}
    print0(
        f"mean sq. distance to the teacher's DDIM-50 from the same noise (n={n}): student 1-step "
        f"{dist['student']:.4f} | teacher DDIM-1 {dist['DDIM-1']:.4f}, DDIM-10 {dist['DDIM-10']:.4f}"
    )
    print0(f"wrote {Path(cfg.out) / 'student'}" + (f" and {Path(cfg.out) / 'preview.png'}" if k else ""))
    runkit.write_text_atomic(Path(cfg.out) / "distance.json", json.dumps({"n": n, **dist}, indent=2))
    return dist


# --- The command line
def main(argv=None):
    return cli.main_of(command, sys.argv[1:] if argv is None else argv)


def command(argv):
    if argv[:1] == ["sample"]:  # one-step samples of a finished run (pipelines/students.py)
        return students.sample_command("boot", argv[1:])
    cfg, dry_run = configure(argv)
    if not dry_run:
        train(cfg)


if __name__ == "__main__":
    sys.exit(main())
