"""The strict distributed mode (tests/strict_dist.py) makes CPU torchrun runs fail where NCCL on GPUs
would: a tensor not made on the run device, ranks at different collectives, a decision taken from a
per-rank clock. The probe below makes each mistake on purpose; the two CLI runs show that both
training loops pass under it (their --minutes stop is rank 0's decision)."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import runkit


ROOT = Path(__file__).resolve().parents[1]


def torchrun(*args, timeout=300):
    """2 CPU processes under torchrun, with the strict mode installed in each (tests/strict/sitecustomize.py)."""
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "STRICT_DIST": "1",
        "STRICT_DIST_TIMEOUT": "60",
        "PYTHONPATH": os.pathsep.join([str(ROOT / "tests" / "strict"), str(ROOT)]),
    }
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", *map(str, args)]
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


PROBE = textwrap.dedent("""
    import json, sys, time
    import torch, torch.distributed as dist
    import runkit

    rank, world, device = runkit.setup()
    seen = {}
    try:  # broken on purpose: a tensor made outside the run kit (on a GPU: a CPU tensor NCCL refuses)
        dist.broadcast(torch.tensor([1.0]), 0)
        seen["stray"] = "passed"
    except RuntimeError as e:
        seen["stray"] = str(e)
    try:  # broken on purpose: the ranks at different collectives
        runkit.mean([1.0], device) if rank == 0 else runkit.decide(device, stop=False)
        seen["desync"] = "passed"
    except RuntimeError as e:
        seen["desync"] = str(e)
    seen["mean"] = runkit.mean([float(rank), 2.0], device)
    t0 = time.time(); time.sleep(0.2); local = time.time() - t0
    seen["clock"] = local
    seen["decided"] = runkit.decide(device, stop=local > 0.3)  # rank 1 alone sees 0.4 s: rank 0's answer wins
    try:  # broken on purpose: a collective only where the local clock says so
        if local > 0.3:
            runkit.mean([1.0], device)
        runkit.decide(device, stop=False)
        seen["clock_decision"] = "passed"
    except RuntimeError as e:
        seen["clock_decision"] = str(e)
    open(f"{sys.argv[1]}/probe-{rank}.json", "w").write(json.dumps(seen))  # a file each: stdout lines interleave
    runkit.teardown()
""")


def test_strict_mode_fails_on_stray_tensors_desync_and_local_clocks(tmp_path):
    (tmp_path / "probe.py").write_text(PROBE)
    p = torchrun(tmp_path / "probe.py", tmp_path, timeout=120)
    assert p.returncode == 0, p.stderr[-3000:]
    seen = {int(f.stem.split("-")[1]): json.loads(f.read_text()) for f in tmp_path.glob("probe-*.json")}
    assert sorted(seen) == [0, 1]
    for rank, s in seen.items():
        assert "torch.distributed.broadcast got a tensor not made on the run device" in s["stray"], s["stray"]
        assert "ranks desynchronised" in s["desync"] and "all_reduce@" in s["desync"] and "broadcast@" in s["desync"]
        assert s["mean"] == [0.5, 2.0]  # (0 + 1) / 2
        assert s["decided"] == {"stop": False}  # rank 0's reading, on both ranks
        assert "ranks desynchronised" in s["clock_decision"], s["clock_decision"]
    assert seen[0]["clock"] < 0.3 < seen[1]["clock"]  # rank 1's clock runs twice as fast


def test_single_process_collectives_are_the_values():
    cpu = runkit.torch.device("cpu")
    assert runkit.mean([1.5, 2.0], cpu) == [1.5, 2.0]
    assert runkit.decide(cpu, stop=True, minutes=False) == {"stop": True, "minutes": False}


def test_boot_two_processes_minutes_budget(tmp_path):
    """boot.py --minutes under torchrun: both ranks stop at rank 0's step, checkpoint it, export."""
    run = tmp_path / "boot"
    p = torchrun(
        ROOT / "boot.py",
        "--teacher",
        "gmm",
        "--iters",
        "100000",
        "--batch",
        "8",
        "--preview",
        "2",
        "--check",
        "4",
        "--minutes",
        "0.04",
        "--log-every",
        "5",
        "--out",
        run,
    )
    assert p.returncode == 0, p.stderr[-3000:]
    step = runkit.load_checkpoint(run / "checkpoints" / "latest.pt")["step"]
    assert 0 < step < 100000 and f"reached at step {step}" in p.stdout
    assert json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])["step"] == step
    assert (run / "student" / "generator.json").is_file()


def test_dkdm_two_processes_minutes_budget(tmp_path):
    """dkdm.py under torchrun: the stop flag is rank 0's, broadcast on the run device."""
    run = tmp_path / "dkdm"
    p = torchrun(
        ROOT / "dkdm.py",
        "--rho",
        "0.01",
        "--batch",
        "8",
        "--pool-init",
        "noise",
        "--iters",
        "100000",
        "--minutes",
        "0.03",
        "--log-every",
        "5",
        "--ckpt-every",
        "1000",
        "--out",
        run,
    )
    assert p.returncode == 0, p.stderr[-3000:]
    step = runkit.load_checkpoint(run / "checkpoints" / "latest.pt")["step"]
    assert 0 < step < 100000 and f"{step} iterations" in p.stdout
    assert sorted(f.name for f in (run / "checkpoints").glob("stream-*")) == [
        f"stream-rank0-step{step}.pt",
        f"stream-rank1-step{step}.pt",
    ]
    assert (run / "student" / "generator.json").is_file()
