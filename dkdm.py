"""DKDM: Data-Free Knowledge Distillation for Diffusion Models with Any Architecture.

Xiang, Zhang, Shang, Wu, Yan, Nie (CVPR 2025), arXiv:2409.03550. A frozen teacher diffusion model
is the only data source: a randomly initialised student of any diffusers architecture learns the
teacher's every denoising step (Eq. 19-21), on noisy samples the teacher itself keeps producing
(dynamic iterative distillation, Alg. 1). Read it next to the paper, top to bottom:

    config -> objective Eq. (19)-(21) -> knowledge streams (iterative, shuffled, dynamic; pool
    init by shuffle denoise or staggered chains) -> students (cnn, vit) -> baselines (data-free,
    data) -> training loop -> export / preview / sampling -> main

Commands (each writes runs/dkdm-<teacher>-<student>-<method>/: config.json, metrics.jsonl,
checkpoints/, student/ (a diffusers pipeline directory + generator.json), preview.png):

    python dkdm.py                              # CPU (2 cores): digits teacher, cnn student, dynamic
                                                # distillation, staggered pool init; 10,000 iterations
                                                # (time per iteration and init: README.md, DKDM table)
    python dkdm.py --student vit                # a DiT student of the same CNN teacher (~3x the cnn's
                                                # time per iteration on CPU: 3,000 iterations by default)
    python dkdm.py --method data --iters 4000   # baselines at equal iterations: real digits, or
    python dkdm.py --method data-free           #   a synthetic set the teacher samples (Table 2)
    python dkdm.py --method shuffled --iters 2000   # ablation (Sec. 4.3): iterative | shuffled | dynamic
    python dkdm.py --dry-run                    # the resolved config, pool size and init cost
    python evaluate.py --run runs/dkdm-digits-cnn-dynamic --nfe 50   # FD of the student vs teacher
    python dkdm.py sample runs/dkdm-digits-cnn-dynamic --sampler ancestral --steps 50

    # the paper's settings on GPUs (hub teachers download on first use):
    torchrun --standalone --nproc_per_node=8 dkdm.py --teacher ddpm-cifar10 --batch 128 \\
        --lr 1e-4 --warmup 0 --ema 0.9999 --iters 200000 --pool-init shuffle
    python dkdm.py --teacher ldm-celebahq --rho 4 --batch 32 --lr 1e-4 --ema 0.9999 --iters 200000
    python dkdm.py --teacher path/to/any/diffusers/DDPMPipeline/or/LDMPipeline/dir

Conventions (REFERENCE: the official code, qianlong0502/DKDM): integer steps i = 0..T-1 as in
diffusers, alpha_bar_{-1} = 1; the teacher's x0-hat is clipped per the teacher, the student's is
not; the student's mean is detached inside the KL, so L*vlb trains only the variance head; loss
= L*simple + lam L*vlb per timestep (lam = 1, see `dkdm_loss`). Teachers with a fixed variance
(latent LDMs, google/ddpm-*) give L*simple only and a student with C output channels.
Deviations from the paper, each a flag (README, "Paper vs ours"): the gradient norm is clipped at
1.0 (--clip-grad 0: none, as the paper); the embedded digits teacher keeps the CPU protocol (DDIM-50
scoring, a 100-step synthetic set) where hub teachers get Table 4's samplers.
A pool entry is (x, i, label): the noisy sample x_i waiting for the step i -> i-1. An entry whose
step i = 0 was just taken has become a clean sample; it restarts from fresh noise at i = T-1 right
after that step (the official code keeps it at "t = 0" and resets it when next drawn: the same
stream of training inputs). Under torchrun each process owns a pool of rho T b/world entries
seeded by its rank (together rho T b, as in one process) and trains on b/world of them per step;
gradients are averaged by DDP.
Bad input stops with one line on stderr and exit code 2 before anything is written.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import cli
from cli import UserError

LN2 = math.log(2.0)
METHODS = ("dynamic", "shuffled", "iterative", "data-free", "data")
POOL_INITS = ("auto", "staggered", "shuffle", "noise")
# Synthetic set sizes of the data-free baseline: the teacher's training-set size (Table 4).
TRAIN_SET_SIZE = {"digits": 1797, "gmm": 1797, "ddpm-cifar10": 50000, "ldm-celebahq": 25000}
# The embedded teachers keep the cheaper CPU protocol of every bench row (README, "paper vs ours"): the
# synthetic set by 100 ancestral steps instead of Table 4's T = 1000, students scored with DDIM-50.
EMBEDDED = ("digits", "gmm")


# ---------------------------------------------------------------------------------------------
# Config
# ---------------------------------------------------------------------------------------------
@dataclass
class DKDMConfig:
    teacher: str = field(default="digits", metadata={"help": "registry name (digits, ddpm-cifar10, ldm-celebahq, gmm), hub id or local dir"})
    model_id: str | None = field(default=None, metadata={"help": "override the registry entry's hub id (a mirror or a local copy)"})
    student: str = field(default="cnn", metadata={"help": "cnn (UNet2DModel), vit (DiTTransformer2DModel) or a dir with a diffusers config.json"})
    width: int | None = field(default=None, metadata={"help": "student base width; default 16 (cnn) / 128 (vit) at 8x8, 64 / 384 above"})
    vit_init: str = field(default="adaln-zero", metadata={"choices": ["adaln-zero", "diffusers"], "help": "vit: DiT's "
                          "adaLN-Zero init (the DiT paper), or diffusers' default init of DiTTransformer2DModel"})
    method: str = field(default="dynamic", metadata={"choices": list(METHODS), "help": "knowledge stream, or a baseline"})
    rho: float = field(default=0.4, metadata={"help": "dynamic pool size rho T b (Alg. 1); 0.4 pixel, 4 latent in the paper"})
    pool_init: str = field(default="auto", metadata={"choices": list(POOL_INITS), "help": "auto: staggered (dynamic), shuffle (shuffled), noise (iterative)"})
    chains: int = field(default=512, metadata={"help": "staggered init: teacher chains M run in one batch (well above rho b)"})
    init_batch: int = field(default=512, metadata={"help": "shuffle-denoise init: samples per teacher pass"})
    batch: int = field(default=64, metadata={"help": "global batch b (divided over torchrun processes)"})
    iters: int | None = field(default=None, metadata={"help": "training iterations; default 10,000 (cnn) or 3,000 "
                                                                "(vit, ~3x the cnn's cost per iteration on CPU)"})
    minutes: float | None = field(default=None, metadata={"help": "also stop after this many minutes of training"})
    lr: float = field(default=1e-3, metadata={"help": "AdamW learning rate (constant after warm-up)"})
    warmup: int = field(default=200, metadata={"help": "linear lr warm-up iterations"})
    ema: float = field(default=0.998, metadata={"help": "EMA decay of the exported student"})
    clip_grad: float = field(default=1.0, metadata={"help": "clip the gradient norm at this value; 0 = no clipping "
                                                            "(the paper and the official trainer: none; see README)"})
    lam: float = field(default=1.0, metadata={"help": "weight lambda of L*vlb (Eq. 19), per timestep"})
    p_uncond: float = field(default=0.0, metadata={"help": "fraction of samples with the null label (student learns CFG's unconditional model)"})
    synth_sampler: str = field(default="auto", metadata={"choices": ["auto", "ancestral", "ddim"], "help": "data-free baseline's "
                                                         "sampler; auto: Table 4's IDDPM (pixel teachers) or DDIM (latent)"})
    synth_steps: int | None = field(default=None, metadata={"help": "data-free baseline: steps per synthetic sample; default "
                                                                   "Table 4's T = 1000 (pixel) / 100 (latent); 100 for digits, gmm"})
    synth_n: int | None = field(default=None, metadata={"help": "data-free baseline: synthetic set size; default the training-set size"})
    seed: int = field(default=0, metadata={"help": "seed of every random draw (process r uses seed + 1000003 r)"})
    half: bool = field(default=False, metadata={"help": "run the frozen teacher in float16 (GPU only; the same in boot.py)"})
    precision: str = field(default="auto", metadata={"choices": list(cli.PRECISIONS), "help": "student: auto (bf16 autocast + TF32 matmuls on a GPU, float32 on CPU), bf16, fp32"})
    grad_checkpointing: bool = field(default=False, metadata={"help": "recompute the student's activations in backward (less memory, more time)"})
    out: str | None = field(default=None, metadata={"help": "run dir; default runs/dkdm-<teacher>-<student>-<method>"})
    log_every: int = field(default=100, metadata={"help": "metrics.jsonl / progress interval"})
    ckpt_every: int = field(default=1000, metadata={"help": "checkpoint interval (a rerun resumes from the latest)"})
    keep: int = field(default=1, metadata={"help": "checkpoints kept: the last N (checkpoints/step-*.pt; latest.pt is the newest)"})
    export_every: int = field(default=0, metadata={"help": "also export the EMA student + preview.png every K iterations while training (0: at the end)"})
    sample: str | None = field(default=None, metadata={"help": "sampling entry point: a finished run dir to sample from (no training)"})
    sampler: str = field(default="ancestral", metadata={"choices": ["ancestral", "ddim"], "help": "--sample: IDDPM ancestral or DDIM"})
    steps: int = field(default=50, metadata={"help": "--sample: sampler steps"})
    n: int = field(default=64, metadata={"help": "--sample: number of images (seeds 0..n-1, label seed mod classes)"})
    device: str | None = field(default=None, metadata={"help": "--sample: cuda, cuda:K or cpu (default: cuda when there is a GPU)"})


RESUMABLE = ("iters", "minutes", "log_every", "ckpt_every", "precision", "grad_checkpointing", "keep", "export_every")
SAMPLING_FIELDS = ("sample", "sampler", "steps", "n", "device")


def parser():
    """The command line: DKDMConfig's flags; `dkdm.py sample RUN ...` is `--sample RUN ...`."""
    return cli.add_usage(cli.parser_from_dataclass(DKDMConfig, __doc__),
                         "dkdm.py sample RUN [--sampler ancestral|ddim] [--steps N] [--n N]")


