"""What a run directory promises: kill -9 (also in the middle of a checkpoint save) and a rerun give
the uninterrupted run's weights AND metrics.jsonl; a non-finite update is never applied nor
checkpointed; one writer at a time (a dead writer's lock is released by the OS); bad input under torchrun
stops every process with exit code 2 before a process group exists."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import boot
import dkdm
import runkit


ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TQDM_DISABLE": "1"}
BOOT = [
    "--teacher",
    "gmm",
    "--iters",
    "14",
    "--batch",
    "8",
    "--log-every",
    "3",
    "--ckpt-every",
    "4",
    "--preview",
    "0",
    "--check",
    "0",
]
DKDM = [
    "--teacher",
    "gmm",
    "--method",
    "iterative",
    "--iters",
    "14",
    "--batch",
    "4",
    "--log-every",
    "3",
    "--ckpt-every",
    "4",
]
# Runs a script whose N-th torch.save writes half of its bytes, fsyncs them and then kill -9s itself.
KILLER = """
import io, os, signal, sys, torch
sys.path.insert(0, {root!r})
real, calls, N = torch.save, [0], int(os.environ["KILL_AT_SAVE"])
def save(obj, f, *a, **k):
    calls[0] += 1
    if calls[0] == N:
        buf = io.BytesIO(); real(obj, buf, *a, **k); data = buf.getvalue()
        f.write(data[: len(data) // 2]); f.flush(); os.fsync(f.fileno())
        os.kill(os.getpid(), signal.SIGKILL)
    return real(obj, f, *a, **k)
torch.save = save
import {module}
sys.exit({module}.main(sys.argv[1:]))
"""


def cli(script, *args, kill_at_save=None):
    if kill_at_save is None:
        cmd = [sys.executable, str(ROOT / f"{script}.py"), *map(str, args)]
    else:
        cmd = [sys.executable, "-c", KILLER.format(root=str(ROOT), module=script), *map(str, args)]
    env = {**ENV, "KILL_AT_SAVE": str(kill_at_save or 0)}
    return subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)


def lock_free(run):
    """No process holds the run directory's lock (the file may stay: the lock is an flock on it)."""
    runkit.RunLock(run).check()
    return True


def metrics(run):
    """metrics.jsonl without its wall-clock fields (the only ones a rerun cannot repeat)."""
    recs = [json.loads(x) for x in (Path(run) / "metrics.jsonl").read_text().splitlines()]
    drop = lambda k: k.startswith("ms_") or k in ("elapsed_s", "init_seconds")  # noqa: E731
    return [{k: v for k, v in r.items() if not drop(k)} for r in recs]


def assert_same_state(a, b, keys=("model", "ema")):
    sa, sb = (runkit.load_checkpoint(Path(r) / "checkpoints" / "latest.pt") for r in (a, b))
    assert sa["step"] == sb["step"]
    for key in keys:
        assert sa[key].keys() == sb[key].keys() and all(torch.equal(sa[key][k], sb[key][k]) for k in sa[key]), key


@pytest.mark.slow
@pytest.mark.parametrize(
    "script,args,kill_at,ckpt_step",
    [
        ("boot", BOOT, 3, 8),  # saves at steps 4, 8, 12: killed while writing step 12's latest.pt
        ("dkdm", DKDM, 8, 8),  # saves (pool file, latest.pt) at 0, 4, 8, 12: killed in step 12's latest.pt
    ],
)
def test_kill_during_a_save_then_rerun_equals_the_uninterrupted_run(tmp_path, script, args, kill_at, ckpt_step):
    a, b = tmp_path / "a", tmp_path / "b"
    r = cli(script, *args, "--out", a)
    assert r.returncode == 0, r.stderr[-2000:]
    r = cli(script, *args, "--out", b, kill_at_save=kill_at)
    assert r.returncode == -signal.SIGKILL, r.stderr[-2000:]
    assert runkit.load_checkpoint(b / "checkpoints" / "latest.pt")["step"] == ckpt_step  # the old one, whole
    assert [x["step"] for x in metrics(b) if "loss" in x][-1] in (
        12,
        14,
    )  # logged past it (the loop trains on while rank 0 writes)
    r = cli(script, *args, "--out", b)
    assert r.returncode == 0, r.stderr[-2000:]
    assert not list((b / "checkpoints").glob(".*.tmp")) and lock_free(b)
    assert_same_state(a, b)
    assert metrics(a) == metrics(b)  # no duplicate, no missing record; the windows average the same steps


def nonfinite_at(fn, call_no, how):
    """fn with the loss of its call_no-th call made non-finite ('loss') or its gradient ('grad')."""
    calls = [0]

    def wrapped(*a, **k):
        out = fn(*a, **k)
        calls[0] += 1
        if calls[0] != call_no:
            return out
        loss = out[0]
        if how == "loss":
            loss = loss * float("nan")
        else:  # a finite loss whose gradient overflows
            loss = loss.clone()
            loss.register_hook(lambda g: g * float("inf"))
        return (loss, *out[1:])

    return wrapped


@pytest.mark.parametrize("script,how", [("boot", "loss"), ("boot", "grad"), ("dkdm", "loss"), ("dkdm", "grad")])
def test_nonfinite_update_is_not_applied_and_never_checkpointed(tmp_path, monkeypatch, script, how):
    monkeypatch.setenv("TQDM_DISABLE", "1")
    module, fn = (boot, "boot_step") if script == "boot" else (dkdm, "student_step")
    monkeypatch.setattr(module, fn, nonfinite_at(getattr(module, fn), 3, how))
    args = (BOOT if script == "boot" else DKDM)[:]
    args[args.index("--ckpt-every") + 1] = "1"
    args[args.index("--log-every") + 1] = "1"
    run = tmp_path / "run"
    with pytest.raises(SystemExit) as e:
        module.main([*args, "--out", str(run)])
    msg = str(e.value.code)
    assert "iteration 3" in msg and "last good checkpoint (step 2)" in msg, msg
    state = runkit.load_checkpoint(run / "checkpoints" / "latest.pt")
    assert state["step"] == 2
    tensors = [v for part in ("model", "ema") for v in state[part].values()]
    tensors += [v for s in state["opt"]["state"].values() for v in s.values() if torch.is_tensor(v)]
    assert tensors and all(torch.isfinite(v).all() for v in tensors if v.is_floating_point())
    assert [r["step"] for r in metrics(run) if "loss" in r] == [1, 2]
    assert lock_free(run)


def test_two_writers_one_run_directory(tmp_path, monkeypatch, capsys):
    run = tmp_path / "run"
    args = [
        "--teacher",
        "gmm",
        "--iters",
        "100000",
        "--batch",
        "4",
        "--ckpt-every",
        "5",
        "--preview",
        "0",
        "--check",
        "0",
        "--out",
        str(run),
    ]
    first = subprocess.Popen(
        [sys.executable, str(ROOT / "boot.py"), *args],
        env=ENV,
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.time() + 120
        while not (run / "checkpoints" / "latest.pt").exists() and time.time() < deadline:
            time.sleep(0.05)
        assert (run / "run.lock").is_file() and json.loads((run / "run.lock").read_text())["pid"] == first.pid
        monkeypatch.setenv("TQDM_DISABLE", "1")
        assert boot.main([*args, "--iters", "1"]) == 2  # the second writer (would finish at once if let in)
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and f"is in use by process {first.pid}" in err[0], err
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    # the holder died: the OS dropped its lock; the rerun takes it, resumes and finishes
    step = runkit.load_checkpoint(run / "checkpoints" / "latest.pt")["step"]
    assert boot.main([*args[:2], *args[4:], "--iters", str(step + 1)]) == 0
    assert f"resuming {run} at step {step}" in capsys.readouterr().out
    assert lock_free(run) and (run / "student" / "generator.json").is_file()


def test_resume_accepts_a_relative_out_and_a_moved_run(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TQDM_DISABLE", "1")
    small = ["--teacher", "gmm", "--batch", "4", "--preview", "0", "--check", "0"]
    assert boot.main([*small, "--iters", "2", "--out", "rel"]) == 0
    assert boot.main([*small, "--iters", "3", "--out", str(tmp_path / "rel")]) == 0
    os.rename(tmp_path / "rel", tmp_path / "moved")
    assert boot.main([*small, "--iters", "4", "--out", "moved"]) == 0
    out = capsys.readouterr().out
    assert f"resuming {tmp_path / 'rel'} at step 2" in out and "resuming moved at step 3" in out


def test_a_refused_student_leaves_nothing_behind(tmp_path, monkeypatch, capsys):
    """--student copy of the analytic teacher is refused before config.json exists, so the corrected
    command is not refused as 'differs in student'."""
    monkeypatch.setenv("TQDM_DISABLE", "1")
    small = [
        "--teacher",
        "gmm",
        "--iters",
        "2",
        "--batch",
        "4",
        "--preview",
        "0",
        "--check",
        "0",
        "--out",
        str(tmp_path / "r"),
    ]
    assert boot.main([*small, "--student", "copy"]) == 2 and not (tmp_path / "r").exists()
    assert boot.main([*small, "--student", "small"]) == 0


@pytest.mark.slow
def test_bad_input_under_torchrun_stops_every_process_with_code_2(tmp_path):
    torchrun = Path(sys.executable).parent / "torchrun"
    p = subprocess.run(
        [
            str(torchrun),
            "--standalone",
            "--nproc_per_node=2",
            str(ROOT / "boot.py"),
            "--teacher",
            "gmm",
            "--student",
            "copy",
            "--out",
            str(tmp_path / "run"),
        ],
        capture_output=True,
        text=True,
        env=ENV,
        cwd=ROOT,
        timeout=300,
    )
    ours = [ln for ln in p.stderr.splitlines() if ln.startswith("error: ")]
    assert ours == ["error: teacher 'gmm' has no network to copy; use --student small"], p.stderr
    # torchrun reports each process; one that had not yet exited 2 itself when the first did is
    # sent SIGTERM by torchrun (exit code -15)
    codes = [ln.split(":")[1].split()[0] for ln in p.stderr.splitlines() if ln.strip().startswith("exitcode")]
    assert len(codes) == 2 and "2" in codes and set(codes) <= {"2", "-15"}, p.stderr
    assert p.returncode == 1  # torchrun's own code once a worker failed
    assert 'boot.py", line' not in p.stderr  # no traceback of ours: only torchrun's own summary
    assert not (tmp_path / "run").exists()
    print(
        f"torchrun, 2 processes, bad input: exit {p.returncode}, {len(p.stderr.splitlines())} stderr lines "
        f"(ours: 1):\n{p.stderr}"
    )


# Rank 0 holds its checkpoint writer at step 4 until rank 1 has completed iteration 5 (or 120 s have passed).
HELD = """
import json, os, sys, time
from pathlib import Path
sys.path.insert(0, {root!r})
import boot, runkit
marks, rank = Path(sys.argv[1]), int(os.environ["RANK"])
real_save, real_end = runkit.save_checkpoint, runkit.RunDir.end_iteration
def save(path, state):
    if Path(path).name == "latest.pt" and state["step"] == 4:
        deadline = time.monotonic() + 120
        while not (marks / "rank1-done-5").exists() and time.monotonic() < deadline:
            time.sleep(0.01)
        (marks / "writer-released").write_text(json.dumps((marks / "rank1-done-5").exists()))
    return real_save(path, state)
def end_iteration(self, step, *a, **k):
    why = real_end(self, step, *a, **k)
    if rank == 1:
        (marks / f"rank1-done-{{step}}").write_text("")
    return why
runkit.save_checkpoint, runkit.RunDir.end_iteration = save, end_iteration
sys.exit(boot.main(sys.argv[2:]))
"""


def test_ranks_train_on_while_rank_0_writes_a_checkpoint(tmp_path):
    """Rank 0's writer is held at step 4's checkpoint until rank 1 has completed iteration 5: it is released by
    that event (a synchronous save would keep rank 1 at the checkpoint's barrier, and the writer would wait for
    nothing until its 120 s deadline); the run then finishes and its checkpoint holds the last step."""
    from test_strict_dist import torchrun

    (tmp_path / "held.py").write_text(HELD.format(root=str(ROOT)))
    run, marks = tmp_path / "run", tmp_path / "marks"
    marks.mkdir()
    args = ["--teacher", "gmm", "--iters", "8", "--batch", "8", "--ckpt-every", "4", "--preview", "0", "--check", "0"]
    p = torchrun(tmp_path / "held.py", marks, *args, "--out", run)
    assert p.returncode == 0, p.stderr[-3000:]
    assert json.loads((marks / "writer-released").read_text()) is True  # by rank 1's iteration 5, not the deadline
    assert runkit.load_checkpoint(run / "checkpoints" / "latest.pt")["step"] == 8
