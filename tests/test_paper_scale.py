"""What the paper-scale command meets before its first step, on tiny stand-ins of the same families (an SD-2.1-like
pipeline and a CIFAR-10-like DDPM built from configs): the dry-run answers for the command as it will run on the
GPU (--half on a CPU, no weight read, a hub teacher missing from the cache), DKDM's presets per teacher."""

import json
import shutil

import pytest

import boot
import costs
import dkdm

from conftest import tiny_ddpm_dir


@pytest.fixture(scope="module")
def cifar_dir(tmp_path_factory):
    return tiny_ddpm_dir(tmp_path_factory.mktemp("cifar") / "ddpm")


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
    learned = tiny_ddpm_dir(tmp_path / "iddpm", learned=True)
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


# --- The cost before the first step: what bench/gpu.py measured, per GPU kind --------------------------------------
def test_dry_run_time_from_the_gpu_records(tmp_path):
    """ms per iteration and GPU-hours of the run, per GPU kind measured, scaled to the command's batch per GPU
    (said so), with date and device; CPU and tiny records are no GPU's; none measured: one line."""
    from bench import gpu

    records = {
        "cpu": {"device": "cpu", "date": "d0", "boot_sd21": {"ms_iter": 5.0, "batch": 8}},
        "tiny": {"device": "X", "date": "d1", "tiny": True, "boot_sd21": {"ms_iter": 5.0, "batch": 8}},
        "H": {"device": "H", "date": "d2", "boot_sd21": {"ms_iter": 400.0, "batch": 8}},
        "R": {"device": "R", "date": "d3", "source": "by hand", "boot_sd21": {"ms_iter_range": [90, 110], "batch": 4}},
    }
    (tmp_path / "r.json").write_text(json.dumps({"gpu": records}))
    t = costs.measured_time("boot_sd21", 9000, 8, 8, tmp_path / "r.json")
    assert sorted(t) == ["H", "R"]
    # 9,000 iterations x 0.4 s = 1 h on each of 8 GPUs
    assert "400 ms/iteration at batch 8 per GPU: 9,000 iterations on 8 GPU(s) = 8.0 GPU-hours, 1.0 h" in t["H"]
    assert "(d2, H; python bench/run.py gpu)" in t["H"]
    # measured at batch 4: x 2 for batch 8; 9,000 x 0.18-0.22 s x 8 GPUs = 3.6-4.4 GPU-hours
    assert (
        "90-110 ms/iteration at batch 4 per GPU, x 2 for this command's 8" in t["R"] and "3.6-4.4 GPU-hours" in t["R"]
    )
    assert "(d3, R; by hand)" in t["R"]
    assert costs.measured_time("dkdm_vit_cifar10", 10, 1, 8, tmp_path / "r.json").startswith("no GPU has measured")
    assert costs.measured_time(None, 10, 1, 8, tmp_path / "r.json").startswith("no GPU measurement for this run")
    # bench/run.py gpu adds its device's record, keeps the others; a record of before is keyed by its device
    new = {"device": "H", "date": "d4"}
    assert gpu.with_record({"gpu": records}, new) == {**records, "H": new}
    assert gpu.with_record({"gpu": {"device": "cpu", "date": "d0"}}, new) == {
        "cpu": {"device": "cpu", "date": "d0"},
        "H": new,
    }


def test_the_dry_run_prints_the_measured_time_or_says_none(tmp_path, capsys):
    """The repository's bench/results.json holds one H200 record (an earlier version, by hand, labelled so): the
    SD 2.1 dry-run at 8 processes prints its GPU-hours for the preset's 500,000 iterations; digits has none."""
    (tmp_path / "p.txt").write_text("a red cube\n")
    sd = dry(boot.main, ["--teacher", "sd21", "--prompts", tmp_path / "p.txt", "--half", "--processes", "8"], capsys)
    h200 = sd["time_estimate"]["NVIDIA H200"]
    # 500,000 x 0.400-0.450 s x 8 GPUs / 3,600 = 444.4-500.0 GPU-hours
    assert "500,000 iterations on 8 GPU(s) = 444.4-500.0 GPU-hours" in h200 and "main 68f583d" in h200
    assert dry(boot.main, ["--teacher", "gmm"], capsys)["time_estimate"].startswith("no GPU measurement")
    vit = dry(dkdm.main, ["--teacher", "ddpm-cifar10", "--student", "vit", "--processes", "2"], capsys)
    assert "200,000 iterations on 2 GPU(s)" in vit["time_estimate"]["NVIDIA H200"]
