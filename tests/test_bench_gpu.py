"""bench/gpu.py, the answer to "what will this cost on my GPU", runs end to end on tiny configs of the
same teacher families on CPU: every teacher-pass row is a rate measured against the bare forward in
the same run, and the BOOT and DKDM iterations report their time split."""

import json
import os
import subprocess
import sys

from conftest import ROOT


def test_gpu_bench_runs_on_tiny_configs(tmp_path):
    out = tmp_path / "gpu.json"
    p = subprocess.run(
        [sys.executable, "bench/gpu.py", "--tiny", "--teachers", "sd21", "ddpm-cifar10", "--json", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"},
    )
    assert p.returncode == 0, p.stderr[-3000:]
    res = json.loads(out.read_text())
    assert res["device"] == "cpu" and res["tiny"] and res["matmul_peak_tflops"] > 0
    kinds = [r["pass"].split(": ")[1].split(" (")[0] for r in res["passes"]]
    assert kinds == [
        "DKDM training step",
        "DKDM shuffle-denoise init",
        "data-free synthetic set",
        "evaluate.py teacher row",
    ]
    for r in res["passes"]:
        assert r["samples_per_s"] > 0 and abs(r["ratio"] - r["samples_per_s"] / r["bare_samples_per_s"]) < 2e-3
    for key in ("boot_sd21", "dkdm_vit_cifar10"):
        split = res[key]
        assert split["ms_iter"] >= split["ms_teacher"] + split["ms_student"] - 0.2 > 0, split
    assert res["boot_sd21"]["checkpoint_GB"] >= 0 and res["boot_sd21"]["estimate_GiB"] > 0
    for key in ("boot_sd21", "dkdm_vit_cifar10"):  # the checkpoint's stall at the preset's interval
        r = res[key]
        assert r["checkpoint_every"] in (250, 1000) and r["checkpoint_copy_s"] > 0 and r["checkpoint_save_s"] > 0
        assert r["checkpoint_stall_s"] >= r["checkpoint_copy_s"] and 0 < r["checkpoint_stall_share"] < 1
    assert "| teacher pass | batch | samples/s |" in p.stdout and "BOOT, SD 2.1-base" in p.stdout