if __name__ == "__main__" and cli.answers_alone(sys.argv[1:]):  # --help: before torch is imported
    parser().parse_args(sys.argv[1:])

import torch  # noqa: E402

import teachers  # noqa: E402
from teachers import print0  # noqa: E402


# ---------------------------------------------------------------------------------------------
# --- DKDM Eq. (20): L*simple = || eps_T(x_t, t) - eps_S(x_t, t) ||^2, mean over C x H x W
# ---------------------------------------------------------------------------------------------
def l_simple(eps_T, eps_S):
    return ((eps_T - eps_S) ** 2).mean(dim=tuple(range(1, eps_S.dim())))


# ---------------------------------------------------------------------------------------------
# --- DKDM Eq. (21) with Eq. (12): L*vlb = KL(p_T(x_{t-1}|x_t) || p_S(x_{t-1}|x_t)) in bits/dim
# ---------------------------------------------------------------------------------------------
def student_mean_logvar(sch, x_t, i, eps_S, v_S):
    """p_S(x_{t-1} | x_t): mean from the student's eps (detached: L*simple trains it, as in IDDPM;
    x0-hat not clipped, as in the official code), log-variance from its v by Eq. (12)."""
    ab = teachers.bcast(sch.alpha_bar(i).to(x_t), x_t)
    x0_S = (x_t - (1 - ab).sqrt() * eps_S.detach()) / ab.sqrt()
    return teachers.gaussian_step(sch, x_t, x0_S, i, i - 1, v_S, "learned_range")


def l_vlb(mean_T, logvar_T, mean_S, logvar_S):
    """KL between the two Gaussians, mean over dims, / ln 2 (no decoder NLL at t = 0)."""
    kl = teachers.normal_kl(mean_T, logvar_T, mean_S, logvar_S)
    return kl.mean(dim=tuple(range(1, kl.dim()))) / LN2


# ---------------------------------------------------------------------------------------------
# --- DKDM Eq. (19): L*DKDM = L*simple + lambda L*vlb
# ---------------------------------------------------------------------------------------------
def dkdm_loss(sch, x_t, i, out_S, target, lam: float, learned_variance: bool):
    """(loss, mse, vb), each per sample. target = (mean_T, logvar_T, eps_T) of the teacher's step.

    lam = 1 on a per-timestep KL is IDDPM's lambda = 0.001 on the bound summed over T = 1000 steps
    (L_vlb = sum_t L_t, sampled as T E_t[L_t]), the official code's convention. A fixed-variance
    teacher has no variance to distil: L*simple only.
    """
    mean_T, logvar_T, eps_T = target
    C = x_t.shape[1]
    mse = l_simple(eps_T, out_S[:, :C])
    if not learned_variance:
        return mse, mse, torch.zeros_like(mse)
    mean_S, logvar_S = student_mean_logvar(sch, x_t, i, out_S[:, :C], out_S[:, C:])
    vb = l_vlb(mean_T, logvar_T, mean_S, logvar_S)
    return mse + lam * vb, mse, vb


