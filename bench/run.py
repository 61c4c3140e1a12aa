"""Benchmarks behind every table of README.md and docs/: each row is a command run here, on this CPU.

    python bench/run.py --list                 # experiments, their commands and groups
    python bench/run.py boot dkdm speed        # run groups or single experiments (finished ones
                                               #   are skipped; --force reruns), two at a time
    python bench/run.py --render               # rewrite the bench blocks of README.md and docs/

Every experiment trains with boot.py / dkdm.py into runs/bench/<name> (a rerun resumes or, when
finished, only re-evaluates) and scores with evaluate.py; the records land in
bench/results.json together with the exact commands, the wall time and the thread count.
`--render` turns results.json into the tables of README.md and docs/*.md (between `<!-- bench:NAME -->`
markers); tests/test_bench.py fails when they and results.json disagree, so every number in them
is one that this script produced.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path


ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results.json"
PY = sys.executable
N_EVAL = 1000  # samples per FD (FD is biased by n: every row of a table uses the same n)


@dataclasses.dataclass
class Exp:
    name: str
    group: str
    about: str
    train: list[str] | None  # argv after `python`; None = evaluation only
    eval: list[str] | None  # argv after `python evaluate.py`
    run_dir: str | None = None
    curve: tuple = ()  # evaluate after each of these --iters: one run, resumed (bitwise a straight run)
    threads: int | None = 1  # OMP_NUM_THREADS of the run; None: torch's default (one per core)


def boot(name, about, *flags, iters=1000):
    out = f"runs/bench/{name}"
    return Exp(
        name,
        "boot",
        about,
        ["boot.py", "--iters", str(iters), "--out", out, *flags],
        ["--run", out, "--nfe", "50", "--n", str(N_EVAL)],
        out,
    )


def dkdm(name, about, flags, out=None):
    """A dkdm.py run; `out` None = its own directory under runs/bench (else the command's --out)."""
    out = out or f"runs/bench/{name}"
    train = ["dkdm.py", *flags] + ([] if out.startswith("runs/dkdm-digits-") else ["--out", out])
    return Exp(name, "dkdm", about, train, ["--run", out, "--nfe", "50", "--n", str(N_EVAL)], out)


EXPERIMENTS = [
    Exp(
        "teacher",
        "boot",
        "teacher DDIM-1/2/5/10/50 and real-vs-real",
        None,
        ["--teacher", "digits", "--nfe", "1", "2", "5", "10", "50", "--n", str(N_EVAL)],
    ),
    boot("boot-default", "BOOT, the default command (Heun, boundary every 4, uniform t)", iters=3000),
    Exp(
        "boot-long",
        "boot",
        "BOOT, the longer command (the default run continued to 9,000 iterations)",
        ["boot.py", "--iters", "9000"],
        ["--run", "runs/boot-digits", "--nfe", "50", "--n", str(N_EVAL)],
        "runs/boot-digits",
    ),
    boot("boot-huber", "BOOT default with the pseudo-Huber distance (--loss huber)", "--loss", "huber", iters=3000),
    boot("boot-small", "BOOT default into a smaller fresh UNet (--student small)", "--student", "small", iters=3000),
    boot("boot-seed1", "BOOT default, seed 1", "--seed", "1", iters=3000),
    boot("boot-huber-seed1", "BOOT default with --loss huber, seed 1", "--loss", "huber", "--seed", "1", iters=3000),
    boot("boot-seed2", "BOOT default, seed 2", "--seed", "2", iters=3000),
    boot("boot-heun", "BOOT Heun, boundary every 4, uniform t"),
    boot("boot-euler", "Euler targets (Eq. 7)", "--solver", "euler"),
    boot("boot-no-boundary", "no boundary loss (Eq. 8 off)", "--boundary-every", "0"),
    boot("boot-progressive", "progressive time schedule", "--time-sampling", "progressive"),
    boot(
        "boot-table3-lr",
        "Table 3's lr 1e-4 and EMA 0.9999 (3,000 iterations)",
        "--lr",
        "1e-4",
        "--ema",
        "0.9999",
        iters=3000,
    ),
    dkdm(
        "dkdm-default",
        "DKDM, the default command (cnn student, dynamic, staggered init M = 512)",
        [],
        out="runs/dkdm-digits-cnn-dynamic",
    ),
    *[dkdm(f"dkdm-default-seed{s}", f"DKDM, the default command, seed {s}", ["--seed", str(s)]) for s in (1, 2)],
    dkdm(
        "dkdm-data-10k",
        "baseline: real digits (data-based training)",
        ["--method", "data"],
        out="runs/dkdm-digits-cnn-data",
    ),
    dkdm("dkdm-dynamic", "dynamic iterative (staggered init, M = 512)", ["--iters", "2000"], out="runs/abl-dynamic"),
    dkdm("dkdm-shuffled", "shuffled iterative", ["--method", "shuffled", "--iters", "2000"], out="runs/abl-shuffled"),
    dkdm("dkdm-iterative", "iterative", ["--method", "iterative", "--iters", "2000"], out="runs/abl-iterative"),
    dkdm("dkdm-data", "baseline: real digits (data-based training)", ["--method", "data", "--iters", "2000"]),
    dkdm(
        "dkdm-data-free",
        "baseline: synthetic set sampled by the teacher (Table 2)",
        ["--method", "data-free", "--iters", "2000"],
    ),
    dkdm(
        "dkdm-vit",
        "dynamic, DiT student (adaLN-Zero init)",
        ["--student", "vit", "--iters", "2000", "--lr", "1e-3", "--ema", "0.998"],
    ),
    dkdm(
        "dkdm-vit-diffusers-init",
        "dynamic, DiT student, diffusers' default init",
        ["--student", "vit", "--vit-init", "diffusers", "--iters", "2000", "--lr", "1e-3", "--ema", "0.998"],
    ),
    dkdm(
        "dkdm-no-clip",
        "dynamic iterative, no gradient clipping (the paper's)",
        ["--clip-grad", "0", "--iters", "2000"],
    ),
    dkdm(
        "dkdm-rho0.02-M512",
        "rho = 0.02 (pool 1,280), staggered init, M = 512",
        ["--rho", "0.02", "--chains", "512", "--iters", "2000"],
        out="runs/init-staggered-M512",
    ),
    dkdm(
        "dkdm-rho0.02-M2",
        "rho = 0.02, staggered init, M = 2 chains",
        ["--rho", "0.02", "--chains", "2", "--iters", "2000"],
        out="runs/init-staggered-M2",
    ),
    dkdm(
        "dkdm-rho0.02-shuffle",
        "rho = 0.02, shuffle-denoise init (the paper's)",
        ["--rho", "0.02", "--pool-init", "shuffle", "--iters", "2000"],
        out="runs/init-shuffle",
    ),
    dkdm(
        "dkdm-shuffle-init",
        "default rho = 0.4, shuffle-denoise init (the paper's)",
        ["--pool-init", "shuffle", "--iters", "2000"],
    ),
    dkdm(
        "dkdm-dynamic-seed1", "dynamic iterative (staggered init, M = 512), seed 1", ["--seed", "1", "--iters", "2000"]
    ),
    # the same three runs continued to 4,000 iterations (resumed: bitwise a straight 4,000-iteration run)
    dkdm(
        "dkdm-dynamic-4k",
        "dynamic iterative (staggered init, M = 512), 4,000 iterations",
        ["--iters", "4000"],
        out="runs/abl-dynamic",
    ),
    dkdm(
        "dkdm-dynamic-seed1-4k",
        "dynamic iterative (staggered init, M = 512), seed 1, 4,000 iterations",
        ["--seed", "1", "--iters", "4000"],
        out="runs/bench/dkdm-dynamic-seed1",
    ),
    dkdm(
        "dkdm-shuffle-init-4k",
        "default rho = 0.4, shuffle-denoise init (the paper's), 4,000 iterations",
        ["--pool-init", "shuffle", "--iters", "4000"],
        out="runs/bench/dkdm-shuffle-init",
    ),
    dkdm(
        "dkdm-chains2560-4k",
        "staggered init with M = 2,560 chains (every t < 100 entry its own chain), 4,000 iterations",
        ["--chains", "2560", "--iters", "4000"],
    ),
    Exp(
        "dkdm-eval-iddpm",
        "dkdm",
        "the seed-1 run and the teacher scored with IDDPM-50 (Sec. 4.1's sampler)",
        ["dkdm.py", "--seed", "1", "--iters", "2000", "--out", "runs/bench/dkdm-dynamic-seed1"],
        [
            "--run",
            "runs/bench/dkdm-dynamic-seed1",
            "--sampler",
            "ancestral",
            "--nfe",
            "50",
            "--dkdm-sampler",
            "ancestral",
            "--n",
            str(N_EVAL),
        ],
        "runs/bench/dkdm-dynamic-seed1",
    ),
    dkdm(
        "dkdm-official-recipe",
        "dynamic iterative, the official trainer's lr 1e-4, no warm-up, EMA 0.9999, batch 128",
        ["--lr", "1e-4", "--warmup", "0", "--ema", "0.9999", "--batch", "128", "--iters", "2000"],
    ),
    dkdm(
        "dkdm-data-free-iddpm",
        "baseline: synthetic set by IDDPM-1000 (Table 4's sampler for pixel teachers)",
        ["--method", "data-free", "--synth-steps", "1000", "--iters", "2000"],
    ),
    # the DiT default three times: seed 0 with torch's default threads, seeds 1 and 2 with one thread (group `vit`)
    *[
        Exp(
            f"vit-seed{s}",
            "vit",
            f"DKDM default, vit student, seed {s}" + (", torch's default threads" if s == 0 else ""),
            ["dkdm.py", "--student", "vit", "--seed", str(s), "--out", f"runs/bench/vit-seed{s}"],
            ["--run", f"runs/bench/vit-seed{s}", "--nfe", "50", "--n", str(N_EVAL)],
            f"runs/bench/vit-seed{s}",
            threads=None if s == 0 else 1,
        )
        for s in (0, 1, 2)
    ],
    # FD vs iterations of both students' default commands (group `curves`): the last point of each is
    # the default run itself (a run resumed at each point equals the straight run bitwise)
    Exp(
        "curve-cnn",
        "curves",
        "DKDM default, cnn student: FD vs iterations",
        ["dkdm.py", "--out", "runs/bench/curve-cnn"],
        ["--run", "runs/bench/curve-cnn", "--nfe", "50", "--n", str(N_EVAL)],
        "runs/bench/curve-cnn",
        curve=(1000, 2000, 4000, 6000, 8000, 10000),
    ),
    Exp(
        "curve-vit",
        "curves",
        "DKDM vit student, constant lr (the default before --lr-decay): FD vs iterations",
        ["dkdm.py", "--student", "vit", "--lr-decay", "0", "0", "--out", "runs/bench/curve-vit"],
        ["--run", "runs/bench/curve-vit", "--nfe", "50", "--n", str(N_EVAL)],
        "runs/bench/curve-vit",
        curve=(1000, 2000, 4000, 6000, 8000, 10000),
    ),
]


def exercise(name, out, about, *train):
    """An exercise of docs/tutorial.md: one command (its CPU time is recorded: each must stay under 5 minutes)."""
    out = f"runs/ex/{out}"
    return Exp(
        name, "exercises", about, [*train, "--out", out], ["--run", out, "--nfe", "50", "--n", str(N_EVAL)], out
    )


GMM_BOOT, DKDM = ("boot.py", "--teacher", "gmm"), ("dkdm.py", "--iters", "2000")
EXPERIMENTS += [
    exercise("ex-boot-gmm", "heun", "BOOT on the gmm teacher, its preset (Heun, boundary every iteration)", *GMM_BOOT),
    exercise("ex-boot-gmm-euler", "euler", "the same with Euler targets (Eq. 7)", *GMM_BOOT, "--solver", "euler"),
    exercise("ex-boot-gmm-no-boundary", "no-boundary", "the same without Eq. 8", *GMM_BOOT, "--boundary-every", "0"),
    exercise("ex-boot-gmm-tmax98", "tmax", "the same with t_max = 0.98", *GMM_BOOT, "--t-max", "0.98"),
    exercise("ex-boot-gmm-delta01", "delta", "the same with delta = 0.01", *GMM_BOOT, "--delta", "0.01"),
    exercise("ex-dkdm", "dynamic", "DKDM on the digits teacher, dynamic, 2,000 iterations", *DKDM),
    exercise("ex-dkdm-iterative", "iterative", "the same, iterative", *DKDM, "--method", "iterative"),
    exercise("ex-dkdm-rho002", "pool", "the same, dynamic, rho = 0.02 (pool 1,280), M = 512", *DKDM, "--rho", "0.02"),
    exercise("ex-dkdm-rho002-m2", "chains", "rho = 0.02, M = 2 chains", *DKDM, "--rho", "0.02", "--chains", "2"),
]
BY_NAME = {e.name: e for e in EXPERIMENTS}
# README's first screen (bench/newcomer.py): --help CPU time and install size; the default boot.py
# run (newcomer-boot: a short window of iterations; newcomer-boot-full: the whole run); the tests
NEWCOMER = {
    "newcomer": ("help", "install"),
    "newcomer-boot": ("boot",),
    "newcomer-boot-full": ("boot-full",),
    "newcomer-tests": ("tests",),
}


def load_results() -> dict:
    return json.loads(RESULTS.read_text()) if RESULTS.is_file() else {}


def run_curve(exp: Exp, env: dict, log) -> dict:
    """The run trained to each point of exp.curve in turn (each command resumes the last) and scored there."""
    points, start = [], time.time()
    for k in exp.curve:
        subprocess.run(
            [PY, *exp.train, "--iters", str(k)], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, check=True
        )
        train_s = time.time() - start
        out_json = ROOT / "runs" / "bench" / f"{exp.name}-{k}.json"
        subprocess.run(
            [PY, "evaluate.py", *exp.eval, "--json", str(out_json)],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            check=True,
        )
        metrics = [
            json.loads(line) for line in (ROOT / exp.run_dir / "metrics.jsonl").read_text().splitlines() if line
        ]
        points.append(
            {
                "iters": k,
                "train_wall_s": round(train_s, 1),
                "records": json.loads(out_json.read_text()),
                "last_metrics": metrics[-1],
            }
        )
        start = time.time()
    return {
        "about": exp.about,
        "train": " ".join(["python", *exp.train]),
        "eval": " ".join(["python", "evaluate.py", *exp.eval]),
        "curve": points,
        "threads": 1,
        "date": time.strftime("%Y-%m-%d"),
    }


def run_one(exp: Exp, force: bool) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": str(exp.threads), "PYTHONUNBUFFERED": "1"}
    if exp.threads is None:
        env.pop("OMP_NUM_THREADS")
    if exp.curve:
        log = ROOT / "runs" / "bench" / f"{exp.name}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "a") as f:
            return run_curve(exp, env, f)
    log = ROOT / "runs" / "bench" / f"{exp.name}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    start, cpu = time.time(), 0.0
    with open(log, "a") as f:
        if exp.train:
            cpu += run_cpu([PY, *exp.train], env, f)
        train_s = time.time() - start
        out_json = log.with_suffix(".json")
        cpu += run_cpu([PY, "evaluate.py", *exp.eval, "--json", str(out_json)], env, f)
    records = json.loads(out_json.read_text())
    distance = ROOT / (exp.run_dir or "-") / "distance.json"  # BOOT's check against the teacher's DDIM-50
    metrics = []
    if exp.run_dir and (ROOT / exp.run_dir / "metrics.jsonl").is_file():
        metrics = [
            json.loads(line) for line in (ROOT / exp.run_dir / "metrics.jsonl").read_text().splitlines() if line
        ]
    return {
        "about": exp.about,
        "train": " ".join(["python", *exp.train]) if exp.train else None,
        "eval": " ".join(["python", "evaluate.py", *exp.eval]),
        "records": records,
        "first_metrics": metrics[0] if metrics else None,
        "last_metrics": metrics[-1] if metrics else None,
        **({"distance": json.loads(distance.read_text())} if distance.is_file() else {}),
        "train_wall_s": round(train_s, 1),
        "cpu_s": round(cpu, 1),  # training and scoring, user + system, of this invocation
        "threads": exp.threads or "default",
        "date": time.strftime("%Y-%m-%d"),
    }


def run_cpu(cmd, env, log) -> float:
    """Run a command to its end (an error on a non-zero exit); its CPU seconds, user + system."""
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode:
        raise subprocess.CalledProcessError(proc.returncode, cmd)
    return usage.ru_utime + usage.ru_stime


def main(argv=None):
    import cli  # the repository root is on sys.path (below)

    p = cli.OneLineParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("targets", nargs="*", help="groups (boot, dkdm, speed, gpu, ...) or experiment names")
    p.add_argument("--list", action="store_true")
    p.add_argument("--force", action="store_true", help="rerun finished experiments")
    p.add_argument("--jobs", type=int, default=2, help="experiments at once (1 thread each)")
    p.add_argument("--render", action="store_true", help="rewrite the bench blocks of README.md and docs/")
    args = p.parse_args(argv)
    if args.list:
        for e in EXPERIMENTS:
            print(
                f"{e.group:6s} {e.name:18s} {e.about}\n{'':25s} python {' '.join(e.train or ['evaluate.py', *e.eval])}"
            )
        return 0
    groups = (
        {e.group for e in EXPERIMENTS}
        | {"speed", "gpu", "memory", "eval-memory", "tutorial", "recipes"}
        | set(NEWCOMER)
    )
    bad = [t for t in args.targets if t not in BY_NAME and t not in groups]
    if bad:
        print(f"error: unknown experiment or group {', '.join(bad)}; see --list", file=sys.stderr)
        return 2
    todo = [e for e in EXPERIMENTS if e.name in args.targets or e.group in args.targets]
    results = load_results()
    todo = [e for e in todo if args.force or e.name not in results]
    with ThreadPoolExecutor(args.jobs) as pool:
        futures = {e.name: pool.submit(run_one, e, args.force) for e in todo}
        for name, fut in futures.items():
            record = fut.result()  # wait first, then read what other bench processes wrote meanwhile
            results = load_results()
            results[name] = record
            RESULTS.write_text(json.dumps(results, indent=1, sort_keys=True))
            print(f"done {name}", flush=True)
    if "speed" in args.targets:
        from bench import speed

        results = load_results()
        results["speed"] = speed.measure()
        RESULTS.write_text(json.dumps(results, indent=1, sort_keys=True))
    if "memory" in args.targets:  # --dry-run's memory estimate for SD 2.1-base: docs/gpu.md
        from bench import memory

        results = load_results()
        results["memory"] = {**memory.main(), "date": time.strftime("%Y-%m-%d")}
        RESULTS.write_text(json.dumps(results, indent=1, sort_keys=True))
    if "recipes" in args.targets:  # every training command of docs/recipes.md, dry-run (bench/recipes.py)
        from bench import recipes

        measured = recipes.measure()
        results = load_results()
        results["recipes"] = measured
        RESULTS.write_text(json.dumps(results, indent=1, sort_keys=True))
    if "tutorial" in args.targets:  # docs/tutorial.md's worked iterations (bench/tutorial.py)
        from bench import tutorial

        worked = {"boot": tutorial.boot_iteration(), "boot_delta01": tutorial.boot_iteration(0.01)}
        worked["dkdm"] = tutorial.dkdm_iteration()
        results = load_results()
        results["tutorial"] = {**worked, "date": time.strftime("%Y-%m-%d")}
        RESULTS.write_text(json.dumps(results, indent=1, sort_keys=True))
    if "eval-memory" in args.targets:  # peak memory of an evaluation at n and 4n samples: docs/runs.md
        from bench import eval_memory

        results = load_results()
        results["eval-memory"] = eval_memory.measure()
        RESULTS.write_text(json.dumps(results, indent=1, sort_keys=True))
    if "gpu" in args.targets:  # what a run costs on this machine's GPU (or CPU): docs/gpu.md
        from bench import gpu

        record = gpu.measure(gpu.default_teachers())
        results = load_results()
        results["gpu"] = gpu.with_record(results, record)  # one record per device kind
        RESULTS.write_text(json.dumps(results, indent=1, sort_keys=True))
    for target, parts in NEWCOMER.items():
        if target in args.targets:
            from bench import newcomer

            measured = newcomer.measure(parts)
            results = load_results()
            results["newcomer"] = {**results.get("newcomer", {}), **measured}
            RESULTS.write_text(json.dumps(results, indent=1, sort_keys=True))
    if args.render or args.targets:
        from bench import render

        render.write_docs(load_results())
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    sys.exit(main())
