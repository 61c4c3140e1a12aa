"""--dry-run's memory estimate: the student's activations per sample and bf16 autocast's weight copies
(measured from the tensors autograd saves at batch 1 and 2, teacher and student built from configs
only) against the peak memory a real training pass of a large batch takes on this CPU, in float32
and under bf16 autocast (the peak of the process's resident anonymous memory, sampled while it
runs; large buffers are mmapped so that freed memory leaves the count)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import boot


ROOT = Path(__file__).resolve().parents[1]

PEAK = """
import json, sys, threading, time, torch
sys.path.insert(0, sys.argv[1])
import boot, runkit, teachers
cfg = boot.resolve(boot.BootConfig(teacher=sys.argv[2], precision=sys.argv[4]))
B = int(sys.argv[3])
teacher = teachers.load_teacher(cfg.teacher)
net, student = boot.make_student(teacher, cfg, boot.default_weight(cfg, teacher))
net.train()
cond = {"encoder_hidden_states": teacher.encode_prompts(["a red cube"] * B)["encoder_hidden_states"]}
eps, t = torch.randn(B, *teacher.sample_shape), torch.rand(B)
def step(n):
    with runkit.student_autocast(cfg.precision, "cpu"):
        y = boot.y_theta(net, student, eps[:n], t[:n], {k: v[:n] for k, v in cond.items()}, 7.5)
    y.float().square().mean().backward()
def anon():  # resident anonymous memory (tensors), in bytes; other processes cannot move it
    line = next(ln for ln in open("/proc/self/status") if ln.startswith("RssAnon:"))
    return 1024 * int(line.split()[1])
step(1)  # gradients exist before the measurement
base, peak, done = anon(), [0], threading.Event()
def watch():
    while not done.is_set():
        peak[0] = max(peak[0], anon()); time.sleep(0.0005)
th = threading.Thread(target=watch); th.start()
step(B)
done.set(); th.join()
print(json.dumps({"peak_bytes": peak[0] - base}))
"""


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_activation_estimate_matches_the_measured_cpu_peak(tiny_sd_dir, tmp_path, precision):
    cfg = boot.resolve(boot.BootConfig(teacher=str(tiny_sd_dir), precision=precision))
    est = boot.memory_estimate(cfg, 1)
    assert (
        est["teacher_params"] > est["student_params"] > 0
        and est["network_passes_per_iteration"]["teacher_forwards"] == 2.25
    )
    copies = est["autocast_weight_copies_MiB"] * 2**20
    if precision == "bf16":  # one bf16 copy of (nearly) every student weight, 2 bytes each, once per pass
        assert 0.5 < copies / (2 * est["student_params"]) < 1.2
    else:
        assert copies < 0.05 * 2 * est["student_params"]
    B = 256
    (tmp_path / "peak.py").write_text(PEAK)
    p = subprocess.run(
        [sys.executable, str(tmp_path / "peak.py"), str(ROOT), str(tiny_sd_dir), str(B), precision],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1", "MALLOC_MMAP_THRESHOLD_": "65536"},
    )  # big frees leave
    assert p.returncode == 0, p.stderr[-2000:]
    measured = json.loads(p.stdout.strip().splitlines()[-1])["peak_bytes"]
    estimated = est["activations_per_sample_MiB"] * 2**20 * B + copies
    print(
        f"{precision}, batch {B}: estimated activations {estimated / 2**20:.0f} MiB, measured peak growth "
        f"{measured / 2**20:.0f} MiB"
    )
    assert 0.7 < estimated / measured < 1.3


def test_bytes_per_parameter_and_the_batch_that_fits(tiny_sd_dir, monkeypatch):
    """The student's part is the bytes its float32 weights, gradients, AdamW's two moments and the EMA copy take
    after one real AdamW step, counted tensor by tensor; the batch that fits C GB is the largest b whose total stays
    within 90 % of C x 10^9 bytes (10 % left to the CUDA context), totals read at two batches (costs.GiB = 1: the
    estimate's figures in bytes)."""
    import torch

    import costs
    import runkit
    import teachers

    monkeypatch.setattr(costs, "GiB", 1)
    cfg = boot.resolve(boot.BootConfig(teacher=str(tiny_sd_dir), precision="fp32", batch=8))
    est = boot.memory_estimate(cfg, 1)
    teacher = teachers.load_teacher(str(tiny_sd_dir))
    net, student = boot.make_student(teacher, cfg, 7.5)
    raw, ema, opt = runkit.optimisation(net, cfg, "cpu")
    cond = {"encoder_hidden_states": teacher.encode_prompts(["a red cube"] * 2)["encoder_hidden_states"]}
    boot.y_theta(
        raw, student, torch.randn(2, *teacher.sample_shape), torch.rand(2), cond, 7.5
    ).square().mean().backward()
    opt.step()
    ema.update(raw)
    named = dict(raw.named_parameters())
    tensors = [*named.values(), *(p.grad for p in named.values()), *(ema.shadow[k] for k in named)]
    tensors += [v for s in opt.state.values() for k, v in s.items() if k in ("exp_avg", "exp_avg_sq")]
    assert est["student_weights_grads_adamw_ema_GiB"] == sum(t.numel() * t.element_size() for t in tensors)
    big = boot.memory_estimate(boot.resolve(boot.BootConfig(teacher=str(tiny_sd_dir), precision="fp32", batch=64)), 1)
    per = (big["total_at_local_batch_GiB"] - est["total_at_local_batch_GiB"]) / (64 - 8)
    static = est["total_at_local_batch_GiB"] - 8 * per
    for cap in (40, 80):
        b = est["max_local_batch_fitting"][f"{cap}GB"]
        assert b > 0 and static + b * per <= 0.9 * cap * 1e9 < static + (b + 1) * per, cap