# ---------------------------------------------------------------------------------------------
# --- DKDM Sec. 3.3, Alg. 1: knowledge pool B+ and one teacher step per drawn sample
# ---------------------------------------------------------------------------------------------
def fresh_samples(teacher, n, g, p_uncond=0.0):
    """n pure noises x_{T-1} ~ N(0, I) and their labels (uniform; the null label w.p. p_uncond)."""
    x = torch.randn((n, *teacher.sample_shape), generator=g).to(teacher.device)
    if not teacher.num_classes:
        return x, None
    labels = torch.randint(0, teacher.num_classes, (n,), generator=g)
    labels = torch.where(torch.rand(n, generator=g) < p_uncond, teacher.num_classes, labels)
    return x, labels.to(teacher.device)


def as_cond(labels):
    return None if labels is None else {"class_labels": labels}


@torch.no_grad()
def teacher_step(teacher, x, i, labels, w, g):
    """g_T(x_t, t) (Sec. 3.2): one ancestral step of the teacher with its own variance.

    Returns the distillation target (mean, logvar, eps) at (x_t, t) and x_{t-1} ~ p_T(. | x_t):
    one network forward for both.
    """
    mean, logvar, eps = teacher.p_mean_logvar(x, i, as_cond(labels), w)
    z = torch.randn(x.shape, generator=g).to(x)
    return (mean, logvar, eps), mean + (0.5 * logvar).exp() * z


class Pool:
    """B+: noisy samples x_i (float32), their integer steps i and labels, kept on the device.

    `g` (a CPU torch.Generator) drives every random draw of the stream; its state is saved with
    the pool, so a resumed run continues the same knowledge stream.
    """

    def __init__(self, x, i, labels, g):
        self.x, self.i, self.labels, self.g = x.float(), i.long(), labels, g

    def __len__(self):
        return len(self.i)

    def draw(self, b):
        """b indices without replacement (Alg. 1 line 4)."""
        return torch.randperm(len(self), generator=self.g)[:b].to(self.x.device)

    def advance(self, idx, x_prev, teacher, p_uncond):
        """Write x_{t-1} back; entries whose step i = 0 was taken restart from noise at T-1."""
        i = self.i[idx]
        done = i == 0
        new_x, new_i = x_prev.float(), i - 1
        n_done = int(done.sum())
        if n_done:
            x0, labels = fresh_samples(teacher, n_done, self.g, p_uncond)
            new_x[done], new_i[done] = x0, teacher.schedule.T - 1
            if labels is not None:
                self.labels[idx[done]] = labels
        self.x[idx], self.i[idx] = new_x, new_i

    def state_dict(self):
        return {"x": self.x, "i": self.i, "labels": self.labels, "g": self.g.get_state()}

    def load_state_dict(self, s):
        self.x, self.i, self.labels = s["x"].to(self.x.device), s["i"].to(self.x.device), s["labels"]
        if self.labels is not None:
            self.labels = self.labels.to(self.x.device)
        self.g.set_state(s["g"].cpu())  # a CPU generator's state, whatever the map_location


def knowledge_step(teacher, pool: Pool, b, w=None, p_uncond=0.0):
    """Draw b entries, one teacher forward on them: (x_t, i, labels, target); x_{t-1} written back.

    The student trains on the pre-step x_t. Iterative distillation is this with a pool of b
    entries in lockstep, shuffled iterative with a pool of b staggered entries (Sec. 3.3).
    """
    idx = pool.draw(b)
    x_t, i = pool.x[idx], pool.i[idx]
    labels = None if pool.labels is None else pool.labels[idx]
    target, x_prev = teacher_step(teacher, x_t, i, labels, w, pool.g)
    pool.advance(idx, x_prev, teacher, p_uncond)
    return x_t, i, labels, target


# ---------------------------------------------------------------------------------------------
# --- Pool initialisation: noise (iterative), shuffle denoise (Fig. 3), staggered chains
# ---------------------------------------------------------------------------------------------
def init_noise(teacher, n, g, p_uncond=0.0):
    """Iterative distillation's start: n noises, all at i = T-1 (they then step in lockstep)."""
    x, labels = fresh_samples(teacher, n, g, p_uncond)
    return Pool(x, torch.full((n,), teacher.schedule.T - 1, device=x.device), labels, g)


def shuffle_denoise_cost(T, n):
    """Expected sample evaluations of shuffle denoise: n (T - 1) / 2 (i_end uniform on 0..T-1)."""
    return n * (T - 1) / 2


@torch.no_grad()
def init_shuffle(teacher, n, g, w=None, p_uncond=0.0, batch=512, progress=False):
    """Shuffle denoise (the paper's init): every entry starts from noise at T-1 and the teacher
    denoises it down to its own i_end ~ U{0..T-1}. About n T / 2 sample evaluations."""
    T = teacher.schedule.T
    x, labels = fresh_samples(teacher, n, g, p_uncond)
    i_end = torch.randint(0, T, (n,), generator=g).to(x.device)
    from tqdm import tqdm

    for s in tqdm(range(T - 1, 0, -1), desc="shuffle denoise", disable=not progress, leave=False):
        active = (i_end < s).nonzero().flatten()  # entries at step s that go on to s - 1
        if len(active) == 0:
            break
        for chunk in active.split(batch):
            lab = None if labels is None else labels[chunk]
            _, x[chunk] = teacher_step(teacher, x[chunk], torch.full_like(chunk, s), lab, w, g)
    return Pool(x, i_end, labels, g)


def staggered_counts(n, T):
    """How many pool entries sit at each step i (sums to n, differs by at most 1 across i)."""
    edges = torch.div(torch.arange(T + 1) * n, T, rounding_mode="floor")
    return edges[1:] - edges[:-1]


@torch.no_grad()
def init_staggered(teacher, n, chains, g, w=None, p_uncond=0.0, progress=False, return_chains=False):
    """M teacher chains run from T-1 to 0 in one batch; at every step i, about n/T of their
    current states are copied into the pool at step i. T-1 batched passes, M (T-1) evaluations.

    Chains are taken in random-permutation cycles, so the pool holds min(M, n) distinct chains at
    least. M must be well above n/T = rho b: with M = rho b every chain is kept at every step
    and the pool holds only rho b trajectories, which advance too slowly to ever refresh.
    """
    T = teacher.schedule.T
    counts = staggered_counts(n, T)
    if int(counts.max()) > chains:
        raise UserError(f"--chains {chains} is below the {int(counts.max())} pool entries per step (rho b)")
    xc, lc = fresh_samples(teacher, chains, g, p_uncond)
    x = torch.empty((n, *teacher.sample_shape), device=xc.device)
    i = torch.empty(n, dtype=torch.long, device=xc.device)
    labels = None if lc is None else torch.empty(n, dtype=torch.long, device=xc.device)
    chain_of = torch.empty(n, dtype=torch.long)
    queue, slot = torch.empty(0, dtype=torch.long), 0
    from tqdm import tqdm

    for s in tqdm(range(T - 1, -1, -1), desc="staggered init", disable=not progress, leave=False):
        k = int(counts[s])
        if len(queue) < k:  # refill: this cycle's leftovers first, then the other chains shuffled
            perm = torch.randperm(chains, generator=g)
            queue = torch.cat([queue, perm[~torch.isin(perm, queue)]])
        take, queue = queue[:k], queue[k:]
        x[slot:slot + k], i[slot:slot + k], chain_of[slot:slot + k] = xc[take.to(xc.device)], s, take
        if labels is not None:
            labels[slot:slot + k] = lc[take.to(xc.device)]
        slot += k
        if s > 0:
            _, xc = teacher_step(teacher, xc, torch.full((chains,), s, device=xc.device), lc, w, g)
    pool = Pool(x, i, labels, g)
    return (pool, chain_of) if return_chains else pool


