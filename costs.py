"""What a run will cost before it starts: --dry-run's memory per GPU, from the networks' configs, and its time,
from what bench/gpu.py measured on GPUs.

boot.py and dkdm.py (`memory_estimate` in each) say which forward the student trains with and how
many network passes an iteration makes; `estimate` turns that into bytes. Parameters are counted
(the teacher in its dtype; the student's float32 weights, gradients, AdamW moments and EMA at 20
bytes a parameter) and the student's activations are measured on CPU from the tensors autograd
saves in a training forward at batch 1 and 2. bench/memory.py compares the estimate for SD 2.1 with what a GPU
measured; tests/test_memory_estimate.py with a measured CPU peak.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

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


GPU_RECORDS = Path(__file__).resolve().parent / "bench" / "results.json"  # its "gpu" record: one per device kind


def gpu_records(results: dict) -> dict:
    """{device: record} of bench/results.json's "gpu" entry (one record of before: keyed by its device)."""
    gpu = results.get("gpu") or {}
    return {gpu["device"]: gpu} if "device" in gpu else gpu


def measured_time(row: str, iters: int, world: int, local_batch: int, path=GPU_RECORDS) -> dict | str:
    """--dry-run's time: for every GPU kind with a measured `row` (bench/gpu.py's "boot_sd21", "dkdm_vit_cifar10"),
    its ms per iteration and the GPU-hours of `iters` iterations on `world` processes, the row's batch per GPU
    scaled to `local_batch` (time taken as linear in the batch; said so when it is), with the row's date and source;
    or a line saying none is measured."""
    if row is None:
        return (
            "no GPU measurement for this run: bench/gpu.py times BOOT on sd21 and DKDM's vit student on ddpm-cifar10"
        )
    records = gpu_records(json.loads(Path(path).read_text())) if Path(path).is_file() else {}
    out = {}
    for device, rec in records.items():
        r = rec.get(row)
        if device == "cpu" or rec.get("tiny") or not r:
            continue
        lo, hi = r.get("ms_iter_range") or (r["ms_iter"], r["ms_iter"])
        scale = local_batch / r["batch"]
        hours = [ms * scale * iters * world / 3.6e6 for ms in (lo, hi)]
        span = lambda a, b, f: f"{a:{f}}" if a == b else f"{a:{f}}-{b:{f}}"  # noqa: E731
        out[device] = (
            f"{span(lo, hi, '.0f')} ms/iteration at batch {r['batch']} per GPU"
            + (f", x {scale:g} for this command's {local_batch} (linear in the batch)" if scale != 1 else "")
            + f": {iters:,} iterations on {world} GPU(s) = {span(*hours, ',.1f')} GPU-hours, "
            f"{span(hours[0] / world, hours[1] / world, ',.1f')} h of wall time"
            + (" (one GPU's time per iteration: DDP's all-reduce not counted)" if world > 1 else "")
            + f" ({rec['date']}, {rec['device']}; "
            f"{rec.get('source', 'python bench/run.py gpu')})"
        )
    return out or f"no GPU has measured this run yet ({row}: python bench/run.py gpu on one adds its row)"
