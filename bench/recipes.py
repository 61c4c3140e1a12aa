"""The numbers of docs/recipes.md's cards: every training command of a card, dry-run as it will run.

docs/recipes.md has one card per registry teacher (a `## \\`name\\`` heading); the boot.py and dkdm.py training
lines of its code blocks are the card's commands. Each runs here with `--dry-run --processes N` (N from its
torchrun flags: nodes x processes per node), the registry's hub teachers replaced by directories with their real
architectures, built from the public configs with random weights as bench/gpu.py builds them (nothing is
downloaded; DeepFloyd IF's configs are gated, so its dry-run says what the estimate needs). Recorded per command:
the preset, iterations, batch, learning rate and EMA as resolved, the memory per GPU at that process count and the
batch per GPU that fits 80 GB (the dry-run's estimate), and the GPU-hours of bench/gpu.py's records for that run.

    python bench/run.py recipes      # 73 s here; SD 2.1-base's activations are measured on CPU (bench/memory.py)
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import shlex
import sys
import tempfile
import time
from pathlib import Path


ROOT = Path(__file__).resolve().parents[1]
RECIPES = ROOT / "docs" / "recipes.md"
CARD = re.compile(r"^## `([\w-]+)`", re.M)


def cards(text: str) -> dict[str, list[str]]:
    """{teacher: the command lines of its card's code blocks} (comment lines and blank lines dropped)."""
    heads = list(CARD.finditer(text))
    out = {}
    for k, head in enumerate(heads):
        body = text[head.end() : heads[k + 1].start() if k + 1 < len(heads) else len(text)]
        blocks = re.findall(r"^```\n(.*?)^```", body, re.M | re.S)
        out[head.group(1)] = [ln for b in blocks for ln in b.splitlines() if ln.strip() and not ln.startswith("#")]
    return out


def split(line: str) -> tuple[str, list[str], int]:
    """(script, its arguments, processes) of `python SCRIPT ...` or `torchrun [flags] SCRIPT ...`."""
    words = shlex.split(line, comments=True)
    at = next(k for k, w in enumerate(words) if w.endswith(".py"))
    flags = dict(re.findall(r"--(nnodes|nproc[-_]per[-_]node)[= ](\d+)", " ".join(words[:at])))
    nodes = int(flags.get("nnodes", 1))
    per_node = int(next((v for k, v in flags.items() if k.startswith("nproc")), 1))
    return words[at], words[at + 1 :], nodes * per_node


def is_training(script: str, argv: list[str]) -> bool:
    """A training command (not `sample`, not a dry-run already: the plan of the command beside it)."""
    return script in ("boot.py", "dkdm.py") and argv[:1] != ["sample"] and "--dry-run" not in argv


def dry_run(script: str, argv: list[str], world: int, replace: dict) -> dict:
    """The dry-run's JSON of a training command, its paths swapped for `replace`'s (the teacher by --model-id)."""
    import boot
    import dkdm

    args = [replace.get(a, a) for a in argv]
    teacher = args[args.index("--teacher") + 1] if "--teacher" in args else "digits"
    if teacher in replace.get("teachers", {}):
        args += ["--model-id", replace["teachers"][teacher]]
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        {"boot.py": boot, "dkdm.py": dkdm}[script].command(args + ["--dry-run", "--processes", str(world)])
    return json.loads(out.getvalue())


def hours(time_estimate) -> list[dict]:
    """The GPU-hours of the dry-run's time estimate, one entry per GPU kind measured."""
    if not isinstance(time_estimate, dict):
        return []
    found = []
    for device, text in time_estimate.items():
        h = re.search(r"= ([\d.,-]+) GPU-hours", text)
        date = re.search(r"\((\d{4}-\d\d-\d\d), ", text)
        found.append({"device": device, "gpu_hours": h and h.group(1), "date": date and date.group(1)})
    return found


def row(line: str, shown: dict) -> dict:
    mem = shown["memory_estimate"]
    memory = (
        {
            "GiB": mem["total_at_local_batch_GiB"],
            "local_batch": mem["local_batch"],
            "fits_80GB": mem["max_local_batch_fitting"]["80GB"],
        }
        if isinstance(mem, dict)
        else {"unavailable": mem.split(" (")[0]}
    )
    keep = ("preset", "iters", "batch", "lr", "ema", "student")
    return {
        "command": line,
        **{k: shown[k] for k in keep if k in shown},
        "memory": memory,
        "gpu_hours": hours(shown["time_estimate"]),
    }


def standins(root: Path) -> dict:
    """Teacher directories with the hub teachers' real architectures (random weights), and a prompt file."""
    from bench import gpu, memory

    prompts = root / "prompts.txt"
    prompts.write_text("a photograph of an astronaut riding a horse\n")
    built = {name: gpu.build(name, root, tiny=False) for name in ("ddpm-cifar10", "ldm-celebahq")}
    built["sd21"] = str(memory.sd21_dir(root))  # its component configs: no weights needed for the estimate
    return {"prompts.txt": str(prompts), "teachers": built}


def measure(path: Path = RECIPES) -> dict:
    """{"date", "cards": {teacher: [row per training command]}}; a command the dry-run refuses gets its line."""
    sys.path.insert(0, str(ROOT))
    os.environ["HF_HUB_OFFLINE"] = "1"  # the hub teachers' ids are only named: the stand-ins replace them
    from cli import UserError

    found = {}
    with tempfile.TemporaryDirectory() as tmp:
        replace = standins(Path(tmp))
        for teacher, lines in cards(path.read_text()).items():
            found[teacher] = []
            for line in lines:
                script, argv, world = split(line)
                if not is_training(script, argv):
                    continue
                try:
                    found[teacher].append(row(line, dry_run(script, argv, world, replace)))
                except UserError as e:
                    found[teacher].append({"command": line, "refused": str(e)})
                print(f"{teacher}: {line}", file=sys.stderr, flush=True)
    return {"date": time.strftime("%Y-%m-%d"), "cards": found}


if __name__ == "__main__":  # a part of bench/run.py
    print("bench/recipes.py runs through bench/run.py: python bench/run.py recipes", file=sys.stderr)
    sys.exit(2)
