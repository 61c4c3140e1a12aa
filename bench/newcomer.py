"""The figures on README.md's first screen, measured on this machine:

- `--help` of each script: CPU seconds (user + system) of a fresh interpreter, median of 3;
- the installed size of this virtual environment, and the part torch's CUDA build brings;
- the default `python boot.py` on 2 cores with the README's thread setting (none: torch's own
  default of one thread per core): from a short window of iterations (`short`), or the whole
  default run (`full`, ~20 min);
- the README's fast test command, `python -m pytest -q -m "not slow"` (wall time).

Each record keeps the load average when it was taken: figures measured while other jobs shared
the cores are labelled so in the README.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path


ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = ("boot.py", "dkdm.py", "evaluate.py")
DEFAULT_ITERS = 3000  # boot.py's default --iters for the digits teacher


def _env(**extra):
    """This environment without a thread setting (the README's commands set none), plus extra."""
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    return {**env, **extra}


def _cpu_seconds(argv) -> float:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    subprocess.run(argv, cwd=ROOT, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def help_cpu(reps: int = 3) -> dict:
    """CPU seconds of `python SCRIPT --help` per script, and of `import torch` for comparison."""
    out = {
        s: round(statistics.median(_cpu_seconds([sys.executable, s, "--help"]) for _ in range(reps)), 3)
        for s in SCRIPTS
    }
    out["import torch"] = round(
        statistics.median(_cpu_seconds([sys.executable, "-c", "import torch"]) for _ in range(reps)), 3
    )
    return out


def _tree_bytes(path: Path) -> int:
    total, stack = 0, [path]
    while stack:
        with os.scandir(stack.pop()) as it:
            for e in it:
                if e.is_dir(follow_symlinks=False):
                    stack.append(e.path)
                elif e.is_file(follow_symlinks=False):
                    total += e.stat(follow_symlinks=False).st_size
    return total


def install_size() -> dict:
    """GB of this virtual environment; of it, torch + its CUDA libraries (nvidia-*, triton)."""
    prefix = Path(sys.prefix)
    site = next(prefix.glob("lib/python3*/site-packages"))
    cuda = [p for p in site.iterdir() if p.is_dir() and (p.name in ("torch", "triton") or p.name.startswith("nvidia"))]
    import torch

    return {
        "venv_gb": round(_tree_bytes(prefix) / 1e9, 2),
        "torch_and_cuda_gb": round(sum(_tree_bytes(p) for p in cuda) / 1e9, 2),
        "torch": torch.__version__,
        "cuda_build": torch.version.cuda is not None,
    }


def boot_default(full: bool = False, iters: int = 30, window: int = 5) -> dict:
    """The default `python boot.py` at the README's thread setting: the whole run (full) or the
    median ms/iteration of the windows after the first over `iters` iterations, scaled to 3,000."""
    out = ROOT / "runs" / "bench" / ("newcomer-boot-full" if full else "newcomer-boot-short")
    argv = [sys.executable, "boot.py", "--out", str(out)]
    if not full:
        argv += [
            "--iters",
            str(iters),
            "--log-every",
            str(window),
            "--ckpt-every",
            str(10 * iters),
            "--preview",
            "0",
            "--check",
            "0",
        ]
    shutil.rmtree(out, ignore_errors=True)  # a timing starts from scratch (a rerun would resume)
    load = os.getloadavg()[0]
    start = time.time()
    subprocess.run(argv, cwd=ROOT, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
    wall = time.time() - start
    recs = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]
    ms = statistics.median(r["ms_teacher"] + r["ms_student"] + r["ms_other"] for r in (recs[1:] or recs))
    rec = {
        "full": full,
        "iters": recs[-1]["step"],
        "ms_per_iter": round(ms, 1),
        "wall_s": round(wall, 1),
        "load_before": round(load, 2),
        "load_after": round(os.getloadavg()[0], 2),
        "cores": os.cpu_count(),
    }
    if not full:  # start-up and the end (export, check) are in the wall time of the short run too
        rec["estimate_min"] = round((wall - iters * ms / 1e3 + DEFAULT_ITERS * ms / 1e3) / 60, 1)
    return rec


def fast_tests() -> dict:
    """Wall time of the README's test command after install (the pytest part)."""
    load = os.getloadavg()[0]
    start = time.time()
    p = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-m", "not slow", "-p", "no:cacheprovider"],
        cwd=ROOT,
        env=_env(),
        capture_output=True,
        text=True,
    )
    summary = (p.stdout.strip().splitlines() or [""])[-1]
    failed = [line for line in p.stdout.splitlines() if line.startswith(("FAILED", "ERROR"))]
    return {
        "wall_s": round(time.time() - start, 1),
        "summary": summary,
        "returncode": p.returncode,
        "failed": failed,
        "load_before": round(load, 2),
        "load_after": round(os.getloadavg()[0], 2),
        "cores": os.cpu_count(),
    }


PARTS = {
    "help": lambda: {"cpu_s": help_cpu()},
    "install": install_size,
    "boot": boot_default,
    "boot-full": lambda: boot_default(full=True),
    "tests": fast_tests,
}
KEYS = {"help": "help", "install": "install", "boot": "boot_default", "boot-full": "boot_default", "tests": "tests"}


def measure(parts=("help", "install", "boot")) -> dict:
    """{record name: record} for the parts asked for; each record carries its date."""
    return {KEYS[p]: {**PARTS[p](), "date": time.strftime("%Y-%m-%d")} for p in parts}


if __name__ == "__main__":  # a part of bench/run.py, not a command of its own
    print("bench/newcomer.py runs through bench/run.py: python bench/run.py newcomer", file=sys.stderr)
    sys.exit(2)
