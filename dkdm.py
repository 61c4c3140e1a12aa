"""DKDM: Data-Free Knowledge Distillation for Diffusion Models with Any Architecture.

Xiang, Zhang, Shang, Wu, Yan, Nie (CVPR 2025), arXiv:2409.03550. A frozen teacher is the only data
source: a randomly initialised student of any diffusers architecture learns the teacher's every
denoising step (Eq. 19-21), on noisy samples the teacher itself keeps producing (dynamic iterative
distillation, Alg. 1). Read it in the paper's order: the objective (Eq. 19-21) -> the knowledge pool,
its three streams and its initialisation (shuffle denoise, staggered chains) -> students of any
architecture (cnn, vit, any config) -> the baselines -> one training step -> `train`, Algorithm 1 as
one loop. Below the "Running it" banner: config, defaults, checks, export and the command line.

    python dkdm.py                              # digits teacher, cnn student, dynamic distillation,
                                                #   staggered pool init -> runs/dkdm-digits-cnn-dynamic/
    python dkdm.py --student vit                # a DiT student of the same CNN teacher
    python dkdm.py --method data-free           # baselines: a synthetic set the teacher samples (Table
    python dkdm.py --method data --iters 4000   #   2), or real digits; ablation: --method shuffled
    python dkdm.py --dry-run                    # the resolved config, pool size, init cost, memory, time
    python dkdm.py sample runs/dkdm-digits-cnn-dynamic --sampler ancestral --steps 50
    torchrun --standalone --nproc_per_node=8 dkdm.py --teacher ddpm-cifar10 \\
        --out runs/dkdm-cifar10   # the official recipe is this teacher's preset (PRESETS)

Conventions (the official code's, github.com/qianlong0502/DKDM): integer steps i = 0..T-1 as in
diffusers, alpha_bar_{-1} = 1; the teacher's x0-hat is clipped per the teacher, the student's is not;
the student's mean is detached inside the KL, so L*vlb trains only the variance head (`dkdm_loss`);
fixed-variance teachers give L*simple only. Deviations from the paper are flags (README, "Paper vs
ours"). A pool entry (x, i, label) is the noisy sample x_i waiting for the step i -> i-1; after step
i = 0 it restarts from fresh noise at i = T-1. Under torchrun each process owns rho T b/world entries
seeded by its rank. Run directories, resume and exit codes work as in boot.py (runkit.py).
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import json
import math
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import cli
from cli import UserError, flag


if __name__ == "__main__" and cli.answers_alone(sys.argv[1:]):
    cli.help_from_source(__file__, "DKDMConfig")  # --help from the config at the end, before torch is imported

import diffusers  # noqa: E402
import torch  # noqa: E402
from tqdm import tqdm  # noqa: E402

import costs  # noqa: E402
import evaluate  # noqa: E402
import runkit  # noqa: E402
import teachers  # noqa: E402
from pipelines import students  # noqa: E402
from runkit import print0  # noqa: E402


# --- DKDM Eq. (20): L*simple = || eps_T(x_t, t) - eps_S(x_t, t) ||^2, mean over C x H x W
def l_simple(eps_T, eps_S):
    return ((eps_T - eps_S) ** 2).mean(dim=tuple(range(1, eps_S.dim())))


# --- DKDM Eq. (21) with Eq. (12): L*vlb = KL(p_T(x_{t-1}|x_t) || p_S(x_{t-1}|x_t)) in bits/dim
def normal_kl(mean1, logvar1, mean2, logvar2):
    """KL(N(mean1, e^logvar1) || N(mean2, e^logvar2)) elementwise, in nats."""
    return 0.5 * (logvar2 - logvar1 + torch.exp(logvar1 - logvar2) + (mean1 - mean2) ** 2 * torch.exp(-logvar2) - 1.0)


def student_mean_logvar(sch, x_t, i, eps_S, v_S):
    """p_S(x_{t-1} | x_t): mean from the student's eps (detached: L*simple trains it, as in IDDPM;
    x0-hat not clipped, as in the official code), log-variance from its v by Eq. (12)."""
    ab = teachers.bcast(sch.alpha_bar(i).to(x_t), x_t)
    x0_S = (x_t - (1 - ab).sqrt() * eps_S.detach()) / ab.sqrt()
    return teachers.gaussian_step(sch, x_t, x0_S, i, i - 1, v_S, "learned_range")


def l_vlb(mean_T, logvar_T, mean_S, logvar_S):
    """KL between the two Gaussians, mean over dims, / ln 2 (no decoder NLL at t = 0)."""
    kl = normal_kl(mean_T, logvar_T, mean_S, logvar_S)
    return kl.mean(dim=tuple(range(1, kl.dim()))) / math.log(2.0)


# --- DKDM Eq. (19): L*DKDM = L*simple + lambda L*vlb
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


# --- DKDM Sec. 3.3, Alg. 1: knowledge pool B+ and one teacher step per drawn sample
def fresh_samples(teacher, n, g, p_uncond=0.0):
    """n pure noises x_{T-1} ~ N(0, I) and their labels (uniform; the null label w.p. p_uncond)."""
    x = torch.randn((n, *teacher.sample_shape), generator=g, device=g.device).to(teacher.device)
    if not teacher.num_classes:
        return x, None
    labels = torch.randint(0, teacher.num_classes, (n,), generator=g, device=g.device)
    labels = torch.where(torch.rand(n, generator=g, device=g.device) < p_uncond, teacher.num_classes, labels)
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
    z = torch.randn(x.shape, generator=g, device=x.device)  # drawn where the pool lives (g too): no host copy
    return (mean, logvar, eps), mean + (0.5 * logvar).exp() * z


class Pool:
    """B+: noisy samples x_i (float32), their integer steps i and labels, kept on the device.

    `g` (a torch.Generator on the pool's device) drives every random draw of the stream; its state is
    saved with the pool, so a resumed run continues the same knowledge stream.
    """

    def __init__(self, x, i, labels, g):
        self.x, self.i, self.labels, self.g = x.float(), i.long(), labels, g

    def __len__(self):
        return len(self.i)

    def draw(self, b):
        """b indices without replacement (Alg. 1 line 4)."""
        return torch.randperm(len(self), generator=self.g, device=self.g.device)[:b].to(self.x.device)

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

    def spread(self, T):
        """metrics.jsonl's pool_t_spread: is the histogram of steps i still flat? (std / mean of 10 bins)"""
        hist = torch.histc(self.i.float().cpu(), bins=10, min=0, max=T - 1)
        return {"pool_t_spread": float(hist.std() / hist.mean())}

    def state_dict(self):
        return {"x": self.x, "i": self.i, "labels": self.labels, "g": self.g.get_state()}

    def load_state_dict(self, s):
        self.x, self.i, self.labels = s["x"].to(self.x.device), s["i"].to(self.x.device), s["labels"]
        if self.labels is not None:
            self.labels = self.labels.to(self.x.device)
        self.g.set_state(s["g"].cpu())  # a generator's state is a CPU tensor, whatever the map_location


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


def pool_size(cfg, T, b_local):
    return max(b_local, round(cfg.rho * T * b_local)) if cfg.method == "dynamic" else b_local


# --- Pool initialisation: noise (iterative), shuffle denoise (Fig. 3), staggered chains
def init_noise(teacher, n, g, p_uncond=0.0):
    """Iterative distillation's start: n noises, all at i = T-1 (they then step in lockstep)."""
    x, labels = fresh_samples(teacher, n, g, p_uncond)
    return Pool(x, torch.full((n,), teacher.schedule.T - 1, device=x.device), labels, g)


@torch.no_grad()
def init_shuffle(teacher, n, g, w=None, p_uncond=0.0, batch=512):
    """Shuffle denoise (the paper's init): every entry starts from noise at T-1 and the teacher
    denoises it down to its own i_end ~ U{0..T-1}. About n T / 2 sample evaluations."""
    T = teacher.schedule.T
    x, labels = fresh_samples(teacher, n, g, p_uncond)
    i_end = torch.randint(0, T, (n,), generator=g, device=g.device).to(x.device)
    by_end = torch.argsort(i_end, stable=True)  # the entries still going at step s (i_end < s) are a prefix
    going = torch.bincount(i_end, minlength=T).cumsum(0).tolist()  # of going[s - 1]: one read, not one a step
    for s in tqdm(range(T - 1, 0, -1), desc="shuffle denoise", disable=not runkit.is_rank0(), leave=False):
        if going[s - 1] == 0:
            break
        active = by_end[: going[s - 1]].sort().values  # entries at step s that go on to s - 1, in index order
        for chunk in active.split(batch):
            lab = None if labels is None else labels[chunk]
            _, x[chunk] = teacher_step(teacher, x[chunk], torch.full_like(chunk, s), lab, w, g)
    return Pool(x, i_end, labels, g)


def staggered_counts(n, T):
    """How many pool entries sit at each step i (sums to n, differs by at most 1 across i)."""
    edges = torch.div(torch.arange(T + 1) * n, T, rounding_mode="floor")
    return edges[1:] - edges[:-1]


def check_chains(n, T, chains):
    """staggered_counts(n, T), or one line when M = --chains is below the entries per step."""
    counts = staggered_counts(n, T)
    if int(counts.max()) > chains:
        raise UserError(
            f"--chains {chains} is below the {int(counts.max())} pool entries per step (rho b); use well above"
        )
    return counts


@torch.no_grad()
def init_staggered(teacher, n, chains, g, w=None, p_uncond=0.0, return_chains=False):
    """M teacher chains run from T-1 to 0 in one batch; at every step i, about n/T of their
    current states are copied into the pool at step i. T-1 batched passes, M (T-1) evaluations.

    Chains are taken in random-permutation cycles, so the pool holds min(M, n) distinct chains at
    least. M must be well above n/T = rho b: with M = rho b every chain is kept at every step
    and the pool holds only rho b trajectories, which advance too slowly to ever refresh.
    """
    T = teacher.schedule.T
    counts = check_chains(n, T, chains)
    xc, lc = fresh_samples(teacher, chains, g, p_uncond)
    x = torch.empty((n, *teacher.sample_shape), device=xc.device)
    i = torch.empty(n, dtype=torch.long, device=xc.device)
    labels = None if lc is None else torch.empty(n, dtype=torch.long, device=xc.device)
    chain_of = torch.empty(n, dtype=torch.long, device=g.device)
    queue, slot = torch.empty(0, dtype=torch.long, device=g.device), 0
    for s in tqdm(range(T - 1, -1, -1), desc="staggered init", disable=not runkit.is_rank0(), leave=False):
        k = int(counts[s])
        if len(queue) < k:  # refill: this cycle's leftovers first, then the other chains shuffled
            perm = torch.randperm(chains, generator=g, device=g.device)
            queue = torch.cat([queue, perm[~torch.isin(perm, queue)]])
        take, queue = queue[:k], queue[k:]
        x[slot : slot + k], i[slot : slot + k], chain_of[slot : slot + k] = xc[take.to(xc.device)], s, take
        if labels is not None:
            labels[slot : slot + k] = lc[take.to(xc.device)]
        slot += k
        if s > 0:
            _, xc = teacher_step(teacher, xc, torch.full((chains,), s, device=xc.device), lc, w, g)
    pool = Pool(x, i, labels, g)
    return (pool, chain_of) if return_chains else pool


# --- Students of any architecture (Sec. 4.2, Table 5): a smaller CNN, or a DiT-style transformer
def denoiser_from_config(directory):
    """A randomly initialised diffusers denoiser from `directory`/config.json (UNet2DModel,
    UNet2DConditionModel or DiTTransformer2DModel)."""
    if not (Path(directory) / "config.json").is_file():
        raise UserError(f"unknown student '{directory}' (cnn, vit, or a directory with a diffusers config.json)")
    conf = cli.read_json(Path(directory) / "config.json", "student config")
    name = conf.get("_class_name", "")
    if name not in ("UNet2DModel", "UNet2DConditionModel", "DiTTransformer2DModel"):
        raise UserError(
            f"student '{directory}' is a {name or 'config without _class_name'}; "
            f"supported: UNet2DModel, UNet2DConditionModel, DiTTransformer2DModel"
        )
    return getattr(diffusers, name).from_config(conf)


def check_student_fits(model, teacher, what):
    """One-line errors when a diffusers denoiser (DKDM's student) cannot stand in for the teacher."""
    c, (C, H, _), name, need = model.config, teacher.sample_shape, teacher.name, students.out_channels(teacher)
    size = c.sample_size if isinstance(c.sample_size, int) else c.sample_size[0]
    slots = getattr(c, "num_class_embeds", None) or getattr(c, "num_embeds_ada_norm", None) or 0
    checks = [
        (
            c.in_channels == C and size == H,
            f"takes {c.in_channels}x{size}x{size} inputs; teacher '{name}' makes {C}x{H}x{H}",
        ),
        (
            c.out_channels == need,
            f"has {c.out_channels} output channels; teacher '{name}' needs {need} "
            f"({'eps + variance' if teacher.learned_variance else 'eps'})",
        ),
        (
            not H % (getattr(c, "patch_size", None) or 1),
            f"has patch size {getattr(c, 'patch_size', None)}, which does not divide {H}",
        ),
        (
            not teacher.num_classes or slots >= teacher.num_classes + 1,
            f"embeds {slots} labels; teacher '{name}' has {teacher.num_classes} classes + a null label",
        ),
        (
            teacher.num_classes or not getattr(c, "num_class_embeds", None),
            f"is class-conditional; teacher '{name}' is not",
        ),
    ]
    for ok, message in checks:
        if not ok:
            raise UserError(f"student '{what}' {message}")


def build_student(cfg, teacher):
    """A randomly initialised student: cnn, vit, or any diffusers denoiser config in a directory."""
    if cfg.student == "cnn":
        model = diffusers.UNet2DModel(**students.cnn_config(teacher, cfg.width))
    elif cfg.student == "vit":
        model = diffusers.DiTTransformer2DModel(**students.vit_config(teacher, cfg.width))
        if cfg.vit_init == "adaln-zero":
            students.adaln_zero_(model)
    else:  # any diffusers denoiser's config.json
        model = denoiser_from_config(cfg.student)
    check_student_fits(model, teacher, cfg.student)
    for m in model.modules():  # DiT drops labels at random in train mode, to an index the teacher
        if type(m).__name__ == "LabelEmbedding":  # never saw; the null label is distilled instead
            m.dropout_prob = 0.0  # (--p-uncond), and the stream stays a function of the seed
    return model


# --- Baselines (Sec. 4.1): data-free (a synthetic set, Fig. 2b) and data-based (Fig. 2a)
def iddpm_loss(model, x0, cond, sch, generator=None):
    """IDDPM's hybrid loss on images x0: Eq. (19) with the true posterior q(x_{t-1} | x_t, x0) in the
    teacher's place, L_simple + L_vlb (KL in bits/dim, the mean detached; t > 0)."""
    dev = generator.device if generator is not None else "cpu"  # draws where the generator lives
    i = torch.randint(0, sch.T, (x0.shape[0],), generator=generator, device=dev).to(x0.device)
    eps = torch.randn(x0.shape, generator=generator, device=dev).to(x0)
    ab = teachers.bcast(sch.alpha_bar(i).float(), x0)
    x_t = ab.sqrt() * x0 + (1 - ab).sqrt() * eps
    out = teachers.call_net(model, x_t, i.float(), cond)
    q = (*teachers.gaussian_step(sch, x_t, x0, i, i - 1, None, "fixed_small"), eps)
    _, mse, vb = dkdm_loss(sch, x_t, i, out, q, 1.0, out.shape[1] > x0.shape[1])  # fixed variance: vb = 0
    return (mse + torch.where(i > 0, vb, torch.zeros_like(vb))).mean()


class ImageSet:
    """Batches of (x0, labels) drawn with replacement from a fixed set of images (real, or a teacher's
    samples): what standard diffusion training (iddpm_loss) reads; DKDM's data / data-free baselines."""

    def __init__(self, x0, labels, g, num_classes=None, p_uncond=0.0):
        self.x0, self.labels, self.g, self.K, self.p_uncond = x0, labels, g, num_classes, p_uncond

    def draw(self, b):
        """b images and their labels (the null label K with probability p_uncond)."""
        idx = torch.randint(0, len(self.x0), (b,), generator=self.g, device=self.g.device)
        labels = None
        if self.labels is not None:
            drop = torch.rand(b, generator=self.g, device=self.g.device) < self.p_uncond
            labels = torch.where(drop, self.K, self.labels.to(idx.device)[idx]).to(self.x0.device)
        return self.x0[idx.to(self.x0.device)], labels

    def state_dict(self):
        return {"g": self.g.get_state()}

    def load_state_dict(self, s):
        self.g.set_state(s["g"].cpu())  # a generator's state is a CPU tensor, whatever the map_location


@torch.no_grad()
def sample_set(teacher, draw, n, steps, g, w=None, sampler="ancestral"):
    """n teacher samples (IDDPM ancestral or DDIM, `steps` steps, batches of 256) from `draw(m)`'s m
    noises and labels: a synthetic training set (DKDM's data-free baseline, Table 4)."""
    xs, ls, batch = [], [], 256
    for k in tqdm(range(0, n, batch), desc="synthetic set", unit="batch", leave=False):
        noise, labels = draw(min(batch, n - k))
        cond = None if labels is None else {"class_labels": labels}
        if sampler == "ddim":
            xs.append(teachers.ddim(teacher, noise, steps, cond, w).float())
        else:
            xs.append(teachers.ancestral(teacher, noise, steps, cond, w, generator=g).float())
        ls.append(labels)
    return torch.cat(xs), (None if ls[0] is None else torch.cat(ls))


def data_stream(cfg, teacher, run_path, g, rank, w):
    """Real digits (`data`), or the teacher's synthetic set (`data-free`, made once, kept in the run)."""
    if cfg.method == "data":
        x, y = teachers.load_digits_tensor()
        return ImageSet(x.to(teacher.device), y.to(teacher.device), g, teacher.num_classes, cfg.p_uncond)
    f = Path(run_path) / "synthetic.pt"
    if rank == 0 and not f.is_file():
        n = synth_n(cfg)
        sampler, steps = synth_plan(cfg, teacher)
        print0(f"data-free baseline: sampling {n} images with the teacher ({sampler}, {steps} steps)")
        gs = torch.Generator(teacher.device).manual_seed(cfg.seed + 7)
        x, y = sample_set(teacher, lambda m: fresh_samples(teacher, m, gs), n, steps, gs, w, sampler)
        runkit.save_checkpoint(f, {"x": x.cpu(), "labels": None if y is None else y.cpu()})
    runkit.barrier(teacher.device)
    s = runkit.load_checkpoint(f)
    y = None if s["labels"] is None else s["labels"].to(teacher.device)
    return ImageSet(s["x"].to(teacher.device), y, g, teacher.num_classes, cfg.p_uncond)


# --- The knowledge stream of a run (Alg. 1 line 1): dynamic, shuffled or iterative, or a baseline's set
def make_stream(cfg, teacher, run, g, w, world):
    """Alg. 1 line 1: this process's knowledge pool B+_1, initialised as --pool-init says (a fresh run),
    or empty, for run.resume to fill from the checkpoint; the baselines' fixed set of images."""
    if cfg.method in ("data", "data-free"):
        return data_stream(cfg, teacher, run.path, g, run.rank, w)
    if run.resume_step is not None:
        empty = torch.empty(0, device=teacher.device)
        return Pool(empty, empty.long(), None, g)
    n, how = pool_size(cfg, teacher.schedule.T, cfg.batch // world), resolved_init(cfg)
    evals, passes = init_cost(cfg, teacher.schedule.T, n)
    print0(
        f"pool: {n} entries per process, init '{how}': {evals:,.0f} teacher sample evaluations "
        f"in {passes:,} batched passes"
    )
    start, pool = time.time(), make_pool(cfg, teacher, n, g, w)
    print0(f"pool initialised in {time.time() - start:.1f} s")
    run.log(
        {"step": 0, "pool_init": how, "init_seconds": time.time() - start, "init_evals": evals, "pool_size": n * world}
    )
    return pool


def make_pool(cfg, teacher, n, g, w):
    how = resolved_init(cfg)
    if how == "staggered":
        return init_staggered(teacher, n, cfg.chains, g, w, cfg.p_uncond)
    if how == "shuffle":
        return init_shuffle(teacher, n, g, w, cfg.p_uncond, init_batch(cfg))
    return init_noise(teacher, n, g, cfg.p_uncond)


# --- One training iteration (Alg. 1 lines 2-8)
def student_step(cfg, teacher, model, stream, b, w, meter=None):
    """Alg. 1 lines 4-6 (and 8): (loss, mse, vb) of one batch, Eq. (19) on the knowledge stream
    (whose pool takes the teacher's step), or Eq. (13) on a fixed set (the baselines)."""
    timed = meter.time if meter else lambda part: nullcontext()
    amp = lambda: runkit.student_autocast(cfg.precision, teacher.device)  # noqa: E731 - bf16 on a GPU by default
    if isinstance(stream, ImageSet):
        x0, labels = stream.draw(b)
        with timed("student"), amp():
            loss = iddpm_loss(model, x0, as_cond(labels), teacher.schedule, stream.g)
        return loss, loss.detach(), torch.zeros(())
    with timed("teacher"):
        x_t, i, labels, target = knowledge_step(teacher, stream, b, w, cfg.p_uncond)  # lines 4 and 8
    with timed("student"), amp():
        out = teachers.call_net(model, x_t, i.to(x_t.dtype), as_cond(labels)).float()
    with timed("student"):
        loss, mse, vb = dkdm_loss(teacher.schedule, x_t, i, out, target, cfg.lam, teacher.learned_variance)
    return loss.mean(), mse.mean().detach(), vb.mean().detach()  # lines 5-6: Eq. (20), (21)


def learning_rate(cfg, step: int) -> float:
    """Linear warm-up, constant, then a cosine down to 10% of the peak between the iterations of
    --lr-decay (a horizon of its own: continuing a run with a larger --iters leaves the steps taken alone)."""
    lr, (start, end) = cfg.lr * min(1.0, (step + 1) / max(1, cfg.warmup)), cfg.lr_decay
    if end > start and step > start:
        lr *= 0.1 + 0.45 * (1 + math.cos(math.pi * min(step - start, end - start) / (end - start)))
    return lr


# --- Algorithm 1: the training run, one flat loop for one CPU / GPU process and torchrun DDP
def train(cfg, teacher, student, run):
    """Algorithm 1 (dynamic iterative distillation; the ablations and baselines swap the stream) as
    one loop; runkit.py resumes, logs and checkpoints."""
    with runkit.training(run) as (rank, world, device):  # process group, run lock, Ctrl-C / SIGTERM
        print0(json.dumps(run_facts(cfg, teacher, student, run.config, world), indent=2))
        raw, ema, opt = runkit.optimisation(student, cfg, device)
        g = torch.Generator(device).manual_seed(cfg.seed + 1000003 * rank)  # this process's knowledge stream
        b, w = cfg.batch // world, teacher.default_guidance
        stream = make_stream(cfg, teacher, run, g, w, world)  # line 1: the pool B+_1 (or the baselines' set)
        saved = {"model": raw, "ema": ema, "opt": opt, "stream": stream}  # what a checkpoint holds
        step, why = run.resume(saved, f"dkdm {cfg.method}"), None
        model = runkit.ddp(raw, device, world)
        meter = runkit.Meter(device, ("loss", "mse", "vb"), window=run.window)  # metrics.jsonl: Eq. 19, 20, 21
        probe = proxy(cfg, teacher, ema, meter)  # --eval-every (rank 0)

        def extra(step):  # metrics.jsonl's fields beside the losses
            spread = stream.spread(teacher.schedule.T) if isinstance(stream, Pool) else {}
            return {**spread, **(probe(step) if probe else {})}

        if step == 0:
            run.checkpoint(0, meter, saved)  # the initialised pool: a rerun never repeats its init
        while step < cfg.iters:  # lines 2-3, 9
            for group in opt.param_groups:
                group["lr"] = learning_rate(cfg, step)
            loss, mse, vb = student_step(cfg, teacher, model, stream, b, w, meter)  # lines 4-6, 8
            with meter.time("student"):  # line 7
                opt.zero_grad(set_to_none=True)
                loss.backward()  # DDP averages the gradients over ranks: the global-batch mean
                run.check_update(loss, raw.parameters(), step + 1)  # a non-finite loss or gradient stops the run
                if cfg.clip_grad > 0:
                    torch.nn.utils.clip_grad_norm_(raw.parameters(), cfg.clip_grad)
                opt.step()
                ema.update(raw)
            step += 1
            meter.add(loss=loss, mse=mse, vb=vb)
            why = run.end_iteration(step, meter, saved, extra)
            if why:  # records and checkpoints written; the budget or a signal, as rank 0 sees it
                break
            if cfg.export_every and step % cfg.export_every == 0 and rank == 0:
                students.write_preview(
                    teacher, export_student(cfg, teacher, raw, ema, run.path), run.path / "preview.png"
                )
        if rank == 0:
            d = export_student(cfg, teacher, raw, ema, run.path)
            students.write_preview(teacher, d, run.path / "preview.png")
            print0(f"{step} iterations; student -> {d}; preview -> {run.path / 'preview.png'}")
            students.print_snippet(d, {"method": "dkdm", "num_classes": teacher.num_classes})
    return step


# =====================================================================================================================
# Running it: the config and each teacher's presets, the input checks, the export, the command line.
# Nothing above needs them to be read.
# =====================================================================================================================
METHODS = ("dynamic", "shuffled", "iterative", "data-free", "data")
POOL_INITS = ("auto", "staggered", "shuffle", "noise")
TRAIN_SET_SIZE = {"digits": 1797, "gmm": 1797, "ddpm-cifar10": 50000, "ldm-celebahq": 25000}  # synthetic set (Table 4)
EMBEDDED = ("digits", "gmm")  # the CPU protocol of every bench row: a 100-step synthetic set, DDIM-50 scores


@dataclass
class DKDMConfig:
    teacher: str = flag("digits", "registry name (digits, ddpm-cifar10, ldm-celebahq, gmm), hub id or local dir")
    model_id: str | None = flag(None, "override the registry entry's hub id (a mirror or a local copy)")
    student: str = flag("cnn", "cnn (UNet2DModel), vit (DiTTransformer2DModel) or a dir with a diffusers config.json")
    width: int | None = flag(None, "student base width; default 16 (cnn) / 128 (vit) at 8x8, 64 / 384 above")
    vit_init: str = flag(
        "adaln-zero", "vit: DiT's adaLN-Zero init, or diffusers' default", choices=["adaln-zero", "diffusers"]
    )
    method: str = flag("dynamic", "knowledge stream, or a baseline", choices=METHODS)
    preset: str | None = flag(
        None, "row of PRESETS to fill the preset fields from; default: the teacher's, found from what it is"
    )
    rho: float | None = flag(None, "dynamic pool size rho T b (Alg. 1); preset: 0.4 pixel, 4 latent (the paper's)")
    pool_init: str = flag(
        "auto",
        "auto: shuffle denoise (dynamic: the paper's; staggered on the embedded digits / gmm, "
        "for its CPU cost: README), shuffle (shuffled), noise (iterative)",
        choices=POOL_INITS,
    )
    chains: int = flag(512, "staggered init: teacher chains M run in one batch (well above rho b)")
    init_batch: int | None = flag(
        None, "shuffle-denoise init: samples per teacher pass; default 512 on CPU, 1024 on a GPU"
    )
    batch: int | None = flag(None, "global batch b, divided over torchrun processes (preset)")
    iters: int | None = flag(None, "training iterations (preset)")
    minutes: float | None = flag(None, "stop (checkpoint + export) after this many minutes of training in all reruns")
    lr: float | None = flag(None, "AdamW peak learning rate after warm-up (preset)")
    warmup: int | None = flag(None, "linear lr warm-up iterations (preset)")
    lr_decay: tuple[int, ...] | None = flag(
        None,
        "START END: a cosine from the peak lr at iteration START to 10%% at END, fixed at the start (config.json: "
        "a rerun with more --iters keeps it); 0 0: constant (preset)",
        nargs=2,
    )
    ema: float | None = flag(None, "EMA decay of the exported student (preset)")
    clip_grad: float | None = flag(
        None, "clip the gradient norm at this value; 0: none, as the paper and its code (preset: 1.0 on digits, gmm)"
    )
    lam: float = flag(1.0, "weight lambda of L*vlb (Eq. 19), per timestep")
    p_uncond: float = flag(0.0, "fraction of samples with the null label (student learns CFG's unconditional model)")
    synth_sampler: str = flag(
        "auto",
        "data-free baseline's sampler; auto: Table 4's (IDDPM pixel, DDIM latent)",
        choices=["auto", "ancestral", "ddim"],
    )
    synth_steps: int | None = flag(
        None,
        "data-free baseline: steps per synthetic sample; default Table 4's T = 1000 "
        "(pixel) / 100 (latent); 100 for digits, gmm",
    )
    synth_n: int | None = flag(None, "data-free baseline: synthetic set size; default the training-set size")
    seed: int = flag(0, "seed of every random draw (process r uses seed + 1000003 r)")
    half: bool = flag(False, "run the frozen teacher in float16 (GPU only; the same in boot.py)")
    precision: str = flag(
        "auto", "student: auto (bf16 autocast + TF32 on a GPU, float32 on CPU)", choices=cli.PRECISIONS
    )
    grad_checkpointing: bool = flag(False, "recompute the student's activations in backward (less memory, more time)")
    out: str | None = flag(None, "run dir; default runs/dkdm-<teacher>-<student>-<method>")
    log_every: int = flag(100, "metrics.jsonl / progress interval")
    eval_every: int | None = flag(
        None,
        "a proxy FD and KID of the EMA student every K iterations, a multiple of "
        "--log-every (metrics.jsonl; 0: never; default: 2000, or the next multiple)",
    )
    ckpt_every: int = flag(1000, "checkpoint interval (a rerun resumes from the latest)")
    keep: int = flag(1, "checkpoints kept: the last N (checkpoints/step-*.pt; latest.pt is the newest)")
    export_every: int = flag(0, "also export the EMA student + preview.png every K iterations (0: at the end only)")

    def __post_init__(self):  # unset (None): the teacher's preset row, as boot.py's (None -> preset -> resolved)
        self.preset, row = preset_row(self)
        for k, v in row.items():
            setattr(self, k, v if getattr(self, k) is None else getattr(self, k))
        if self.eval_every is None:  # 2,000 or the next multiple of --log-every: ~2.5% of a default run
            self.eval_every = -(-2000 // max(self.log_every, 1)) * max(self.log_every, 1)  # 0 is refused later


# the fields a rerun may change (the run resumes); any other difference is refused
RESUMABLE = ("iters", "minutes", "log_every", "ckpt_every", "precision", "grad_checkpointing", "keep")
RESUMABLE += ("export_every", "init_batch", "eval_every")
# Each teacher's row, per student; a student without its own (a config directory, or vit on a teacher with only the
# official CNN recipe) takes the row's "cnn". `source` says where the numbers come from: measured here (the digits
# bench rows, bench/run.py) or the official recipe (github.com/qianlong0502/DKDM, its CNN students); a field neither
# gives comes from BASE, as a teacher without a row does. The digits DiT's warm-up-stable-decay schedule was tuned
# at 10,000 iterations on the embedded teachers only.
BASE = dict(iters=10_000, lr=1e-3, ema=0.998, lr_decay=(0, 0), warmup=200, batch=64, rho=0.4, clip_grad=0.0)
DIGITS = dict(
    source="measured here: the digits bench rows (clip 1.0: every CPU run was tuned with it)",
    cnn=dict(BASE, clip_grad=1.0),
    vit=dict(BASE, lr=3e-3, ema=0.9995, lr_decay=(7000, 10_000), clip_grad=1.0),
)
OFFICIAL = dict(ema=0.9999, lr_decay=(0, 0), warmup=0, clip_grad=0.0)  # EMA, no anneal / warm-up / clipping
PRESETS = {
    "digits": DIGITS,
    "gmm": DIGITS,
    "ddpm-cifar10": dict(
        source="official: guided-diffusion yaml/cifar10_32 (lr 1e-4, no weight decay, batch 128 on 1 GPU, "
        "EMA 0.9999, rho 0.4); 200,000 iterations: the paper's Fig. 4a",
        cnn=dict(OFFICIAL, lr=1e-4, batch=128, rho=0.4, iters=200_000),
    ),
    "ldm-celebahq": dict(
        source="official: latent-diffusion dkdm-celebahq-ldm-vq-4.yaml with --scale_lr False (lr 9.6e-5, batch 48 "
        "on 1 GPU, rho 4, EMA 0.9999; it trains until stopped: iters from BASE)",
        cnn=dict(OFFICIAL, lr=9.6e-5, batch=48, rho=4.0),
    ),
}


def preset_row(cfg) -> tuple:
    """(row name, its fields over BASE): --preset, else the entry the teacher is (teachers.teacher_family, as boot.py
    finds its preset; the embedded teachers by name); "base" when none fits."""
    name = cfg.preset or (cfg.teacher if cfg.teacher in PRESETS else teachers.teacher_family(cfg.teacher)[0])
    if cfg.preset is None and name not in PRESETS and cfg.model_id:
        name = teachers.teacher_family(cfg.model_id)[0]
    if name not in PRESETS:
        return ("base" if cfg.preset in (None, "base") else cfg.preset), BASE
    row = PRESETS[name]
    return name, {**BASE, **row.get(cfg.student, row["cnn"])}


def preset_note(cfg) -> str:
    """What filled the preset fields, for the log and the dry-run."""
    if cfg.preset not in PRESETS:
        return "base: no preset for this teacher (BASE)"
    row = PRESETS[cfg.preset]
    own = cfg.student in row
    return row["source"] + ("" if own else f"; no row for student '{cfg.student}': the teacher's cnn row")


def resolved_init(cfg):
    if cfg.pool_init != "auto":
        return cfg.pool_init
    dynamic = "staggered" if cfg.teacher in EMBEDDED else "shuffle"  # the paper's, but ~80 CPU-min on digits (README)
    return {"dynamic": dynamic, "shuffled": "shuffle", "iterative": "noise"}.get(cfg.method)


def init_cost(cfg, T, n):
    """(teacher sample evaluations, batched passes) of the pool initialisation."""
    how = resolved_init(cfg)
    if how == "staggered":
        return cfg.chains * (T - 1), T - 1
    if how == "shuffle":
        evals = n * (T - 1) / 2  # shuffle denoise: i_end uniform on 0..T-1
        return evals, max(T - 1, math.ceil(evals / init_batch(cfg)))
    return 0, 0


def init_batch(cfg):
    """Samples per shuffle-denoise pass: big on a GPU, where a pass of 128 leaves it mostly idle."""
    return cfg.init_batch or (1024 if runkit.env()[2].type == "cuda" else 512)


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


def synth_n(cfg):
    """Size of the data-free baseline's synthetic set: --synth-n, else the teacher's training set (Table 4)."""
    return cfg.synth_n or TRAIN_SET_SIZE.get(cfg.teacher, 10000)


def check_config(cfg, world: int) -> str:
    """Every check that needs no teacher (one line each); returns the run directory."""
    cli.check_run_fields(cfg)
    positive = {k: getattr(cfg, k) for k in ("batch", "chains", "init_batch", "synth_steps", "synth_n", "width")}
    checks = [
        *((v is None or v >= 1, f"--{k.replace('_', '-')} must be at least 1") for k, v in positive.items()),
        (cfg.rho > 0, "--rho must be positive"),
        (cfg.lam >= 0, "--lam must be non-negative"),
        (cfg.warmup >= 0, "--warmup must be non-negative"),
        (cfg.clip_grad >= 0, "--clip-grad must be non-negative"),
        (0 <= cfg.lr_decay[0] <= cfg.lr_decay[1], "--lr-decay START END needs 0 <= START <= END"),
        (0 <= cfg.p_uncond < 1, "--p-uncond must lie in [0, 1)"),
        (
            cfg.method != "iterative" or cfg.pool_init in ("auto", "noise"),
            "--method iterative starts every sample at T-1 (--pool-init auto or noise)",
        ),
        (cfg.batch % world == 0, f"--batch {cfg.batch} is not divisible by the {world} processes"),
        (cfg.preset in (*PRESETS, "base"), f"unknown preset '{cfg.preset}' (known: {', '.join(PRESETS)}, base)"),
    ]
    for ok, message in checks:
        if not ok:
            raise UserError(message)
    if teachers.is_text_teacher(cfg.teacher, cfg.model_id):
        raise UserError(  # known before any weight is read (teachers load only the pipelines they know), dry-run too
            f"DKDM distils unconditional and class-conditional teachers (the paper's); '{cfg.teacher}' is "
            "text-to-image: boot.py distils it"
        )
    teachers.check_teacher_files(cfg.teacher, cfg.model_id)
    out = cfg.out or f"runs/dkdm-{Path(cfg.teacher).name}-{Path(cfg.student).name}-{cfg.method}"
    cli.check_output_dir(out, "--out")
    return out


def check_teacher(cfg, teacher, world: int):
    """The checks that need the teacher (its weights or only its configs); returns the student it gets."""
    if cfg.method == "data" and teacher.name != "digits":
        raise UserError("--method data needs the embedded digits teacher (its real data ships with scikit-learn)")
    if cfg.p_uncond > 0 and not teacher.num_classes:
        raise UserError(f"--p-uncond needs a class-conditional teacher; '{teacher.name}' is unconditional")
    torch.manual_seed(cfg.seed)  # the student's random init (the same on every process)
    student = build_student(cfg, teacher)
    if cfg.method in ("dynamic", "shuffled", "iterative") and resolved_init(cfg) == "staggered":
        check_chains(pool_size(cfg, teacher.schedule.T, cfg.batch // world), teacher.schedule.T, cfg.chains)
    return student


def load_inputs(cfg):
    """(teacher, student, run directory): every input checked, on every process, before any process
    group is made or anything is written."""
    rank, world, device = runkit.env()
    out = check_config(cfg, world)
    dtype = runkit.teacher_dtype(cfg.half, device)  # --half needs a GPU
    teachers.check_hub(cfg.teacher, cfg.model_id)  # before any download
    teacher = teachers.load_teacher(cfg.teacher, device=device, model_id=cfg.model_id, dtype=dtype)
    student = check_teacher(cfg, teacher, world)
    run = runkit.RunDir(out, run_config(cfg, out, world), rank, resumable=RESUMABLE, keep=cfg.keep, per_rank=PER_RANK)
    return teacher, student, run


PER_RANK = {"stream": "knowledge-stream checkpoint"}  # each process's own state in a checkpoint (its pool)


def run_config(cfg, out, world: int) -> dict:
    """config.json: the resolved config, the run directory, the process count, the pool's initialisation."""
    init = resolved_init(cfg) if cfg.method not in ("data", "data-free") else None
    return {**dataclasses.asdict(cfg), "out": out, "world_size": world, "pool_init": init}


def plan(cfg, world: int) -> dict:
    """--dry-run: the config, what the run will do and its memory per GPU, from the teacher's configs alone (no
    weight read; a float16 teacher with --half, on any machine). A teacher whose configs cannot be had: the config,
    and the estimate says so."""
    facts = {**run_config(cfg, check_config(cfg, world), world), "preset_source": preset_note(cfg)}
    row = "dkdm_vit_cifar10" if (cfg.preset, cfg.student) == ("ddpm-cifar10", "vit") else None  # bench/gpu.py's
    time = costs.measured_time(row, cfg.iters, world, cfg.batch // world)
    try:
        teachers.quiet_libraries()
        dtype = torch.float16 if cfg.half else torch.float32
        teacher = teachers.load_teacher(cfg.teacher, "meta", dtype, model_id=cfg.model_id, weights=False)
    except UserError as e:
        return {
            **facts,
            "memory_estimate": f"unavailable: it needs the teacher's configs ({e})",
            "time_estimate": time,
        }
    student = check_teacher(cfg, teacher, world)
    facts = run_facts(cfg, teacher, student, facts, world)
    return {**facts, "memory_estimate": memory_estimate(teacher, student, cfg, world), "time_estimate": time}


def run_facts(cfg, teacher, student, config, world):
    """The config with its defaults filled in, and what the run will do (--dry-run, start of a run)."""
    T, b = teacher.schedule.T, cfg.batch // world
    facts = {
        "teacher": f"{teacher.name} {teacher.sample_shape} T={T} variance={teacher.variance_type}",
        "student": f"{type(student).__name__} {sum(p.numel() for p in student.parameters()):,} params",
        "objective": "L*simple + lam L*vlb" if teacher.learned_variance else "L*simple (fixed-variance teacher)",
        "preset_source": preset_note(cfg),
    }
    if cfg.width is None and cfg.student in ("cnn", "vit"):
        c = student.config
        facts["width"] = (
            c.block_out_channels[0] if cfg.student == "cnn" else c.num_attention_heads * c.attention_head_dim
        )
    if cfg.synth_n is None and cfg.method == "data-free":
        facts["synth_n"] = synth_n(cfg)
    if cfg.method in ("dynamic", "shuffled", "iterative"):
        n = pool_size(cfg, T, b)
        evals, passes = init_cost(cfg, T, n)
        facts["pool"] = (
            f"{n} x {world} entries, init {resolved_init(cfg)}: {evals:,.0f} sample evaluations, {passes:,} passes"
        )
    return {**config, **facts}


def memory_estimate(teacher, student, cfg: DKDMConfig, world: int) -> dict:
    """--dry-run's memory per GPU (costs.estimate): a training forward of the student at T/2, one teacher
    forward per iteration, the knowledge pool's bytes per sample (4 C H W for x, 8 for i, 8 for the label)."""
    (C, H, W), b, T = teacher.sample_shape, cfg.batch // world, teacher.schedule.T
    pool = pool_size(cfg, T, b) if cfg.method in ("dynamic", "shuffled", "iterative") else 0
    pool_bytes = pool / b * (4 * C * H * W + 16)
    model = copy.deepcopy(student).cpu().train()

    def forward(n):
        cond = {"class_labels": torch.zeros(n, dtype=torch.long)} if teacher.num_classes else None
        return teachers.call_net(model, torch.zeros(n, *teacher.sample_shape), torch.full((n,), T / 2), cond)

    guided = teacher.guided and teacher.default_guidance not in (None, 1.0)
    passes = {
        "teacher_forwards": int(pool_bytes > 0),
        "student_forward_backward": 1,
        "teacher_forward_batch": "2 b (CFG pair)" if guided else "b",
    }
    return costs.estimate(teacher, model, forward, cfg.precision, (b, 1), passes, (pool_bytes, "pool"))


# --- Output: a diffusers pipeline directory + generator.json (evaluate.py reads nothing else)
def proxy(cfg, teacher, ema, meter):
    """metrics.jsonl's proxy at every --eval-every-th step (rank 0): FD and KID of the EMA student's
    DDIM-50 samples (its export's sampler) against the teacher's own (evaluate.Probe). None: no proxy."""
    w, source, K = teacher.default_guidance, teachers.teacher_source(cfg.teacher, cfg.model_id), teacher.num_classes

    def cond_of(n):  # the preview's labels
        return as_cond(torch.arange(n, device=teacher.device) % K) if K else None

    pipe = functools.cache(lambda: students.ddpm_pipeline(ema.model(), teacher, source))  # once: unet = the EMA copy

    def sample(noise, cond):
        ema.model()  # the averaged weights, refreshed into that copy
        return teacher.decode(pipe().denoise(noise, cond and cond["class_labels"], w, 50).to(teacher.dtype))

    return evaluate.proxy(cfg.eval_every, teacher, cond_of, w, meter, sample)


def export_student(cfg, teacher, raw, ema, run_path):
    """run/student/: model_index.json, unet/ (EMA weights), scheduler/, [vae/], generator.json."""
    name = cfg.teacher if cfg.teacher in teachers.REGISTRY else str(Path(cfg.teacher).resolve())
    sampler, steps = eval_plan(cfg, teacher)
    info = {
        "method": "dkdm",
        "teacher": name,
        "model_id": teachers.local_path(cfg.model_id),
        "steps": steps,
        "sampler": sampler,
        "sample_shape": list(teacher.sample_shape),
        "num_classes": teacher.num_classes,
        "latent": teacher.latent,
        "default_w": teacher.default_guidance,
        "class_name": type(raw).__name__,
        "training": cfg.method,
    }
    source = teachers.teacher_source(cfg.teacher, cfg.model_id)  # the teacher's pipeline: its scheduler config
    return students.export_ema(ema, lambda model: students.ddpm_pipeline(model, teacher, source), info, run_path)[0]


# --- The command line
USAGE = "dkdm.py sample RUN [--sampler ancestral|ddim] [--steps N] [--n N]"


def parser():
    """The command line: DKDMConfig's flags, and `dkdm.py sample RUN ...`."""
    return cli.add_usage(cli.add_processes(cli.parser_from_dataclass(DKDMConfig, __doc__)), USAGE)


def command(argv):
    if argv[:1] == ["sample"]:  # samples of a finished run (pipelines/students.py)
        return students.sample_command("dkdm", argv[1:])
    args = vars(parser().parse_args(argv))
    dry_run, world = cli.planned(args)
    cfg = DKDMConfig(**args)
    cfg = dataclasses.replace(cfg, **{k: teachers.local_path(getattr(cfg, k)) for k in ("teacher", "model_id")})
    if dry_run:  # the config, what the run will do, its memory per GPU and time: no weight read
        return print0(json.dumps(plan(cfg, world), indent=2))
    train(cfg, *load_inputs(cfg))


def main(argv=None):
    return cli.main_of(command, sys.argv[1:] if argv is None else list(argv))


if __name__ == "__main__":
    sys.exit(main())
