"""What the paper-scale command meets before its first step, on tiny stand-ins of the same families (an SD-2.1-like
pipeline and a CIFAR-10-like DDPM built from configs): the dry-run answers for the command as it will run on the
GPU (--half on a CPU, no weight read, a hub teacher missing from the cache), DKDM's presets per teacher."""

import json
import shutil

import pytest
import torch

import boot
import costs
import dkdm


def cifar_like(path, learned=False):
    """A DDPMPipeline of the google/ddpm-cifar10-32 family: an unconditional UNet2DModel (3x8x8 here), a linear
    schedule with T = 1000, fixed variance (learned: 6 output channels and learned_range, the paper's teachers)."""
    from diffusers import DDPMPipeline, DDPMScheduler, UNet2DModel

    torch.manual_seed(0)
    unet = UNet2DModel(
        sample_size=8,
        in_channels=3,
        out_channels=6 if learned else 3,
        layers_per_block=1,
        block_out_channels=(8, 16),
        down_block_types=("DownBlock2D",) * 2,
        up_block_types=("UpBlock2D",) * 2,
        norm_num_groups=4,
    )
    sched = DDPMScheduler(beta_schedule="linear", variance_type="learned_range" if learned else "fixed_small")
    DDPMPipeline(unet=unet, scheduler=sched).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def cifar_dir(tmp_path_factory):
    return cifar_like(tmp_path_factory.mktemp("cifar") / "ddpm")


def dry(main, args, capsys):
    assert main([*map(str, args), "--dry-run"]) == 0, capsys.readouterr().err
    return json.loads(capsys.readouterr().out)


def test_the_dry_run_plans_the_gpu_command_on_a_cpu(cifar_dir, tiny_sd_dir, tmp_path, monkeypatch, capsys):
    """--half is accepted by a dry-run on a CPU and the estimate counts a float16 teacher: 2 bytes a parameter
    where float32 takes 4 (costs.GiB = 1: the estimate's figures in bytes). DKDM's dry-run reads no weight: a copy
    of the teacher without its weight files gives the same answer."""
    monkeypatch.setattr(costs, "GiB", 1)
    (tmp_path / "p.txt").write_text("a red cube\n")
    sd = [*("--teacher", tiny_sd_dir, "--prompts", tmp_path / "p.txt", "--out", tmp_path / "r")]
    full, half = dry(boot.main, sd, capsys), dry(boot.main, [*sd, "--half"], capsys)
    n = full["memory_estimate"]["teacher_params"]
    assert half["half"] and full["memory_estimate"]["teacher_weights_GiB"] == 4 * n
    assert half["memory_estimate"]["teacher_weights_GiB"] == 2 * n
    bare = tmp_path / "no-weights"
    shutil.copytree(cifar_dir, bare)
    for f in bare.rglob("*.safetensors"):
        f.unlink()
    with pytest.raises(dkdm.UserError, match="cannot load unet"):  # the copy cannot train: no weights
        dkdm.teachers.load_teacher(str(bare))
    plans = {
        (t, h): dry(dkdm.main, ["--teacher", t, "--out", tmp_path / "d", *(["--half"] if h else [])], capsys)
        for t in (cifar_dir, bare)
        for h in (False, True)
    }
    for h in (False, True):
        assert plans[cifar_dir, h]["memory_estimate"] == plans[bare, h]["memory_estimate"]
        n = plans[bare, h]["memory_estimate"]["teacher_params"]
        assert plans[bare, h]["memory_estimate"]["teacher_weights_GiB"] == (2 if h else 4) * n
    assert not (tmp_path / "r").exists() and not (tmp_path / "d").exists()


