"""The strict distributed mode (tests/strict_dist.py) makes CPU torchrun runs fail where NCCL on GPUs
would: a tensor not made on the run device, ranks at different collectives, a decision taken from a
per-rank clock. The probe below makes each mistake on purpose; the two CLI runs show that both
training loops pass under it (their --minutes stop is rank 0's decision); two launchers started as two nodes
would be, each with its own --out, stop on every rank when they would resume different steps."""

import contextlib
import json
import os
import re
import shutil
import signal
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


def two_nodes(args_of_node, tmp_path, timeout=60):
    """Two torchrun launchers of one process each, as two nodes would start them (--nnodes 2, --node-rank 0 / 1,
    a static rendezvous on localhost), in the strict mode; (returncode, stderr) of each once both have ended."""
    import socket

    with socket.socket() as s:  # a free port for rank 0's store
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "HF_HUB_OFFLINE": "1",
        "STRICT_DIST": "1",
        "STRICT_DIST_TIMEOUT": "60",
        "PYTHONPATH": os.pathsep.join([str(ROOT / "tests" / "strict"), str(ROOT)]),
    }
    procs = []
    for node, args in enumerate(args_of_node):
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--node-rank", str(node)]
        cmd += ["--nproc-per-node", "1", "--master-addr", "127.0.0.1", "--master-port", str(port), *map(str, args)]
        log = open(tmp_path / f"node{node}.err", "w+")
        p = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=log, start_new_session=True)
        procs.append((p, log))
    try:
        codes = [p.wait(timeout=timeout) for p, _ in procs]  # a desynchronised or hanging run fails here
    finally:
        for p, _ in procs:  # each launcher and its workers
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGKILL)
    out = []
    for code, (_, log) in zip(codes, procs):
        log.seek(0)
        out.append((code, log.read()))
    return out


def test_two_nodes_resuming_different_steps_stop_on_every_rank(tmp_path):
    """Each node its own --out (not shared): rank 0 finds the run at step 8, rank 1 the same run at step 4. Both
    stop with one line, exit code 2, before anything is written: metrics.jsonl and config.json stay as they were."""
    args = ["--teacher", "gmm", "--batch", "8", "--ckpt-every", "4", "--log-every", "2", "--preview", "0"]
    args += ["--check", "0"]
    a, b = tmp_path / "node0", tmp_path / "node1"
    boot_run = [sys.executable, str(ROOT / "boot.py"), *args, "--out", str(a)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TQDM_DISABLE": "1"}
    subprocess.run([*boot_run, "--iters", "4"], cwd=ROOT, env=env, check=True, capture_output=True, timeout=300)
    shutil.copytree(a, b)  # the same run, then node 0's copy goes on
    subprocess.run([*boot_run, "--iters", "8"], cwd=ROOT, env=env, check=True, capture_output=True, timeout=300)
    before = {d: [(d / f).read_bytes() for f in ("metrics.jsonl", "config.json")] for d in (a, b)}
    ends = two_nodes([[ROOT / "boot.py", *args, "--iters", "12", "--out", d] for d in (a, b)], tmp_path)
    for code, err in ends:
        ours = [ln for ln in err.splitlines() if ln.startswith("error: ")]
        assert code != 0 and len(ours) == 1, err[-3000:]
        assert "rank 0 finds run " in ours[0] and "at step 8" in ours[0] and "rank 1 run " in ours[0], ours
        assert "at step 4" in ours[0] and "filesystem they share" in ours[0], ours
        assert re.search(r"exitcode\s*:\s*2\b", err), err[-3000:]  # our exit code, as torchrun reports it
    assert before == {d: [(d / f).read_bytes() for f in ("metrics.jsonl", "config.json")] for d in (a, b)}
    assert runkit.load_checkpoint(a / "checkpoints" / "latest.pt")["step"] == 8
