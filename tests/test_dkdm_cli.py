"""dkdm.py end to end, offline on CPU: smoke runs (cnn and vit students; the digits teacher and a
tiny latent teacher), baselines, resume, a 2-process torchrun, and bad input."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch


ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TQDM_DISABLE": "1"}
TINY = ["--rho", "0.01", "--batch", "8", "--chains", "16", "--log-every", "2", "--ckpt-every", "2"]


def dkdm(*args, cwd=ROOT, timeout=300):
    return subprocess.run(
        [sys.executable, str(ROOT / "dkdm.py"), *map(str, args)],
        cwd=cwd,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def ok(r):
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    return r


def tiny_latent_teacher(path, T=50):
    """An LDMPipeline-like directory: UNet2DModel on 3x8x8 latents, a VQModel (16x16 images),
    a DDIM scheduler with T steps; fixed variance (the paper's latent teachers: L*simple only)."""
    from diffusers import DDIMScheduler, LDMPipeline, UNet2DModel, VQModel

    torch.manual_seed(0)
    unet = UNet2DModel(
        sample_size=8,
        in_channels=3,
        out_channels=3,
        layers_per_block=1,
        block_out_channels=(8, 16),
        down_block_types=("DownBlock2D",) * 2,
        up_block_types=("UpBlock2D",) * 2,
        norm_num_groups=4,
    )
    vq = VQModel(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        block_out_channels=(8, 16),
        latent_channels=3,
        norm_num_groups=4,
        num_vq_embeddings=32,
        vq_embed_dim=3,
        sample_size=16,
    )
    sched = DDIMScheduler(num_train_timesteps=T, beta_schedule="linear", clip_sample=False)
    LDMPipeline(vqvae=vq, unet=unet, scheduler=sched).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def latent_teacher(tmp_path_factory):
    return tiny_latent_teacher(tmp_path_factory.mktemp("tiny-ldm") / "ldm")


def student_weights(run):
    from safetensors.torch import load_file

    return load_file(str(Path(run) / "student" / "unet" / "diffusion_pytorch_model.safetensors"))


def check_run(run, shape):

    run = Path(run)
    assert (run / "preview.png").is_file() and (run / "config.json").is_file()
    recs = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in recs if "loss" in r]
    assert steps and all(torch.isfinite(torch.tensor(r["loss"])) for r in steps)
    from pipelines import students

    gen = students.ExportedStudent(run)
    noise = torch.randn(2, *shape)
    cond = gen.label_cond([1, 2]) if gen.num_classes else None
    gen.nfe = 3
    assert gen.generate(noise, cond).shape == (2, *shape)
    return recs


def test_cnn_on_digits_dynamic_then_sample(tmp_path):
    run = tmp_path / "run"
    r = ok(dkdm("--iters", 4, *TINY, "--eval-every", 4, "--out", run))
    recs = check_run(run, (1, 8, 8))
    assert recs[0]["pool_init"] == "staggered" and recs[0]["pool_size"] == 80
    assert [r["step"] for r in recs if "proxy_fd" in r] == [4] and recs[-1]["proxy_kid"] == recs[-1]["proxy_kid"]
    assert "ms_teacher" in recs[-1] and "student -> " in r.stdout
    info = json.loads((run / "student" / "generator.json").read_text())
    assert info["method"] == "dkdm" and info["num_classes"] == 10 and info["sample_shape"] == [1, 8, 8]
    ok(dkdm("sample", run, "--steps", 5, "--n", 4))
    assert (run / "samples-ancestral5.png").is_file()


def test_vit_on_digits_iterative(tmp_path):
    run = tmp_path / "run"
    ok(dkdm("--student", "vit", "--method", "iterative", "--iters", 3, "--batch", 4, "--log-every", 1, "--out", run))
    check_run(run, (1, 8, 8))
    assert json.loads((run / "student" / "model_index.json").read_text())["unet"][1] == "DiTTransformer2DModel"


@pytest.mark.parametrize("student", ["cnn", pytest.param("vit", marks=pytest.mark.slow)])
def test_latent_teacher_students(tmp_path, latent_teacher, student):
    run = tmp_path / "run"
    ok(dkdm("--teacher", latent_teacher, "--student", student, "--iters", 3, *TINY, "--out", run))
    check_run(run, (3, 8, 8))
    sched = json.loads((run / "student" / "scheduler" / "scheduler_config.json").read_text())
    assert sched["clip_sample"] is False and sched["num_train_timesteps"] == 50  # the teacher's
    recs = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert all(r["vb"] == 0 for r in recs if "vb" in r)  # fixed-variance teacher: L*simple only


