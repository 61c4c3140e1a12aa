"""What a run will cost before it starts: --dry-run's memory per GPU, from the networks' configs.

`boot_memory` and `dkdm_memory` say which forward the student trains with and how many network
passes an iteration makes; `estimate` turns that into bytes. Parameters are counted (the teacher in
its dtype; the student's float32 weights, gradients, AdamW moments and EMA at 20 bytes a parameter)
and the student's activations are measured on CPU from the tensors autograd saves in a training
forward at batch 1 and 2. bench/memory.py compares the estimate for SD 2.1 with what a GPU
measured; tests/test_memory_estimate.py with a measured CPU peak.
"""

from __future__ import annotations

import copy

import torch

import teachers
from runkit import student_autocast


GiB = 2**30
WORKSPACE = 1.15  # peak / saved tensors of a training pass: temporaries (1.14-1.26 measured on CPU, tiny UNets)


def activation_bytes(model, forward, precision: str) -> tuple:
    """(bytes per sample, bytes per pass) of the tensors autograd keeps for backward while `forward(b)`
    runs (parameters excluded), under the precision a GPU run uses (auto: bf16 autocast), from b = 1
    and 2. Per pass: bf16 autocast keeps one bf16 copy of every weight it casts, whatever the batch."""
    params = {p.untyped_storage()._cdata for p in model.parameters()}

    def saved(b):
        seen = {}

        def pack(t):
            if t.untyped_storage()._cdata not in params:
                seen[t.untyped_storage()._cdata] = t.untyped_storage().nbytes()
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            with student_autocast("bf16" if precision == "auto" else precision, "cpu"):
                forward(b).float().mean()
        return sum(seen.values())

    one, two = saved(1), saved(2)
    return two - one, max(2 * one - two, 0)


def estimate(teacher, student, forward, precision: str, batch, passes: dict, extra=(0, None)) -> dict:
    """Memory per GPU at batch = (local batch b, x factor when a pass trains on more than b samples):
    the teacher's UNet, text encoder and VAE in their dtype; the student's weights + grads + AdamW + EMA
    (float32: 20 bytes a parameter); its activations (activation_bytes of `forward`) x WORKSPACE; what
    else grows with b (`extra` = (bytes per sample, name)). The teacher's no-grad passes run before the
    student's and free their memory: not counted. Batches fitting 40 / 80 GB keep 10% for the CUDA context."""
    (b, factor), (extra_per_sample, extra_what) = batch, extra
    (act, fixed), modules = (
        activation_bytes(student, forward, precision),
        [getattr(teacher, n, None) for n in ("unet", "text_encoder", "vae")],
    )
    params = [p for m in modules if m is not None for p in m.parameters()]
    n_t, n_s, t_bytes = (
        sum(p.numel() for p in params),
        sum(p.numel() for p in student.parameters()),
        sum(p.numel() * p.element_size() for p in params),
    )
    static, per = t_bytes + 20 * n_s + fixed, WORKSPACE * act * factor + extra_per_sample
    out = {
        "teacher_params": n_t,
        "student_params": n_s,
        "teacher_weights_GiB": round(t_bytes / GiB, 3),
        "student_weights_grads_adamw_ema_GiB": round(20 * n_s / GiB, 3),
        "autocast_weight_copies_MiB": round(fixed / 2**20, 3),
        "activations_per_sample_MiB": round(WORKSPACE * act / 2**20, 3),
        "activations_batch_factor": factor,
        "local_batch": b,
        "total_at_local_batch_GiB": round((static + b * per) / GiB, 3),
        "max_local_batch_fitting": {
            f"{cap}GB": max(0, int((0.9 * cap * 1e9 - static) // per)) if per else None for cap in (40, 80)
        },
        "network_passes_per_iteration": passes,
        "note": f"estimate: activations = tensors autograd saves per sample (measured on CPU at batch 1 and 2) "
        f"x {WORKSPACE} for temporaries; bf16 autocast's weight copies once per pass; the teacher's "
        "no-grad passes are freed before the student's and not counted",
    }
    if extra_per_sample:
        out[f"{extra_what}_GiB"] = round(b * extra_per_sample / GiB, 3)
    return out


def boot_memory(cfg, world: int) -> dict:
    """boot.py --dry-run: the teacher and student built from configs (no weights read: accelerate's
    init_empty_weights), a training forward y_theta(eps, t) at t = 0.5, the passes of Alg. 1."""
    from accelerate import init_empty_weights

    import boot

    teachers.quiet_libraries()
    teacher = teachers.load_teacher(
        cfg.teacher,
        "meta",
        torch.float16 if cfg.half else torch.float32,
        model_id=cfg.model_id,
        stage=cfg.stage,
        clip=cfg.clip,
        weights=False,
    )
    w = boot.default_weight(cfg, teacher)
    with init_empty_weights():  # parameters on the meta device, nothing else
        student, facts = boot.make_student(teacher, cfg, w)
    student.to_empty(device="cpu").train()  # uninitialised values: only the shapes matter here

    def forward(n):
        cond = {k: torch.zeros((n, *v.shape[1:]), dtype=v.dtype) for k, v in teacher.null.items()} or None
        if cfg.stage == 2:
            cond = {
                **cond,
                "lowres": torch.zeros(n, *teacher.sample_shape),
                "class_labels": torch.full((n,), cfg.noise_level),
            }
        eps, t = torch.zeros(n, *teacher.sample_shape), torch.full((n,), 0.5)
        return boot.y_theta(student, facts, eps, t, teachers.cond_to(cond, "cpu"), w)

    cfg_pair, k = teacher.guided and (w is not None or cfg.w_max is not None) and w != 1.0, cfg.boundary_every
    passes = {
        "teacher_forwards": (2 if cfg.solver == "heun" else 1) + (1 / k if k else 0),
        "teacher_forward_batch": "2 b (CFG pair)" if cfg_pair else "b",
        "student_forwards_no_grad": 1,
        "student_forward_backward": 1,
        "student_train_batch": f"2 b every {k} iterations (boundary), else b" if k else "b",
    }
    return estimate(teacher, student, forward, cfg.precision, (cfg.batch // world, 2 if k else 1), passes)


def dkdm_memory(teacher, student, cfg, world: int) -> dict:
    """dkdm.py --dry-run: a training forward of the student at T/2, one teacher forward per iteration,
    the knowledge pool's bytes per sample (4 C H W for x, 8 for i, 8 for the label)."""
    import dkdm

    (C, H, W), b = teacher.sample_shape, cfg.batch // world
    pool = dkdm.pool_size(cfg, teacher.schedule.T, b) if cfg.method in ("dynamic", "shuffled", "iterative") else 0
    pool_bytes = pool / b * (4 * C * H * W + 16)
    model = copy.deepcopy(student).cpu().train()
    cond = lambda n: {"class_labels": torch.zeros(n, dtype=torch.long)} if teacher.num_classes else None  # noqa: E731
    T = teacher.schedule.T

    def forward(n):
        return teachers.call_net(model, torch.zeros(n, *teacher.sample_shape), torch.full((n,), T / 2), cond(n))

    passes = {
        "teacher_forwards": int(pool_bytes > 0),
        "student_forward_backward": 1,
        "teacher_forward_batch": "2 b (CFG pair)"
        if teacher.guided and teacher.default_guidance not in (None, 1.0)
        else "b",
    }
    return estimate(teacher, model, forward, cfg.precision, (b, 1), passes, (pool_bytes, "pool"))