def pool_size(cfg, T, b_local):
    return max(b_local, round(cfg.rho * T * b_local)) if cfg.method == "dynamic" else b_local


def resolved_init(cfg):
    if cfg.pool_init != "auto":
        return cfg.pool_init
    return {"dynamic": "staggered", "shuffled": "shuffle", "iterative": "noise"}.get(cfg.method)


def init_cost(cfg, T, n):
    """(teacher sample evaluations, batched passes) of the pool initialisation."""
    how = resolved_init(cfg)
    if how == "staggered":
        return cfg.chains * (T - 1), T - 1
    if how == "shuffle":
        evals = shuffle_denoise_cost(T, n)
        return evals, max(T - 1, math.ceil(evals / cfg.init_batch))
    return 0, 0


def make_pool(cfg, teacher, n, g, w, progress):
    how = resolved_init(cfg)
    if how == "staggered":
        return init_staggered(teacher, n, cfg.chains, g, w, cfg.p_uncond, progress)
    if how == "shuffle":
        return init_shuffle(teacher, n, g, w, cfg.p_uncond, cfg.init_batch, progress)
    return init_noise(teacher, n, g, cfg.p_uncond)


# ---------------------------------------------------------------------------------------------
# Students of any architecture (Sec. 4.2, Table 5): a smaller CNN, or a DiT-style transformer
# ---------------------------------------------------------------------------------------------
def out_channels(teacher):
    """eps (C channels), plus C variance channels (v of Eq. 12) when the teacher learned them."""
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
    return dict(sample_size=H, in_channels=C, out_channels=out_channels(teacher),
                block_out_channels=[w * m for m in mult], layers_per_block=1 if H <= 8 else 2,
                down_block_types=down, up_block_types=up, norm_num_groups=8 if w <= 32 else 32,
                attention_head_dim=8, num_class_embeds=label_slots(teacher))


def vit_config(teacher, width=None):
    """A DiTTransformer2DModel (adaLN-zero, patch 2): 4 layers of width 128 at 8x8, 12 of 384 above."""
    C, H, _ = teacher.sample_shape
    w = width or (128 if H <= 8 else 384)
    return dict(sample_size=H, in_channels=C, out_channels=out_channels(teacher), patch_size=2,
                num_layers=4 if H <= 8 else 12, num_attention_heads=4, attention_head_dim=w // 4,
                num_embeds_ada_norm=label_slots(teacher) or 1)


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


def build_student(cfg, teacher):
    """A randomly initialised student: cnn, vit, or any diffusers denoiser config in a directory."""
    import diffusers

    if cfg.student == "cnn":
        model = diffusers.UNet2DModel(**cnn_config(teacher, cfg.width))
    elif cfg.student == "vit":
        model = diffusers.DiTTransformer2DModel(**vit_config(teacher, cfg.width))
        if cfg.vit_init == "adaln-zero":
            adaln_zero_(model)
    else:
        conf = json.loads((Path(cfg.student) / "config.json").read_text())
        name = conf.get("_class_name", "")
        if name not in ("UNet2DModel", "UNet2DConditionModel", "DiTTransformer2DModel"):
            raise UserError(f"student '{cfg.student}' is a {name or 'config without _class_name'}; "
                            f"supported: UNet2DModel, UNet2DConditionModel, DiTTransformer2DModel")
        model = getattr(diffusers, name).from_config(conf)
    check_student(model, teacher, cfg.student)
    for m in model.modules():  # DiT drops labels at random in train mode, to an index the teacher
        if type(m).__name__ == "LabelEmbedding":  # never saw; the null label is distilled instead
            m.dropout_prob = 0.0  # (--p-uncond), and the stream stays a function of the seed
    return model


def check_student(model, teacher, what):
    """One-line errors when the student cannot stand in for the teacher."""
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


# ---------------------------------------------------------------------------------------------
# --- Baselines (Sec. 4.1): data-free (a synthetic set, Fig. 2b) and data-based (Fig. 2a)
# ---------------------------------------------------------------------------------------------
def synth_plan(cfg, teacher):
    """(sampler, steps) of the synthetic set. Table 4: IDDPM with all T steps for pixel teachers,
    DDIM-100 for latent ones; the embedded teachers: ancestral 100 (see EMBEDDED)."""
    sampler = cfg.synth_sampler if cfg.synth_sampler != "auto" else "ddim" if teacher.latent else "ancestral"
    T = teacher.schedule.T
    steps = cfg.synth_steps or (100 if teacher.latent or cfg.teacher in EMBEDDED else T)
    return sampler, min(steps, T)


def eval_plan(cfg, teacher):
    """(sampler, steps) the exported student is scored with: IDDPM-50 (pixel) or DDIM-200 (latent), as
    the paper evaluates (Sec. 4.1); DDIM-50 for the embedded teachers (see EMBEDDED)."""
    T = teacher.schedule.T
    if cfg.teacher in EMBEDDED:
        return "ddim", min(50, T)
    return ("ddim", min(200, T)) if teacher.latent else ("ancestral", min(50, T))


@torch.no_grad()
def synthetic_dataset(teacher, n, steps, g, w=None, batch=256, sampler="ancestral"):
    """The data-free baseline's D': n teacher samples (IDDPM ancestral or DDIM, `steps` steps, Table 4)."""
    from tqdm import tqdm

    xs, ls = [], []
    for k in tqdm(range(0, n, batch), desc="synthetic set", unit="batch", leave=False):
        noise, labels = fresh_samples(teacher, min(batch, n - k), g)
        if sampler == "ddim":
            xs.append(teachers.ddim(teacher, noise, steps, as_cond(labels), w).float())
        else:
            xs.append(teachers.ancestral(teacher, noise, steps, as_cond(labels), w, generator=g).float())
        ls.append(labels)
    return torch.cat(xs), (None if ls[0] is None else torch.cat(ls))


