"""Speed benchmarks, each a ratio measured in one run on one thread:

- per-iteration time of boot.py / dkdm.py divided by the time of the network passes the
  iteration needs (the floor, timed here on the same students and teacher, same batch);
- dkdm.py iteration time with a T = 100 teacher vs the T = 1000 one (the pool makes it flat in T).

The one-step vs DDIM-50 throughput ratio comes from evaluate.py's images/s (same run, same batch).
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path


ROOT = Path(__file__).resolve().parents[1]


def _time(fn, reps=20, warmup=3):
    for _ in range(warmup):
        fn()
    start = time.perf_counter()
    for _ in range(reps):
        fn()
    return 1e3 * (time.perf_counter() - start) / reps


def _ms_per_iter(run_dir: Path, method: str):
    recs = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line]
    recs = recs[1:] or recs  # the first window holds warm-up
    if method == "boot":
        return statistics.median(r["ms_teacher"] + r["ms_student"] + r["ms_other"] for r in recs)
    return statistics.median(r["ms_iter"] for r in recs)


def _train(argv, out):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run(
        [sys.executable, *argv, "--out", str(out)],
        cwd=ROOT,
        env=env,
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def floors(boot_run: Path, dkdm_student_dir: Path, boot_batch=128, dkdm_batch=64):
    """ms of the network passes one BOOT (Heun, boundary every 4) and one DKDM iteration need."""
    import torch

    import teachers
    from pipelines import students
    from pipelines.pipeline_boot import boot_generate

    torch.set_num_threads(1)
    t = teachers.load_teacher("digits")
    gen = students.ExportedStudent(boot_run)
    s_boot = gen.model.train().requires_grad_(True)
    s_dkdm = teachers.load_teacher(str(dkdm_student_dir)).unet.train().requires_grad_(True)
    info = gen.info

    def teacher_fwd(b):
        x = torch.randn(b, 1, 8, 8)
        cond = t.label_cond(torch.randint(0, 10, (b,)))
        return lambda: t.x0(x, torch.rand(b), cond)

    def boot_student(grad):
        x, c = torch.randn(boot_batch, 1, 8, 8), gen.label_cond(torch.randint(0, 10, (boot_batch,)))

        def f():
            with torch.set_grad_enabled(grad):
                y = boot_generate(s_boot, info, x, torch.rand(boot_batch), c)
                if grad:
                    y.square().mean().backward()

        return f

    def dkdm_student():
        x, c = torch.randn(dkdm_batch, 1, 8, 8), {"class_labels": torch.randint(0, 10, (dkdm_batch,))}

        def f():
            teachers.call_net(s_dkdm, x, torch.randint(0, 1000, (dkdm_batch,)), c).square().mean().backward()

        return f

    with torch.no_grad():
        tf_boot, tf_dkdm = _time(teacher_fwd(boot_batch)), _time(teacher_fwd(dkdm_batch))
    sb_fwd, sb_fb, sd_fb = _time(boot_student(False)), _time(boot_student(True)), _time(dkdm_student())
    return {
        "boot_floor_ms": 2.25 * tf_boot + sb_fwd + 1.25 * sb_fb,  # Heun: 2 teacher passes, +1/4 boundary
        "boot_parts_ms": {"teacher_fwd": tf_boot, "student_fwd": sb_fwd, "student_fwd_bwd": sb_fb},
        "dkdm_floor_ms": tf_dkdm + sd_fb,
        "dkdm_parts_ms": {"teacher_fwd": tf_dkdm, "student_fwd_bwd": sd_fb},
    }


def digits_T100(out: Path):
    """The digits teacher's network on a T = 100 cosine schedule (for timing only)."""
    import shutil

    from diffusers import DDPMScheduler

    import teachers

    if out.exists():
        shutil.rmtree(out)
    shutil.copytree(teachers.DIGITS_DIR, out, ignore=shutil.ignore_patterns("*.png"))
    cfg = DDPMScheduler.load_config(str(out / "scheduler"))
    DDPMScheduler.from_config({**cfg, "num_train_timesteps": 100}).save_pretrained(out / "scheduler")
    return out


def measure():
    base = ROOT / "runs" / "bench" / "speed"
    base.mkdir(parents=True, exist_ok=True)
    _train(["boot.py", "--iters", "150", "--log-every", "25"], base / "boot")
    _train(["dkdm.py", "--iters", "600", "--log-every", "100"], base / "dkdm-T1000")
    _train(
        ["dkdm.py", "--iters", "600", "--log-every", "100", "--teacher", str(digits_T100(base / "digits-T100"))],
        base / "dkdm-T100",
    )
    f = floors(base / "boot", base / "dkdm-T1000" / "student")
    boot_ms, dkdm_ms = _ms_per_iter(base / "boot", "boot"), _ms_per_iter(base / "dkdm-T1000", "dkdm")
    t100_ms = _ms_per_iter(base / "dkdm-T100", "dkdm")
    return {
        **f,
        "boot_iter_ms": boot_ms,
        "dkdm_iter_ms": dkdm_ms,
        "dkdm_T100_iter_ms": t100_ms,
        "boot_ratio": boot_ms / f["boot_floor_ms"],
        "dkdm_ratio": dkdm_ms / f["dkdm_floor_ms"],
        "dkdm_T1000_over_T100": dkdm_ms / t100_ms,
        "commands": [
            "python boot.py --iters 150",
            "python dkdm.py --iters 600",
            "python dkdm.py --iters 600 --teacher <digits network, T=100 schedule>",
        ],
        "threads": 1,
        "date": time.strftime("%Y-%m-%d"),
    }


if __name__ == "__main__":  # a part of bench/run.py, not a command of its own
    print("bench/speed.py runs through bench/run.py: python bench/run.py speed", file=sys.stderr)
    sys.exit(2)