def test_a_hub_teacher_missing_from_the_cache_still_gets_its_config(tmp_path, monkeypatch, capsys):
    """Offline, not cached: both scripts print the resolved config (exit 0) and say the estimate needs the configs."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    (tmp_path / "p.txt").write_text("a red cube\n")
    b = dry(boot.main, ["--teacher", "sd21", "--prompts", tmp_path / "p.txt", "--half"], capsys)
    d = dry(dkdm.main, ["--teacher", "ddpm-cifar10", "--half"], capsys)
    assert b["lr"] == 2e-5 and b["delta"] == 0.01  # Table 3's SD row
    assert d["teacher"] == "ddpm-cifar10" and d["half"] and (d["lr"], d["batch"], d["warmup"]) == (1e-4, 128, 0)
    assert d["preset"] == "ddpm-cifar10" and d["preset_source"].startswith("official: ")  # the recipe, labelled
    for plan in (b, d):
        assert plan["memory_estimate"].startswith("unavailable: it needs the teacher's configs"), plan


# --- DKDM presets per teacher: None -> the teacher's row -> resolved, as boot.py's -----------------------------------
MEASURED_CNN = dict(iters=10_000, lr=1e-3, ema=0.998, lr_decay=(0, 0), warmup=200, batch=64, rho=0.4, clip_grad=1.0)
MEASURED_VIT = {**MEASURED_CNN, "lr": 3e-3, "ema": 0.9995, "lr_decay": (7000, 10_000)}  # the digits DiT rows
OFFICIAL_CIFAR = dict(iters=200_000, lr=1e-4, ema=0.9999, lr_decay=(0, 0), warmup=0, batch=128, rho=0.4, clip_grad=0.0)


def fields(cfg):
    return {k: getattr(cfg, k) for k in MEASURED_CNN}


def test_dkdm_presets_follow_the_teacher(cifar_dir, tmp_path):
    """The embedded teachers keep the settings every digits bench row was measured with (the DiT's decay schedule
    there only); a CIFAR-10-family teacher, by registry name, hub id or a local DDPMPipeline (learned sigma too),
    gets the official recipe, for a vit student as well (no row of its own, no digits schedule); an unknown teacher
    gets BASE, constant lr; a flag or --preset wins."""
    for name in ("digits", "gmm"):
        assert fields(dkdm.DKDMConfig(teacher=name)) == MEASURED_CNN
        assert fields(dkdm.DKDMConfig(teacher=name, student="vit")) == MEASURED_VIT
    learned = cifar_like(tmp_path / "iddpm", learned=True)
    for name in ("ddpm-cifar10", "google/ddpm-cifar10-32", str(cifar_dir), str(learned)):
        for student in ("cnn", "vit"):
            cfg = dkdm.DKDMConfig(teacher=name, student=student)
            assert cfg.preset == "ddpm-cifar10" and fields(cfg) == OFFICIAL_CIFAR, (name, student)
    assert dkdm.preset_note(dkdm.DKDMConfig(teacher="ddpm-cifar10")).startswith("official: ")
    assert "no row for student 'vit'" in dkdm.preset_note(dkdm.DKDMConfig(teacher="ddpm-cifar10", student="vit"))
    ldm = dkdm.DKDMConfig(teacher="ldm-celebahq")
    assert (ldm.lr, ldm.batch, ldm.rho, ldm.ema, ldm.warmup, ldm.lr_decay) == (9.6e-5, 48, 4.0, 0.9999, 0, (0, 0))
    unknown = dkdm.DKDMConfig(teacher="nobody/unknown-model", student="vit")
    assert unknown.preset == "base" and unknown.lr_decay == (0, 0) and unknown.clip_grad == 0.0
    assert dkdm.DKDMConfig(teacher="ddpm-cifar10", lr=3e-4, iters=5).lr == 3e-4
    assert fields(dkdm.DKDMConfig(teacher=str(cifar_dir), preset="digits")) == MEASURED_CNN


@pytest.mark.parametrize(
    "step,expected",
    [
        (0, 1e-3 / 200),  # warm-up's first step: 1 / 200 of the peak, not 0
        (99, 1e-3 * 100 / 200),
        (199, 1e-3),  # the peak, from the last warm-up step
        (700, 1e-3),  # constant until the decay starts
        (850, 1e-3 * (0.1 + 0.9 * 0.5)),  # half-way down the cosine: 0.1 + 0.9 (1 + cos(pi / 2)) / 2
        (1000, 1e-4),  # its end: 10 % of the peak
        (1300, 1e-4),  # after the end: stays at 10 % (no second half-wave)
        (50_000, 1e-4),  # a run continued far past the horizon it started with
    ],
)
def test_dkdm_learning_rate_at_given_steps(step, expected):
    cfg = dkdm.DKDMConfig(teacher="gmm", lr=1e-3, warmup=200, lr_decay=(700, 1000), iters=1000)
    assert dkdm.learning_rate(cfg, step) == pytest.approx(expected, rel=1e-12)


def test_a_continued_run_keeps_its_schedule(tmp_path, monkeypatch):
    """A rerun with a larger --iters keeps the decay horizon config.json holds, and the learning rate of the
    continued steps is the schedule's at the global step (warm-up does not start over): the optimizer's lr in the
    last checkpoint is the lr of its last iteration, k / warmup of the peak at the k-th iteration."""
    monkeypatch.setenv("TQDM_DISABLE", "1")
    run = tmp_path / "run"
    args = ["--teacher", "gmm", "--method", "iterative", "--batch", "4", "--lr", "1e-3", "--warmup", "10"]
    args += ["--lr-decay", "20", "40", "--out", str(run)]
    assert dkdm.main([*args, "--iters", "3"]) == 0
    assert dkdm.main([*args, "--iters", "6"]) == 0
    assert json.loads((run / "config.json").read_text())["lr_decay"] == [20, 40]
    state = dkdm.runkit.load_checkpoint(run / "checkpoints" / "latest.pt")
    assert state["step"] == 6 and state["opt"]["param_groups"][0]["lr"] == pytest.approx(1e-3 * 6 / 10, rel=1e-12)