class DataStream:
    """Batches of (x0, labels) drawn with replacement from a fixed set (real or synthetic)."""

    def __init__(self, x0, labels, g, num_classes=None, p_uncond=0.0):
        self.x0, self.labels, self.g, self.K, self.p_uncond = x0, labels, g, num_classes, p_uncond

    def draw(self, b):
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


def data_stream(cfg, teacher, run_path, g, rank, w):
    """Real digits (`data`), or the teacher's synthetic set (`data-free`, made once, kept in the run)."""
    if cfg.method == "data":
        x, y = teachers.load_digits_tensor()
        return DataStream(x.to(teacher.device), y.to(teacher.device), g, teacher.num_classes, cfg.p_uncond)
    f = Path(run_path) / "synthetic.pt"
    if rank == 0 and not f.is_file():
        n = synth_n(cfg)
        sampler, steps = synth_plan(cfg, teacher)
        print0(f"data-free baseline: sampling {n} images with the teacher ({sampler}, {steps} steps)")
        gs = torch.Generator().manual_seed(cfg.seed + 7)
        x, y = synthetic_dataset(teacher, n, steps, gs, w, sampler=sampler)
        teachers.save_checkpoint(f, {"x": x.cpu(), "labels": None if y is None else y.cpu()})
    barrier()
    s = teachers.load_checkpoint(f)
    y = None if s["labels"] is None else s["labels"].to(teacher.device)
    return DataStream(s["x"].to(teacher.device), y, g, teacher.num_classes, cfg.p_uncond)


def synth_n(cfg):
    return cfg.synth_n or TRAIN_SET_SIZE.get(cfg.teacher, 10000)


# ---------------------------------------------------------------------------------------------
# Training loop (Alg. 1): one knowledge step, one student step, EMA; checkpoints with the pool
# ---------------------------------------------------------------------------------------------
def barrier(site="barrier"):
    teachers.barrier(site)


def stream_file(run, rank, step):
    return run.path / "checkpoints" / f"stream-rank{rank}-step{step}.pt"


def save_all(run, step, raw, ema, opt, stream, rank, window=None):
    """Per-process pool (+ its generator) first, then the model checkpoint naming that step (with the
    open metrics window: sums and count, so a resumed run's next record equals the uninterrupted one's)."""
    teachers.save_checkpoint(stream_file(run, rank, step), stream.state_dict())
    barrier()
    run.save({"model": raw.state_dict(), "ema": ema.state_dict(), "opt": opt.state_dict(), "step": step,
              "window": window})
    barrier()
    keep = {stream_file(run, rank, s) for s in [*run.kept_steps(), step]}  # each kept checkpoint's pool
    for f in run.path.glob(f"checkpoints/stream-rank{rank}-step*.pt"):
        if f not in keep:
            f.unlink(missing_ok=True)


def student_step(cfg, teacher, model, stream, b, w):
    """(loss, mse, vb, teacher seconds) of one batch: Eq. (19) on the stream, or Eq. (13) on data."""
    sch = teacher.schedule
    if isinstance(stream, DataStream):
        x0, labels = stream.draw(b)
        with teachers.student_autocast(cfg.precision, x0.device):
            loss = teachers.iddpm_loss(model, x0, as_cond(labels), sch, stream.g)
        return loss, loss.detach(), torch.zeros(()), 0.0
    start = time.perf_counter()
    x_t, i, labels, target = knowledge_step(teacher, stream, b, w, cfg.p_uncond)
    sync(x_t.device)
    t_teacher = time.perf_counter() - start
    with teachers.student_autocast(cfg.precision, x_t.device):  # bf16 on a GPU by default
        out = teachers.call_net(model, x_t, i.to(x_t.dtype), as_cond(labels)).float()
    loss, mse, vb = dkdm_loss(sch, x_t, i, out, target, cfg.lam, teacher.learned_variance)
    return loss.mean(), mse.mean().detach(), vb.mean().detach(), t_teacher


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def stop_now(cfg, step, started, stop=None):
    """Iteration or minute budget reached, or a signal (`stop`: SIGINT / SIGTERM). The step count is
    the same on every process; the clock and the signal's arrival are not, so rank 0's reading
    decides for all (teachers.rank0_decides builds the flags on the device)."""
    minutes_up = cfg.minutes is not None and time.time() - started > 60 * cfg.minutes
    if step >= cfg.iters:
        return True
    flags = teachers.rank0_decides(minutes=minutes_up, halt=stop is not None and stop.requested)
    if flags["halt"] and stop is not None:
        stop.halted = True  # main sees the same decision on every process
    return flags["minutes"] or flags["halt"]


