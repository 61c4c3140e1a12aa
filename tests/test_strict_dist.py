"""Strict distributed mode (STRICT_DIST=1): CPU torchrun runs that fail where NCCL on GPUs would.

NCCL takes only tensors on the process's GPU and hangs when ranks call different collectives;
gloo on CPU accepts CPU tensors and desynchronises only by luck. Under STRICT_DIST=1 every
collective must go through teachers.collective, the ranks' call sites are compared, and rank r's
clock runs (1 + r) times as fast, so these 2-process runs fail deterministically on such bugs."""
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import teachers

ROOT = Path(__file__).resolve().parents[1]


def torchrun(*args, timeout=300):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "STRICT_DIST": "1", "STRICT_DIST_TIMEOUT": "60"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", *map(str, args)]
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


PROBE = textwrap.dedent("""
    import json, sys, time
    import torch, torch.distributed as dist
    sys.path.insert(0, sys.argv[1])
    import teachers

    rank, world, device = teachers.dist_setup()
    seen = {}
    try:  # a collective outside teachers.collective (the CPU tensor NCCL would refuse)
        dist.broadcast(torch.tensor([1.0]), 0)
        seen["raw"] = "passed"
    except RuntimeError as e:
        seen["raw"] = str(e)
    try:  # ranks at different call sites
        teachers.collective("mean", [1.0], "site-a" if rank == 0 else "site-b")
        seen["desync"] = "passed"
    except RuntimeError as e:
        seen["desync"] = str(e)
    seen["mean"] = teachers.collective("mean", [float(rank), 2.0], "mean")
    t0 = time.time(); time.sleep(0.2); local = time.time() - t0
    seen["clock"] = local
    seen["decided"] = teachers.rank0_decides(stop=local > 0.3)  # rank 1 alone sees 0.4 s
    open(f"{sys.argv[2]}/probe-{rank}.json", "w").write(json.dumps(seen))  # a file each: stdout lines interleave
    teachers.dist_teardown()
""")


def test_strict_mode_catches_raw_collectives_desync_and_local_clocks(tmp_path):
    (tmp_path / "probe.py").write_text(PROBE)
    p = torchrun(tmp_path / "probe.py", ROOT, tmp_path, timeout=120)
    assert p.returncode == 0, p.stderr[-3000:]
    seen = {int(f.stem.split("-")[1]): json.loads(f.read_text()) for f in tmp_path.glob("probe-*.json")}
    assert sorted(seen) == [0, 1]
    for rank, s in seen.items():
        assert "torch.distributed.broadcast called directly" in s["raw"]
        assert "rank 0 at 'site-a'" in s["desync"] and "rank 1 at 'site-b'" in s["desync"]
        assert s["mean"] == [0.5, 2.0]  # (0 + 1) / 2
        assert s["decided"] == {"stop": False}  # rank 0's reading, on both ranks
    assert seen[0]["clock"] < 0.3 < seen[1]["clock"]  # rank 1's clock runs twice as fast


def test_single_process_collectives_are_the_values():
    assert teachers.collective("mean", [1.5, 2.0], "x") == [1.5, 2.0]
    assert teachers.rank0_decides(stop=True, minutes=False) == {"stop": True, "minutes": False}


def test_boot_two_processes_minutes_budget(tmp_path):
    """boot.py --minutes under torchrun: both ranks stop at rank 0's step, checkpoint it, export."""
    run = tmp_path / "boot"
    p = torchrun(ROOT / "boot.py", "--teacher", "gmm", "--iters", "100000", "--batch", "8", "--preview", "2",
                 "--check", "4", "--minutes", "0.04", "--log-every", "5", "--out", run)
    assert p.returncode == 0, p.stderr[-3000:]
    step = teachers.load_checkpoint(run / "checkpoints" / "latest.pt")["step"]
    assert 0 < step < 100000 and f"reached at step {step}" in p.stdout
    assert json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])["step"] == step
    assert (run / "student" / "generator.json").is_file()


def test_dkdm_two_processes_minutes_budget(tmp_path):
    """dkdm.py under torchrun: the stop flag is rank 0's, broadcast on the run device."""
    run = tmp_path / "dkdm"
    p = torchrun(ROOT / "dkdm.py", "--rho", "0.01", "--batch", "8", "--pool-init", "noise", "--iters", "100000",
                 "--minutes", "0.03", "--log-every", "5", "--ckpt-every", "1000", "--out", run)
    assert p.returncode == 0, p.stderr[-3000:]
    step = teachers.load_checkpoint(run / "checkpoints" / "latest.pt")["step"]
    assert 0 < step < 100000 and f"{step} iterations" in p.stdout
    assert sorted(f.name for f in (run / "checkpoints").glob("stream-*")) == \
        [f"stream-rank0-step{step}.pt", f"stream-rank1-step{step}.pt"]
    assert (run / "student" / "generator.json").is_file()