@pytest.mark.slow
def test_baselines(tmp_path, latent_teacher):
    ok(dkdm("--method", "data", "--iters", 3, "--batch", 8, "--out", tmp_path / "data"))
    check_run(tmp_path / "data", (1, 8, 8))
    run = tmp_path / "free"
    ok(
        dkdm(
            "--teacher",
            latent_teacher,
            "--method",
            "data-free",
            "--synth-n",
            12,
            "--synth-steps",
            3,
            "--iters",
            3,
            "--batch",
            4,
            "--out",
            run,
        )
    )
    check_run(run, (3, 8, 8))
    assert torch.load(run / "synthetic.pt", weights_only=True)["x"].shape == (12, 3, 8, 8)


@pytest.mark.slow
def test_budget_resume_equals_one_run(tmp_path, latent_teacher):
    args = ["--teacher", latent_teacher, *TINY]
    ok(dkdm(*args, "--iters", 12, "--out", tmp_path / "straight"))
    ok(dkdm(*args, "--iters", 6, "--out", tmp_path / "split"))
    r = ok(dkdm(*args, "--iters", 12, "--out", tmp_path / "split"))
    assert "resuming " in r.stdout
    a, b = student_weights(tmp_path / "straight"), student_weights(tmp_path / "split")
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow
def test_kill_and_rerun_reproduces(tmp_path, latent_teacher):
    args = [
        "--teacher",
        latent_teacher,
        "--rho",
        "0.1",
        "--batch",
        "8",
        "--chains",
        "16",
        "--iters",
        "300",
        "--ckpt-every",
        "20",
        "--log-every",
        "50",
    ]
    ok(dkdm(*args, "--out", tmp_path / "straight"))
    run = tmp_path / "killed"
    p = subprocess.Popen(
        [sys.executable, str(ROOT / "dkdm.py"), *map(str, args), "--out", str(run)],
        cwd=ROOT,
        env=ENV,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    ckpt = run / "checkpoints" / "latest.pt"
    while p.poll() is None:
        if ckpt.is_file() and torch.load(ckpt, weights_only=True)["step"] >= 20:
            break
        time.sleep(0.02)
    assert p.poll() is None, "the run finished before it could be killed"
    p.send_signal(signal.SIGKILL)
    p.wait()
    assert not (run / "student").exists()
    r = ok(dkdm(*args, "--out", run))
    assert "resuming " in r.stdout
    a, b = student_weights(tmp_path / "straight"), student_weights(run)
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow
def test_torchrun_two_processes(tmp_path, latent_teacher):
    run = tmp_path / "run"
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        str(ROOT / "dkdm.py"),
        "--teacher",
        str(latent_teacher),
        "--student",
        "vit",
        *TINY,
        "--iters",
        "4",
        "--out",
        str(run),
    ]
    r = subprocess.run(cmd, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=600)
    ok(r)
    check_run(run, (3, 8, 8))
    assert sorted(f.name for f in (run / "checkpoints").glob("stream-*")) == [
        "stream-rank0-step4.pt",
        "stream-rank1-step4.pt",
    ]  # each process keeps its own pool
    assert json.loads((run / "config.json").read_text())["world_size"] == 2


def misfit_student(tmp_path):
    """A UNet2DModel config for 3-channel inputs: the digits teacher makes 1x8x8."""
    conf = dict(
        _class_name="UNet2DModel",
        sample_size=8,
        in_channels=3,
        out_channels=2,
        layers_per_block=1,
        block_out_channels=[16, 32],
        down_block_types=["DownBlock2D"] * 2,
        up_block_types=["UpBlock2D"] * 2,
        norm_num_groups=8,
        num_class_embeds=11,
    )
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "config.json").write_text(json.dumps(conf))
    return tmp_path / "bad"


@pytest.mark.parametrize(
    "bad",
    [
        ["--rho", "0"],
        ["--rho", "-0.4"],
        ["--student", "resnet"],
        ["--lam", "-1"],
        ["--student", "MISFIT"],
        ["--method", "nope"],
        ["--chains", "3"],
        ["--method", "data", "--teacher", "gmm"],
    ],
)
def test_bad_input_one_line_nothing_written(tmp_path, bad):
    bad = [str(misfit_student(tmp_path)) if a == "MISFIT" else a for a in bad]
    run = tmp_path / "run"
    r = dkdm(*bad, "--iters", 2, "--out", run)
    assert r.returncode == 2, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and "error" in r.stderr, r.stderr
    assert not run.exists()