def train(cfg, teacher, student, run, rank, world, device, stop=None):
    from torch.nn.parallel import DistributedDataParallel as DDP
    from tqdm import tqdm

    g = torch.Generator().manual_seed(cfg.seed + 1000003 * rank)
    b, w = cfg.batch // world, teacher.default_guidance
    raw = student.to(device).train()
    teachers.enable_checkpointing(raw, cfg.grad_checkpointing)
    teachers.setup_precision(cfg.precision, device)
    model = DDP(raw) if world > 1 else raw
    ema = teachers.EMA(raw, cfg.ema)
    opt = torch.optim.AdamW(raw.parameters(), lr=cfg.lr, weight_decay=0.0)
    state, step = run.load(), 0
    run.truncate_metrics(None if state is None else state["step"])  # records past the checkpoint go
    if cfg.method in ("data", "data-free"):
        stream = data_stream(cfg, teacher, run.path, g, rank, w)
    else:
        n = pool_size(cfg, teacher.schedule.T, b)
        if state is None:
            evals, passes = init_cost(cfg, teacher.schedule.T, n)
            print0(f"pool: {n} entries per process, init '{resolved_init(cfg)}': {evals:,.0f} teacher sample "
                   f"evaluations in {passes:,} batched passes")
            start = time.time()
            stream = make_pool(cfg, teacher, n, g, w, progress=rank == 0)
            print0(f"pool initialised in {time.time() - start:.1f} s")
            run.log({"step": 0, "pool_init": resolved_init(cfg), "init_seconds": time.time() - start,
                     "init_evals": evals, "pool_size": n * world})
        else:
            stream = init_noise(teacher, n, g)  # replaced by the saved pool just below
    if state is not None:
        raw.load_state_dict(state["model"])
        ema.load_state_dict(state["ema"])
        opt.load_state_dict(state["opt"])
        step = state["step"]
        saved = getattr(run, "stream_state", None) or teachers.read_checkpoint(stream_file(run, rank, step), "knowledge-stream checkpoint")
        stream.load_state_dict(saved)
        print0(f"resumed from {run.ckpt} at step {step}")
    else:
        save_all(run, 0, raw, ema, opt, stream, rank)

    started, acc, since = time.time(), [0.0] * 6, 0  # loss, mse, vb, teacher s, student s, other s
    if state is not None and state.get("window"):
        acc, since = list(state["window"]["acc"]), int(state["window"]["since"])
    bar = tqdm(total=cfg.iters, initial=step, disable=rank != 0, desc=f"dkdm {cfg.method}")
    while not stop_now(cfg, step, started, stop):
        t0 = time.perf_counter()
        for group in opt.param_groups:
            group["lr"] = cfg.lr * min(1.0, (step + 1) / max(1, cfg.warmup))
        t1 = time.perf_counter()
        loss, mse, vb, t_teacher = student_step(cfg, teacher, model, stream, b, w)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        run.check_update(loss, raw.parameters(), step + 1)  # loss and gradient norm, before the step
        if cfg.clip_grad > 0:
            torch.nn.utils.clip_grad_norm_(raw.parameters(), cfg.clip_grad)
        opt.step()
        ema.update(raw)
        sync(device)
        t2 = time.perf_counter()
        step, since = step + 1, since + 1
        losses = (loss.item(), mse.item(), vb.item())
        bar.update(1)
        t_student, t_other = t2 - t1 - t_teacher, (t1 - t0) + (time.perf_counter() - t2)
        acc = [a + v for a, v in zip(acc, (*losses, t_teacher, t_student, t_other))]
        if step % cfg.log_every == 0 or step == cfg.iters:
            log_progress(cfg, run, bar, step, acc, stream, device, teacher.schedule.T, since)
            acc, since = [0.0] * 6, 0
        elif rank == 0:  # losses and the time split from the first iteration (this process's window)
            bar.set_postfix_str(progress_text(*[a / since for a in acc]), refresh=False)
        if step % cfg.ckpt_every == 0:
            save_all(run, step, raw, ema, opt, stream, rank, {"acc": acc, "since": since})
        if cfg.export_every and step % cfg.export_every == 0 and step < cfg.iters and rank == 0:
            write_preview(teacher, export_student(cfg, teacher, raw, ema, run.path), run.path / "preview.png")
    bar.close()
    save_all(run, step, raw, ema, opt, stream, rank, {"acc": acc, "since": since})
    return raw, ema, step


def log_progress(cfg, run, bar, step, acc, stream, device, T, k):
    """metrics.jsonl + progress bar: losses (averaged over processes) and the time split per iteration:
    teacher = knowledge step (teacher forward + pool draw and write-back), student = forward,
    backward, AdamW and EMA, other = the rest of the loop."""
    loss, mse, vb, t_teacher, t_student, t_other = teachers.mean_over_ranks([a / k for a in acc], device)
    rec = {"step": step, "loss": loss, "mse": mse, "vb": vb, "ms_iter": 1e3 * (t_teacher + t_student + t_other),
           "ms_teacher": 1e3 * t_teacher, "ms_student": 1e3 * t_student, "ms_other": 1e3 * t_other}
    if isinstance(stream, Pool):  # is the pool's t-histogram still flat? (std of 10 bins / mean)
        hist = torch.histc(stream.i.float().cpu(), bins=10, min=0, max=T - 1)
        rec["pool_t_spread"] = float(hist.std() / hist.mean())
    run.log(rec)
    bar.set_postfix_str(progress_text(loss, mse, vb, t_teacher, t_student, t_other))


def progress_text(loss, mse, vb, t_teacher, t_student, t_other):
    return (f"loss {loss:.4f} mse {mse:.4f} vb {vb:.4f} | ms/it teacher {1e3 * t_teacher:.0f} "
            f"student {1e3 * t_student:.0f} other {1e3 * t_other:.0f}")


# ---------------------------------------------------------------------------------------------
# Export: a diffusers pipeline directory + generator.json (evaluate.py reads nothing else)
# ---------------------------------------------------------------------------------------------
def teacher_source(cfg):
    """Where the teacher's pipeline lives (for its scheduler config); None for the analytic gmm."""
    if cfg.model_id:
        return cfg.model_id
    if cfg.teacher in teachers.REGISTRY:
        return teachers.REGISTRY[cfg.teacher].default_id
    return cfg.teacher


def student_scheduler(cfg, teacher):
    """The teacher's scheduler config, with the student's variance type, eps prediction and clip."""
    from diffusers import DDPMScheduler

    over = dict(variance_type="learned_range" if teacher.learned_variance else teacher.variance_type,
                prediction_type="epsilon", clip_sample=teacher.clip == "static", thresholding=False)
    where = teacher_source(cfg)
    if where is not None:
        _, conf = teachers._scheduler_facts(where)
        return DDPMScheduler.from_config({k: v for k, v in conf.items() if not k.startswith("_")}, **over)
    ab = teacher.schedule.alphas_cumprod
    betas = 1 - ab / torch.cat([torch.ones(1, dtype=ab.dtype), ab[:-1]])
    return DDPMScheduler(num_train_timesteps=len(ab), trained_betas=betas.tolist(), **over)


def export_student(cfg, teacher, raw, ema, run_path):
    """run/student/: unet/ (EMA weights), scheduler/, model_index.json, generator.json; atomic."""
    import copy
    import shutil

    model = copy.deepcopy(raw).cpu()
    ema.copy_to(model)
    final, tmp = Path(run_path) / "student", Path(run_path) / f".student.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    cls = type(model).__name__
    teachers.export_pipeline(student_pipeline(cfg, teacher, model), tmp)
    name = cfg.teacher if cfg.teacher in teachers.REGISTRY else str(Path(cfg.teacher).resolve())
    (tmp / "generator.json").write_text(json.dumps({
        "method": "dkdm", "teacher": name, "model_id": teachers.local_path(cfg.model_id), "steps": eval_plan(cfg, teacher)[1],
        "sampler": eval_plan(cfg, teacher)[0],
        "sample_shape": list(teacher.sample_shape), "num_classes": teacher.num_classes,
        "latent": teacher.latent, "default_w": teacher.default_guidance, "class_name": cls,
        "training": cfg.method}, indent=2))
    teachers.replace_dir(tmp, final)  # never deletes the old export before the new one is whole
    return final


