"""DKDM's paper teachers are learned-sigma cosine models (IDDPM): a diffusers DDPMPipeline directory
with a UNet2DModel of 2C output channels and a learned_range scheduler distils with L*vlb > 0."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import teachers


ROOT = Path(__file__).resolve().parents[1]


def learned_sigma_pipeline(path, out_channels=6, variance_type="learned_range"):
    from diffusers import DDPMPipeline, DDPMScheduler, UNet2DModel

    torch.manual_seed(0)
    unet = UNet2DModel(
        sample_size=8,
        in_channels=3,
        out_channels=out_channels,
        layers_per_block=1,
        block_out_channels=(8, 16),
        down_block_types=("DownBlock2D",) * 2,
        up_block_types=("UpBlock2D",) * 2,
        norm_num_groups=4,
    )
    sched = DDPMScheduler(num_train_timesteps=50, beta_schedule="squaredcos_cap_v2", variance_type=variance_type)
    DDPMPipeline(unet=unet, scheduler=sched).save_pretrained(path)
    return path


def test_learned_sigma_teacher_distils_with_vlb(tmp_path):
    d = learned_sigma_pipeline(tmp_path / "iddpm")
    t = teachers.load_teacher(str(d))
    assert t.learned_variance and t.sample_shape == (3, 8, 8) and t.schedule.T == 50
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    run = tmp_path / "run"
    p = subprocess.run(
        [
            sys.executable,
            str(ROOT / "dkdm.py"),
            "--teacher",
            str(d),
            "--rho",
            "0.1",
            "--batch",
            "4",
            "--chains",
            "8",
            "--iters",
            "2",
            "--log-every",
            "1",
            "--out",
            str(run),
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert p.returncode == 0, p.stderr[-3000:]
    recs = [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines() if '"vb"' in ln]
    assert recs and all(r["vb"] > 0 for r in recs)  # L*vlb takes part (a fixed-variance teacher gives 0.0)
    conf = json.loads((run / "student" / "unet" / "config.json").read_text())
    assert conf["out_channels"] == 6


@pytest.mark.parametrize("out_channels,variance_type", [(6, "fixed_small"), (3, "learned_range")])
def test_variance_channels_must_match_the_scheduler(tmp_path, out_channels, variance_type):
    d = learned_sigma_pipeline(tmp_path / "bad", out_channels, variance_type)
    with pytest.raises(teachers.UserError, match="output channels"):
        teachers.load_teacher(str(d))
