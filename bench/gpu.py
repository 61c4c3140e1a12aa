"""What a run costs on the device at hand, before any weight is downloaded.

Builds teachers with the real architectures of the registry's hub teachers from their public configs
and random weights (same cost, no quality; nothing is downloaded) and measures, on the GPU it finds
(else the CPU), one row per measurement:

  * every kind of teacher pass against the teacher's bare forward at the same batch and dtype: DKDM's
    training step and shuffle-denoise pool initialisation, the data-free synthetic set (ancestral),
    evaluate.py's teacher rows (DDIM), BOOT's guided teacher; the ratio is pass rate / bare rate;
  * ms per iteration with the teacher / student / other split (BOOT with the teacher-copy student,
    DKDM with the DiT student), samples/s, torch.cuda.max_memory_allocated beside --dry-run's
    estimate, the checkpoint's size and save time;
  * model FLOP utilisation on a GPU: FLOPs of a pass (torch.utils.flop_counter) per second, over the
    device's own bf16 matmul rate measured in the same run.

    python bench/gpu.py                 # GPU: sd21, ddpm-cifar10, ldm-celebahq, digits (~8 min, one H200)
                                        # CPU: digits (the others take hours there; --teachers asks)
    python bench/gpu.py --tiny          # tiny configs of the same families (the fast suite's smoke test)
    python bench/run.py gpu             # the same, rows into bench/results.json and docs/gpu.md

Configs: SD 2.1-base's component configs (bench/memory.py); google/ddpm-cifar10-32's UNet2DModel;
CompVis/ldm-celebahq-256 from the LDM paper's published celebahq-ldm-vq-4 config. DeepFloyd IF's
configs sit behind its licence gate: not built.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path


ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

import boot  # noqa: E402
import cli  # noqa: E402
import dkdm  # noqa: E402
import runkit  # noqa: E402
import teachers  # noqa: E402
from bench import memory  # noqa: E402


CIFAR_UNET = dict(
    sample_size=32,
    in_channels=3,
    out_channels=3,
    layers_per_block=2,
    block_out_channels=[128, 256, 256, 256],
    down_block_types=["DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"],
    up_block_types=["UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"],
    norm_eps=1e-6,
    downsample_padding=0,
    flip_sin_to_cos=False,
    freq_shift=1,
)
CELEBA_UNET = dict(
    sample_size=64,
    in_channels=3,
    out_channels=3,
    layers_per_block=2,
    block_out_channels=[224, 448, 672, 896],
    down_block_types=["DownBlock2D"] + ["AttnDownBlock2D"] * 3,
    up_block_types=["AttnUpBlock2D"] * 3 + ["UpBlock2D"],
    attention_head_dim=32,
)
CELEBA_VQ = dict(
    in_channels=3,
    out_channels=3,
    latent_channels=3,
    num_vq_embeddings=8192,
    layers_per_block=2,
    block_out_channels=[128, 256, 512],
    down_block_types=["DownEncoderBlock2D"] * 3,
    up_block_types=["UpDecoderBlock2D"] * 3,
)
TINY_UNET = dict(
    layers_per_block=1,
    block_out_channels=[16, 32],
    down_block_types=["DownBlock2D", "AttnDownBlock2D"],
    up_block_types=["AttnUpBlock2D", "UpBlock2D"],
    norm_num_groups=8,
)


def _save(module, path, dtype):
    torch.manual_seed(0)
    module.to(dtype).save_pretrained(path)


def build(name: str, root: Path, tiny: bool) -> str:
    """A pipeline directory of teacher `name` with random weights (float16 on disk, as the hub's)."""
    from diffusers import DDPMScheduler, UNet2DModel, VQModel

    if name == "digits":
        return "digits"
    d, half = root / name, torch.float16
    sched = (
        dict(beta_schedule="linear")
        if name == "ddpm-cifar10"
        else dict(beta_schedule="scaled_linear", beta_start=0.0015, beta_end=0.0195)
    )
    if name == "sd21":
        return str(memory.sd21_dir(root, weights=True, tiny=tiny))
    unet = {**(CIFAR_UNET if name == "ddpm-cifar10" else CELEBA_UNET), **(TINY_UNET if tiny else {})}
    if tiny:
        unet.update(sample_size=8, attention_head_dim=8)
    _save(UNet2DModel(**unet), d / "unet", half)
    DDPMScheduler(**sched).save_pretrained(d / "scheduler")
    index = {
        "_class_name": "DDPMPipeline",
        "unet": ["diffusers", "UNet2DModel"],
        "scheduler": ["diffusers", "DDPMScheduler"],
    }
    if name == "ldm-celebahq":
        vq = {
            **CELEBA_VQ,
            **(
                dict(
                    block_out_channels=[16, 32],
                    down_block_types=["DownEncoderBlock2D"] * 2,
                    up_block_types=["UpDecoderBlock2D"] * 2,
                    norm_num_groups=8,
                )
                if tiny
                else {}
            ),
        }
        _save(VQModel(**vq), d / "vqvae", half)
        index.update(_class_name="LDMPipeline", vqvae=["diffusers", "VQModel"])
    (d / "model_index.json").write_text(json.dumps(index))
    return str(d)


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def seconds(fn, device, reps=5, warmup=2):
    """Mean seconds of fn() over `reps` calls after `warmup`, with the device synchronised around them."""
    for _ in range(warmup):
        fn()
    sync(device)
    start = time.perf_counter()
    for _ in range(reps):
        fn()
    sync(device)
    return (time.perf_counter() - start) / reps


def bare_rate(teacher, b, device, cfg_pair=False):
    """Samples/s of the teacher's network alone: one forward at batch b in its dtype, no grad."""
    x = torch.randn(b, *teacher.sample_shape, device=device, dtype=teacher.dtype)
    t = torch.full((b,), 500.0, device=device)
    cond = teacher.null and {k: v.expand(b, *v.shape[1:]).to(device) for k, v in teacher.null.items()}
    if cfg_pair:  # BOOT's guided teacher: one forward of the conditional and the null half together
        x, t, cond = torch.cat([x, x]), torch.cat([t, t]), teachers.cat_cond(cond, cond)
    with torch.no_grad():
        return b / seconds(lambda: teachers.call_net(teacher.unet, x, t, cond or None), device)


def matmul_peak(device):
    """FLOP/s of a large matmul on this device: bf16 on a GPU, float32 on CPU (the MFU denominator)."""
    n, dtype = (8192, torch.bfloat16) if device.type == "cuda" else (2048, torch.float32)
    a = torch.randn(n, n, device=device, dtype=dtype)
    return max(2 * n**3 / seconds(lambda: a @ a, device, reps=3) for _ in range(3))


def flops(fn) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def teacher_passes(name, teacher, device, b, tiny):
    """DKDM's and evaluate.py's teacher passes against the bare forward at the same batch and dtype."""
    rows, T, w = [], teacher.schedule.T, teacher.default_guidance
    g = torch.Generator(device).manual_seed(0)
    bare = bare_rate(teacher, b, device)
    pool = dkdm.init_noise(teacher, 4 * b, g)
    step = lambda: dkdm.knowledge_step(teacher, pool, b, w)  # noqa: E731 - DKDM Alg. 1 lines 4 and 8
    rows.append((f"{name}: DKDM training step (teacher_step on the pool)", b, b / seconds(step, device), bare))
    n = b if tiny else 2 * b  # shuffle denoise of a small pool: its chunks average about n / 2
    start = time.perf_counter()
    init = dkdm.init_shuffle(teacher, n, g, w, batch=b)
    sync(device)
    evals = float((T - 1 - init.i).sum())
    rows.append(
        (
            f"{name}: DKDM shuffle-denoise init (pool {n})",
            n // 2,
            evals / (time.perf_counter() - start),
            bare_rate(teacher, n // 2, device),
        )
    )
    steps = 10 if tiny else 50
    draw = lambda m: dkdm.fresh_samples(teacher, m, g)  # noqa: E731
    synth = seconds(lambda: dkdm.sample_set(teacher, draw, b, steps, g, w), device, reps=1, warmup=1)
    rows.append((f"{name}: data-free synthetic set (ancestral-{steps})", b, b * steps / synth, bare))
    noise = torch.randn(b, *teacher.sample_shape, device=device)
    cond = teacher.label_cond(torch.arange(b) % teacher.num_classes) if teacher.num_classes else None
    ddim = seconds(lambda: teachers.ddim(teacher, noise, steps, cond, w), device, reps=1, warmup=1)
    rows.append((f"{name}: evaluate.py teacher row (DDIM-{steps})", b, b * steps / ddim, bare))
    return rows


def checkpoint_stall(state, out: Path, every: int, ms_iter: float, device) -> dict:
    """What a checkpoint costs the training loop (runkit.RunDir.checkpoint): rank 0 copies the state to host memory
    (the stall), a background writer saves the copy while every rank trains on; the loop waits for the writer only
    when the save outlasts the `every` iterations to the next checkpoint. Both parts timed here, on this device."""
    sync(device)
    start = time.perf_counter()
    snapshot = runkit.host_copy(state)
    copy_s = time.perf_counter() - start
    start = time.perf_counter()
    runkit.save_checkpoint(out / "latest.pt", snapshot)
    write_s, interval_s = time.perf_counter() - start, every * ms_iter / 1000
    stall_s = copy_s + max(0.0, write_s - interval_s)
    return {
        "checkpoint_GB": round((out / "latest.pt").stat().st_size / 1e9, 2),
        "checkpoint_save_s": round(write_s, 2),  # what every rank waited for when rank 0 saved in the loop
        "checkpoint_copy_s": round(copy_s, 3),
        "checkpoint_every": every,
        "checkpoint_stall_s": round(stall_s, 3),
        "checkpoint_stall_share": round(stall_s / (interval_s + stall_s), 5),
        "checkpoint_save_share": round(write_s / (interval_s + write_s), 5),
    }


def boot_iteration(teacher_dir, device, b, tiny, out: Path):
    """BOOT on an SD-size teacher with the teacher-copy student: ms per iteration (teacher / student /
    other), samples/s, peak memory beside --dry-run's estimate, checkpoint size and save time."""
    cfg = boot.resolve(boot.BootConfig(teacher=teacher_dir, half=device.type == "cuda", batch=b))
    teacher = teachers.load_teacher(cfg.teacher, device, runkit.teacher_dtype(cfg.half, device))
    context = boot.Context(teacher, ["a photograph of an astronaut riding a horse"], teacher, None, (None, None))
    net, student = boot.make_student(teacher, cfg, boot.default_weight(cfg, teacher))
    raw, ema, opt = runkit.optimisation(net, cfg, device)
    meter, g = runkit.Meter(device, ("loss",)), torch.Generator().manual_seed(0)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

    def iteration(k):
        eps = torch.randn((b, *teacher.sample_shape), generator=g).to(device)
        t = boot.sample_times(g, cfg, b, k).to(device)
        cond, w = context.draw(g, b, 0, b)
        loss, _ = boot.boot_step(raw, student, teacher, (eps, t, cond, w), cfg, k % cfg.boundary_every == 0, meter)
        with meter.time("student"):
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            ema.update(raw)
        meter.add(loss=loss)

    for k in range(2):  # warm-up (a boundary iteration among them: the peak)
        iteration(k)
    meter.reset()
    for k in range(2, 6 if tiny else 10):
        iteration(k)
    split = meter.split()
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    estimate = boot.memory_estimate(cfg, 1)["total_at_local_batch_GiB"]
    state = {"model": raw.state_dict(), "ema": ema.state_dict(), "opt": opt.state_dict()}
    return {
        **split,
        "samples_per_s": round(1000 * b / split["ms_iter"], 1),
        "max_memory_allocated_GiB": peak,
        "estimate_GiB": estimate,
        **checkpoint_stall(state, out, cfg.ckpt_every, split["ms_iter"], device),
        "batch": b,
        "teacher_flops": flops(
            lambda: boot.guided_teacher(teacher, context.fixed(1), 7.5)(
                torch.zeros(1, *teacher.sample_shape, device=device), torch.full((1,), 0.5, device=device)
            )
        ),
        "student_flops": 3
        * flops(
            lambda: boot.y_theta(
                raw,
                student,
                torch.zeros(1, *teacher.sample_shape, device=device),
                torch.zeros(1, device=device),
                context.fixed(1),
                7.5,
            )
        ),
    }


def dkdm_iteration(teacher, device, b, out: Path):
    """DKDM with the DiT student on the teacher: ms per iteration (teacher / student / other)."""
    cfg = dkdm.DKDMConfig(student="vit", precision="auto")
    student = dkdm.build_student(cfg, teacher)
    raw, ema, opt = runkit.optimisation(student, cfg, device)
    g = torch.Generator(device).manual_seed(0)
    pool, meter = dkdm.init_noise(teacher, 4 * b, g), runkit.Meter(device, ("loss",))

    def iteration():
        loss, _, _ = dkdm.student_step(cfg, teacher, raw, pool, b, teacher.default_guidance, meter)
        with meter.time("student"):
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            ema.update(raw)
        meter.add(loss=loss)

    for _ in range(2):
        iteration()
    meter.reset()
    for _ in range(5):
        iteration()
    split, state = meter.split(), {"model": raw.state_dict(), "ema": ema.state_dict(), "opt": opt.state_dict()}
    return {
        **split,
        "samples_per_s": round(1000 * b / split["ms_iter"], 1),
        **checkpoint_stall(state, out, cfg.ckpt_every, split["ms_iter"], device),
        "batch": b,
        "student_params": sum(p.numel() for p in student.parameters()),
    }


def measure(names, tiny=False) -> dict:
    device = runkit.env()[2]
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    peak = matmul_peak(device)
    out = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "tiny": tiny,
        "torch": torch.__version__,
        "matmul_peak_tflops": round(peak / 1e12, 2),
        "passes": [],
        "date": time.strftime("%Y-%m-%d"),
    }
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            where = build(name, Path(tmp), tiny)
            teachers.quiet_libraries()
            if name == "sd21":
                out["boot_sd21"] = boot_iteration(where, device, 2 if tiny else 8, tiny, Path(tmp))
                continue
            dtype = torch.float16 if device.type == "cuda" else torch.float32
            teacher = teachers.load_teacher(where, device, dtype)
            b = 16 if tiny else (128 if device.type == "cuda" or name == "digits" else 32)
            rows = teacher_passes(name, teacher, device, b, tiny)
            cond = teacher.label_cond([0]) if teacher.num_classes else None
            fl = flops(
                lambda: teacher.p_mean_logvar(
                    torch.zeros(1, *teacher.sample_shape, device=device), torch.tensor([500], device=device), cond
                )
            )
            out["passes"] += [
                {
                    "pass": p,
                    "batch": bb,
                    "samples_per_s": round(r, 1),
                    "bare_samples_per_s": round(bare, 1),
                    "ratio": round(r / bare, 3),
                    "mfu": round(r * fl / peak, 4),
                }
                for p, bb, r, bare in rows
            ]
            if name == "ddpm-cifar10":
                out["dkdm_vit_cifar10"] = dkdm_iteration(teacher, device, 16 if tiny else 128, Path(tmp))
    return out


def ms(r, key: str) -> str:
    """A row's milliseconds: the measured value, or the range a record of before gave."""
    lo, hi = r.get(f"{key}_range") or (r.get(key), r.get(key))
    return "–" if lo is None else f"{lo:.0f}" if lo == hi else f"{lo:.0f}–{hi:.0f}"


def iteration_line(what: str, r: dict) -> str:
    """A training iteration's time split, memory and checkpoint, as measured."""
    line = (
        f"\n{what}, batch {r['batch']}: {ms(r, 'ms_iter')} ms / iteration (teacher {ms(r, 'ms_teacher')}, "
        f"student {ms(r, 'ms_student')}, other {ms(r, 'ms_other')})"
        + (f", {r['samples_per_s']:,.0f} samples/s" if "samples_per_s" in r else "")
    )
    if r.get("max_memory_allocated_GiB") is not None:
        line += (
            f"; peak memory {r['max_memory_allocated_GiB']:.1f} GiB (--dry-run estimate {r['estimate_GiB']:.1f} GiB)"
        )
    if "checkpoint_stall_s" in r:
        line += (
            f"; checkpoint {r['checkpoint_GB']} GB: saved in {r['checkpoint_save_s']} s by a background writer while "
            f"the loop trains on, which stops {r['checkpoint_stall_s']} s for the host copy, "
            f"{r['checkpoint_stall_share']:.2%} of the training time at one checkpoint every {r['checkpoint_every']} "
            f"iterations ({r['checkpoint_save_share']:.2%} when every rank waited for the save)"
        )
    elif "checkpoint_GB" in r:
        line += f"; checkpoint {r['checkpoint_GB']} GB"
    return line


def table(res) -> str:
    lines = [
        f"{res['device']}, torch {res['torch']} ({res['date']}; "
        + (
            res["source"]
            if "source" in res
            else "hub teachers rebuilt from their public configs with random weights, digits the embedded one"
            f"{', tiny configs' if res['tiny'] else ''}; matmul peak {res['matmul_peak_tflops']} TFLOP/s"
        )
        + ")",
    ]
    if res.get("passes"):
        mfu = (lambda r: f"{r['mfu']:.1%}") if res["device"] != "cpu" else (lambda r: "–")  # a GPU's figure
        lines += [
            "",
            "| teacher pass | batch | samples/s | bare forward samples/s | ratio | MFU |",
            "|---|---|---|---|---|---|",
        ]
        lines += [
            f"| {r['pass']} | {r['batch']} | {r['samples_per_s']:,.0f} | {r['bare_samples_per_s']:,.0f} | "
            f"**{r['ratio']:.2f}** | {mfu(r)} |"
            for r in res["passes"]
        ]
    for key, what in (
        ("boot_sd21", "BOOT, SD 2.1-base, teacher copy"),
        ("dkdm_vit_cifar10", "DKDM, DiT student, CIFAR-10 teacher"),
    ):
        if res.get(key):
            lines.append(iteration_line(what, res[key]))
    return "\n".join(lines)


def with_record(results: dict, record: dict) -> dict:
    """bench/results.json's "gpu" entry with `record` added: one record per device kind, a new one replacing only
    its own device's (a record of before, unkeyed, keyed by its device)."""
    import costs

    return {**costs.gpu_records(results), record["device"]: record}


def default_teachers(tiny=False):
    return ["sd21", "ddpm-cifar10", "ldm-celebahq", "digits"] if torch.cuda.is_available() or tiny else ["digits"]


def main(argv=None):
    p = cli.OneLineParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tiny", action="store_true", help="tiny configs (the CPU smoke test)")
    p.add_argument("--teachers", nargs="+", choices=["sd21", "ddpm-cifar10", "ldm-celebahq", "digits"])
    p.add_argument("--json", help="write the measurements here")
    a = p.parse_args(argv)
    os.environ.setdefault("TQDM_DISABLE", "1")  # the table is the output
    res = measure(a.teachers or default_teachers(a.tiny), a.tiny)
    print(table(res))
    if a.json:
        Path(a.json).write_text(json.dumps(res, indent=1))
    return res


if __name__ == "__main__":
    main()