def student_pipeline(cfg, teacher, model):
    """The exported student: a TrailingDDIMPipeline (pipelines/pipeline_ddim.py), the teacher's
    DDIM as a diffusers pipeline, with the teacher's latent decoder when it has one."""
    from pipelines.pipeline_ddim import TrailingDDIMPipeline

    sched = student_scheduler(cfg, teacher)
    if teacher.latent:  # the factor the teacher's latents use, written explicitly into the export
        teacher.vae.register_to_config(scaling_factor=teachers.latent_scale(teacher.vae))
    return TrailingDDIMPipeline(unet=model, scheduler=teachers.ddim_scheduler(dict(sched.config)),
                                vae=teacher.vae if teacher.latent else None, num_classes=teacher.num_classes,
                                variance_type=sched.config.variance_type, default_guidance=teacher.default_guidance)


@torch.no_grad()
def write_preview(teacher, student_dir, path, n=16, steps=50):
    """preview.png: teacher (top row) and student (bottom row), DDIM-50 from the same noise."""
    from torchvision.utils import save_image

    student = teachers.load_teacher(str(student_dir), device=teacher.device)
    seeds = list(range(n))
    noise = teachers.seeded_noise(seeds, teacher.sample_shape, teacher.device)
    cond = teacher.label_cond(torch.tensor([s % teacher.num_classes for s in seeds])) if teacher.num_classes else None
    w = teacher.default_guidance
    rows = [teacher.decode(teachers.ddim(m, noise, steps, cond, w)) for m in (teacher, student)]
    save_image(torch.cat(rows).float().cpu(), path, nrow=n)


# ---------------------------------------------------------------------------------------------
# Sampling entry point for a trained student: IDDPM ancestral or DDIM, N steps
# ---------------------------------------------------------------------------------------------
@torch.no_grad()
def sample_run(cfg):
    from torchvision.utils import save_image

    device = teachers.sample_device(cfg.device)
    gen = teachers.load_generator(cfg.sample, device)
    student = gen.model
    teachers.trailing_steps(student.schedule.T, cfg.steps)
    seeds = list(range(cfg.n))
    noise = teachers.seeded_noise(seeds, student.sample_shape, student.device)
    cond = student.label_cond(torch.tensor([s % student.num_classes for s in seeds])) if student.num_classes else None
    start = time.time()
    if cfg.sampler == "ancestral":
        x = teachers.ancestral(student, noise, cfg.steps, cond, gen.default_guidance, generator=torch.Generator().manual_seed(0))
    else:  # the exported pipeline's DDIM, as a diffusers user runs it
        x = gen.pipe.denoise(noise, None if cond is None else cond["class_labels"], gen.default_guidance, cfg.steps)
    out = Path(cfg.sample) / f"samples-{cfg.sampler}{cfg.steps}.png"
    save_image(gen.decode(x).float().cpu(), out, nrow=int(math.sqrt(cfg.n)) or 1)
    print(f"{cfg.n} {cfg.sampler}-{cfg.steps} samples in {time.time() - start:.1f} s -> {out}")
    return 0


# ---------------------------------------------------------------------------------------------
# main: every check before anything is written
# ---------------------------------------------------------------------------------------------
def check_config(cfg):
    """Errors that need no model."""
    teachers.check_finite_fields(cfg)
    checks = [(cfg.rho > 0, "--rho must be positive"), (cfg.lam >= 0, "--lam must be non-negative"),
              (cfg.batch >= 1, "--batch must be at least 1"), (cfg.chains >= 1, "--chains must be at least 1"),
              (cfg.init_batch >= 1, "--init-batch must be at least 1"), (cfg.iters >= 1, "--iters must be at least 1"),
              (cfg.minutes is None or cfg.minutes > 0, "--minutes must be positive"), (cfg.lr > 0, "--lr must be positive"),
              (cfg.warmup >= 0, "--warmup must be non-negative"), (cfg.clip_grad >= 0, "--clip-grad must be non-negative"), (0 <= cfg.ema < 1, "--ema must lie in [0, 1)"),
              (0 <= cfg.p_uncond < 1, "--p-uncond must lie in [0, 1)"), (cfg.synth_steps is None or cfg.synth_steps >= 1, "--synth-steps must be at least 1"),
              (cfg.synth_n is None or cfg.synth_n >= 1, "--synth-n must be at least 1"),
              (cfg.log_every >= 1 and cfg.ckpt_every >= 1, "--log-every and --ckpt-every must be at least 1"),
              (cfg.keep >= 1 and cfg.export_every >= 0, "--keep must be at least 1 and --export-every non-negative"),
              (cfg.steps >= 1 and cfg.n >= 1, "--steps and --n must be at least 1"),
              (not cfg.half or torch.cuda.is_available(), "--half needs a GPU (float16 teachers are slow and inexact on CPU)"),
              (cfg.method != "iterative" or cfg.pool_init in ("auto", "noise"),
               "--method iterative starts every sample at T-1 (--pool-init auto or noise)")]
    for ok, message in checks:
        if not ok:
            raise UserError(message)
    if cfg.width is not None and cfg.width < 1:
        raise UserError("--width must be at least 1")
    if cfg.student not in ("cnn", "vit") and not (Path(cfg.student) / "config.json").is_file():
        raise UserError(f"unknown student '{cfg.student}' (cnn, vit, or a directory with a diffusers config.json)")
    if cfg.student not in ("cnn", "vit"):
        teachers.read_json(Path(cfg.student) / "config.json", "student config")
    if cfg.sample and not (Path(cfg.sample) / "student" / "generator.json").is_file():
        raise UserError(f"--sample: '{cfg.sample}' holds no student/generator.json (not a finished dkdm run)")
    if cfg.sample:
        info = teachers.read_json(Path(cfg.sample) / "student" / "generator.json", "student description")
        if info.get("method") != "dkdm":
            raise UserError(f"--sample: '{cfg.sample}' is not a dkdm run (its student is a {info.get('method')} student)")
        teachers.check_model_dir(Path(cfg.sample) / "student", "student")
        teachers.check_output_file(Path(cfg.sample) / f"samples-{cfg.sampler}{cfg.steps}.png", "--sample")
    else:
        teachers.check_teacher_files(cfg.teacher, cfg.model_id)
        teachers.check_output_dir(run_dir(cfg), "--out")


