"""Ctrl-C / SIGTERM during training: the run finishes its iteration, writes a checkpoint at that
step, says how to resume and exits 128 + signal (143 for SIGTERM); rerunning the command resumes
from that step and ends with the same weights as a run that was never interrupted."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

import boot
import dkdm
import runkit

from test_dkdm_cli import tiny_latent_teacher


ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}


def start(script, args):
    return subprocess.Popen(
        [sys.executable, str(ROOT / script), *map(str, args)],
        cwd=ROOT,
        env=ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def run(main, args, capsys):
    """The same command line in this process, one thread as in the subprocess (bitwise-equal arithmetic)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert main([str(a) for a in args]) == 0
    finally:
        torch.set_num_threads(threads)
    return capsys.readouterr().out


def terminate_after(p, metrics: Path, records: int):
    """SIGTERM once `records` metrics lines exist (the loop is running); (exit code, stderr)."""
    deadline = time.time() + 120
    while p.poll() is None and time.time() < deadline:
        if metrics.is_file() and len(metrics.read_text().splitlines()) >= records:
            break
        time.sleep(0.02)
    assert p.poll() is None, "the run ended before the signal: " + p.stderr.read()[-2000:]
    p.send_signal(signal.SIGTERM)
    try:
        _, err = p.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        p.kill()
        p.communicate()
        raise AssertionError("the run did not stop within 120 s of SIGTERM") from None
    return p.returncode, err


def checkpoint(run_dir):
    return runkit.load_checkpoint(Path(run_dir) / "checkpoints" / "latest.pt")


def test_sigterm_boot_checkpoints_and_resumes_exactly(tmp_path, capsys):
    # no periodic checkpoint within the run: any checkpoint is the signal's
    # (logging every 3rd iteration: the signal usually lands inside a window, which the rerun continues)
    args = [
        "--teacher",
        "gmm",
        "--iters",
        "5000",
        "--batch",
        "8",
        "--log-every",
        "3",
        "--ckpt-every",
        "100000",
        "--preview",
        "0",
        "--check",
        "0",
    ]
    p = start("boot.py", [*args, "--out", tmp_path / "cut"])
    rc, err = terminate_after(p, tmp_path / "cut" / "metrics.jsonl", 1)
    assert rc == 128 + signal.SIGTERM == 143, err[-2000:]
    k = checkpoint(tmp_path / "cut")["step"]
    assert 3 <= k < 5000
    assert f"stopped at step {k}" in err and "resume with: python " in err and "boot.py" in err
    assert not (tmp_path / "cut" / "student").exists()  # no export of an unfinished run
    # the rerun continues from step k (the budget may change on a rerun) ...
    out = run(boot.main, [*args[:2], "--iters", k + 4, *args[4:], "--out", tmp_path / "cut"], capsys)
    assert f"resuming {tmp_path / 'cut'} at step {k}" in out
    assert f"wrote {tmp_path / 'cut' / 'student'} (--preview 0 --check 0" in out  # says what it wrote
    # ... and ends where a run that was never interrupted ends
    run(boot.main, [*args[:2], "--iters", k + 4, *args[4:], "--out", tmp_path / "straight"], capsys)
    a, b = checkpoint(tmp_path / "straight"), checkpoint(tmp_path / "cut")
    assert a["step"] == b["step"] == k + 4
    for key in ("model", "ema"):
        assert all(torch.equal(a[key][n], b[key][n]) for n in a[key]), key
    assert losses(tmp_path / "cut") == losses(tmp_path / "straight")  # metrics.jsonl too, timings aside


def losses(run_dir):
    recs = [json.loads(x) for x in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k in ("step", "loss", "bs", "bc", "mse", "vb")} for r in recs]


def test_sigterm_dkdm_checkpoints_and_resumes_exactly(tmp_path, capsys):
    ldm = tiny_latent_teacher(tmp_path / "ldm")
    args = [
        "--teacher",
        ldm,
        "--rho",
        "0.1",
        "--batch",
        "8",
        "--chains",
        "16",
        "--iters",
        "5000",
        "--log-every",
        "1",
        "--ckpt-every",
        "100000",
    ]
    p = start("dkdm.py", [*args, "--out", tmp_path / "cut"])
    rc, err = terminate_after(p, tmp_path / "cut" / "metrics.jsonl", 4)  # line 1: the pool init
    assert rc == 143, err[-2000:]
    k = checkpoint(tmp_path / "cut")["step"]
    assert 3 <= k < 5000
    assert f"stopped at step {k}" in err and "resume with: python " in err and "dkdm.py" in err
    assert not (tmp_path / "cut" / "student").exists()
    budget = [*args[:-6], "--iters", k + 4, *args[-4:]]
    assert "resuming " in run(dkdm.main, [*budget, "--out", tmp_path / "cut"], capsys)
    run(dkdm.main, [*budget, "--out", tmp_path / "straight"], capsys)
    a, b = checkpoint(tmp_path / "straight"), checkpoint(tmp_path / "cut")
    assert a["step"] == b["step"] == k + 4
    for key in ("model", "ema"):
        assert all(torch.equal(a[key][n], b[key][n]) for n in a[key]), key
    steps = [json.loads(x)["step"] for x in (tmp_path / "cut" / "metrics.jsonl").read_text().splitlines()]
    assert max(steps) == k + 4


def signal_during(args, marker, sig, tmp_path, wait=2.0):
    """Start dkdm.py, wait for `marker` on stdout and `wait` seconds more, send `sig`: (exit code,
    stderr, seconds from the signal to the exit)."""
    p = subprocess.Popen(
        [sys.executable, str(ROOT / "dkdm.py"), *map(str, args), "--out", str(tmp_path / "run")],
        cwd=ROOT,
        env=ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    for line in p.stdout:
        if marker in line:
            break
    time.sleep(wait)
    assert p.poll() is None, "the run ended before the signal: " + p.stderr.read()[-2000:]
    start = time.time()
    p.send_signal(sig)
    try:
        _, err = p.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        p.kill()
        p.communicate()
        raise AssertionError("no exit within 60 s of the signal") from None
    return p.returncode, err, time.time() - start


def test_sigterm_in_the_pool_initialisation_stops_within_a_pass_and_leaves_nothing(tmp_path):
    """Shuffle denoise of the default digits pool (rho 0.4: 12.8 M teacher evaluations, an hour on one
    core) stops within one teacher pass: one line, exit 143, no checkpoint; the rerun starts it again."""
    rc, err, seconds = signal_during(["--pool-init", "shuffle"], "pool:", signal.SIGTERM, tmp_path)
    ours = [ln for ln in err.splitlines() if "SIGTERM" in ln]
    assert rc == 143 and ours == [
        "SIGTERM before training started: stopped, no checkpoint written; the same command starts again"
    ], err[-2000:]
    assert seconds < 20 and not list((tmp_path / "run" / "checkpoints").iterdir())
    print(f"shuffle denoise stopped {seconds:.2f} s after SIGTERM")


def test_ctrl_c_while_sampling_the_synthetic_set_stops_within_a_pass(tmp_path):
    rc, err, seconds = signal_during(
        ["--method", "data-free", "--synth-n", "100000"], "data-free baseline: sampling", signal.SIGINT, tmp_path
    )
    assert rc == 130 and "SIGINT before training started" in err and seconds < 20, err[-2000:]
    assert not (tmp_path / "run" / "synthetic.pt").exists()