def prepare(cfg, rank, world, device):
    """(teacher, student, RunDir): the teacher loaded, the student built, every check done."""
    if cfg.batch % world:
        raise UserError(f"--batch {cfg.batch} is not divisible by the {world} processes")
    teacher = teachers.load_teacher(cfg.teacher, device=device, model_id=cfg.model_id,
                                    dtype=teachers.teacher_dtype(cfg.half, device))
    if cfg.method == "data" and teacher.name != "digits":
        raise UserError("--method data needs the embedded digits teacher (its real data ships with scikit-learn)")
    if cfg.p_uncond > 0 and not teacher.num_classes:
        raise UserError(f"--p-uncond needs a class-conditional teacher; '{teacher.name}' is unconditional")
    torch.manual_seed(cfg.seed)  # the student's random init (the same on every process)
    student = build_student(cfg, teacher)
    if cfg.method in ("dynamic", "shuffled", "iterative") and resolved_init(cfg) == "staggered":
        need = int(staggered_counts(pool_size(cfg, teacher.schedule.T, cfg.batch // world), teacher.schedule.T).max())
        if cfg.chains < need:
            raise UserError(f"--chains {cfg.chains} is below the {need} pool entries per step (rho b); use well above")
    out = run_dir(cfg)
    config = {k: v for k, v in dataclasses.asdict(cfg).items() if k not in SAMPLING_FIELDS}
    config.update(out=out, world_size=world, pool_init=resolved_init(cfg) if cfg.method not in ("data", "data-free") else None)
    run = teachers.RunDir(out, config, rank, resumable=RESUMABLE, keep=cfg.keep)
    if run.resume_step is not None and cfg.method not in ("data", "data-free"):  # this process's pool file
        run.stream_state = teachers.read_checkpoint(stream_file(run, rank, run.resume_step), "knowledge-stream checkpoint")
    return teacher, student, run


def run_dir(cfg):
    return cfg.out or f"runs/dkdm-{Path(cfg.teacher).name}-{Path(cfg.student).name}-{cfg.method}"


def describe(cfg, teacher, student, run, world):
    T, b = teacher.schedule.T, cfg.batch // world
    facts = {"teacher": f"{teacher.name} {teacher.sample_shape} T={T} variance={teacher.variance_type}",
             "student": f"{type(student).__name__} {sum(p.numel() for p in student.parameters()):,} params",
             "objective": "L*simple + lam L*vlb" if teacher.learned_variance else "L*simple (fixed-variance teacher)"}
    if cfg.method in ("dynamic", "shuffled", "iterative"):
        n = pool_size(cfg, T, b)
        evals, passes = init_cost(cfg, T, n)
        facts["pool"] = f"{n} x {world} entries, init {resolved_init(cfg)}: {evals:,.0f} sample evaluations, {passes:,} passes"
    return {**run.config, **filled_defaults(cfg, teacher), **facts}


def filled_defaults(cfg, teacher):
    """The values that None stands for in the config (shown by --dry-run and at the start of a run)."""
    filled = {}
    if cfg.width is None and cfg.student == "cnn":
        filled["width"] = cnn_config(teacher)["block_out_channels"][0]
    elif cfg.width is None and cfg.student == "vit":
        conf = vit_config(teacher)
        filled["width"] = conf["attention_head_dim"] * conf["num_attention_heads"]
    if cfg.synth_n is None and cfg.method == "data-free":
        filled["synth_n"] = synth_n(cfg)
    return filled


def memory_report(cfg, teacher, student, world):
    """--dry-run: memory per GPU (teacher, student + AdamW + EMA, activations measured on CPU for one
    sample under the precision a GPU run uses, the pool) and the network passes of one iteration."""
    import copy

    model = copy.deepcopy(student).cpu().train()
    C, H, W = teacher.sample_shape
    x, i = torch.zeros(1, C, H, W), torch.tensor([teacher.schedule.T // 2])
    labels = torch.zeros(1, dtype=torch.long) if teacher.num_classes else None
    precision = "bf16" if cfg.precision == "auto" else cfg.precision

    def forward():
        with teachers.student_autocast(precision, "cpu"):
            teachers.call_net(model, x, i.float(), as_cond(labels)).float().mean()

    act = teachers.saved_activation_bytes(model, forward)
    b = cfg.batch // world
    pool = pool_size(cfg, teacher.schedule.T, b) if cfg.method in ("dynamic", "shuffled", "iterative") else 0
    w = teacher.default_guidance
    passes = {"teacher_forwards": 1 if cfg.method not in ("data", "data-free") else 0,
              "teacher_forward_batch": "2 b (CFG pair)" if teacher.guided and w not in (None, 1.0) else "b",
              "student_forward_backward": 1}
    return teachers.memory_estimate([getattr(teacher, "unet", None), getattr(teacher, "vae", None)],
                                    2 if cfg.half else 4, model, act, 1, b, passes,
                                    extra_per_sample=pool / b * (4 * C * H * W + 16), extra_what="pool")


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["sample"]:
        argv = ["--sample", *argv[1:]]
    args = vars(parser().parse_args(argv))
    dry_run = args.pop("dry_run")
    cfg = DKDMConfig(**args)
    cfg = dataclasses.replace(cfg, **{k: teachers.local_path(getattr(cfg, k)) for k in ("teacher", "model_id")})
    if cfg.iters is None:
        cfg = dataclasses.replace(cfg, iters=3000 if cfg.student == "vit" else 10000)
    try:
        check_config(cfg)
        if cfg.sample:
            return sample_run(cfg)
        teachers.check_hub(cfg.teacher, cfg.model_id)  # before any process group or download
        # every check (teacher, student, run directory) on every process before a process group
        rank, world, device = teachers.dist_env()
        teacher, student, run = prepare(cfg, rank, world, device)
        if dry_run:
            facts = describe(cfg, teacher, student, run, world)
            print0(json.dumps({**facts, "memory_estimate": memory_report(cfg, teacher, student, world)}, indent=2))
            return 0
        rank, world, device = teachers.dist_setup()
        try:
            run.start()
            barrier()
            print0(json.dumps(describe(cfg, teacher, student, run, world), indent=2))
            with teachers.Interrupt() as stop:
                raw, ema, step = train(cfg, teacher, student, run, rank, world, device, stop)
            if stop.halted:  # the loop checkpointed at the end of the interrupted iteration
                stop.report(step, run.ckpt)
                raise SystemExit(stop.exit_code)
            if rank == 0:
                d = export_student(cfg, teacher, raw, ema, run.path)
                write_preview(teacher, d, run.path / "preview.png")
                print0(f"{step} iterations; student -> {d}; preview -> {run.path / 'preview.png'}")
                K = teacher.num_classes
                call = f"batch_size={K}, class_labels=list(range({K}))" if K else "batch_size=4"
                print0("load it with plain diffusers:\n" + teachers.pipeline_snippet(d, call + ", num_inference_steps=50"))
            barrier()
        finally:
            run.close()
            teachers.dist_teardown()
    except UserError as e:
        if int(os.environ.get("RANK", 0)) == 0:
            print(f"dkdm.py: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
