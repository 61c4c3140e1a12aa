"""Every export is a diffusers pipeline: loaded by plain diffusers in a process that cannot import
this repository, it makes the same images as the repository's own samplers (max |diff| <= 1e-5).

Tiny runs of every export kind (BOOT: teacher copy, UNet2DModel copy, small student, text-to-image,
IF stage I and II; DKDM: cnn and vit students, a cnn on a latent teacher) and the shipped digits teacher are
sampled twice: here, by `students.ExportedStudent(run).generate` with `ExportedStudent.condition` (what
`boot.py sample` and evaluate.py run) or by `teachers.ddim` (DKDM students, the teacher), and in a `python -I`
subprocess started in an empty directory with `DiffusionPipeline.from_pretrained(dir,
trust_remote_code=True)` and the diffusers call conventions (per-image seeded generators).
"""

import contextlib
import dataclasses
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import boot
import dkdm
import runkit
import teachers
from pipelines import students

from conftest import tiny_ddpm_dir


N = 4  # images per export
TOL = 1e-5
TRAIN = ["--iters", "1", "--batch", "2", "--preview", "0", "--check", "0", "--lr", "1e-2", "--ema", "0"]
PROMPT = "a red cube"

# Runs in a fresh interpreter, cwd = an empty temp dir, `-I`: sys.path holds only the standard
# library and site-packages. Writes every case's images as .npy files.
OUTSIDE = r"""
import json, sys
import numpy as np, torch
from diffusers import DiffusionPipeline

import importlib.util
assert not any(importlib.util.find_spec(m) for m in ("teachers", "boot", "dkdm", "pipelines")), sys.path
cases = json.loads(open("cases.json").read())
pipes = {}
def pipe_of(path):
    if path not in pipes:
        pipes[path] = DiffusionPipeline.from_pretrained(path, trust_remote_code=True)
        pipes[path].set_progress_bar_config(disable=True)
    return pipes[path]
def seeded(n):
    return [torch.Generator().manual_seed(s) for s in range(n)]
for name, case in cases.items():
    pipe = pipe_of(case["path"])
    kw = dict(case.get("kwargs", {}))
    if "stage1" in case:  # IF stage II: the stage-I student's one-step output is its input
        low = pipe_of(case["stage1"])(prompt=kw["prompt"], batch_size=case["n"], generator=seeded(case["n"]),
                                      output_type="latent").images
        shape = (1, pipe.config.sample_channels, pipe.config.sample_size, pipe.config.sample_size)
        kw.update(image=low, latents=torch.cat([torch.randn(shape, generator=g) for g in seeded(case["n"])]),
                  generator=torch.Generator().manual_seed(0))
    else:
        kw["generator"] = seeded(case["n"])
    out = pipe(batch_size=case["n"], output_type="np", **kw)
    np.save(name + ".npy", out.images)
    print(name, type(pipe).__name__, out.images.shape)
    if case.get("roundtrip"):  # saved again by plain diffusers (what push_to_hub uploads), loaded again
        pipe.save_pretrained(name + "-saved")
        saved = json.loads(open(name + "-saved/model_index.json").read())["_class_name"]
        again = DiffusionPipeline.from_pretrained(name + "-saved", trust_remote_code=True)
        again.set_progress_bar_config(disable=True)
        kw["generator"] = seeded(case["n"])
        np.save(name + "-saved.npy", again(batch_size=case["n"], output_type="np", **kw).images)
        print("roundtrip", name, "/".join(saved))
    if "snippet" in case:  # the three lines boot.py / dkdm.py printed, run as they are
        scope = {}
        exec(case["snippet"], scope)
        print("snippet", name, len(scope["images"]), type(scope["images"][0]).__name__)
"""


def outside(cases: dict, tmp):
    """Run OUTSIDE on `cases`; {name: images (N, H, W, C)} and the pipeline class of each."""
    work = Path(tmp) / "outside"
    work.mkdir()
    (work / "cases.json").write_text(json.dumps(cases))
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    env.update(OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", HF_MODULES_CACHE=str(Path(tmp) / "modules"))
    p = subprocess.run(
        [sys.executable, "-I", "-c", OUTSIDE], cwd=work, env=env, capture_output=True, text=True, timeout=300
    )
    assert p.returncode == 0, p.stderr[-3000:]
    lines = [line.split() for line in p.stdout.splitlines()]
    classes = dict(w[:2] for w in lines if w[:1] and w[0] in cases)
    snippets = {w[1]: (int(w[2]), w[3]) for w in lines if w[:1] == ["snippet"]}
    saved = {w[1]: (w[2], np.load(work / f"{w[1]}-saved.npy")) for w in lines if w[:1] == ["roundtrip"]}
    return {k: np.load(work / f"{k}.npy") for k in cases}, classes, snippets, saved


def printed_snippet(main, args):
    """Run a training CLI in this process; the plain-diffusers lines it printed after training."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main([str(a) for a in args]) == 0
    text = out.getvalue()
    assert "load it with plain diffusers:" in text, text[-2000:]
    return "\n".join(text.split("load it with plain diffusers:\n")[1].splitlines()[:3])


def as_np(images):
    return images.float().permute(0, 2, 3, 1).cpu().numpy()


def boot_reference(run):
    """The student as training saw it, not through its export: the network rebuilt by boot.py and
    loaded from checkpoints/latest.pt, y_theta = boot.y_theta with the run's own constants,
    conditions from the teacher (labels k mod K, its prompt encoder, IF-II's noised stage-I
    output), decoded by the teacher. Seeds 0..N-1, the student's default w. Model space and images."""
    stored = json.loads((Path(run) / "config.json").read_text())  # the config's fields, and the run's id
    cfg = boot.BootConfig(**{f.name: stored[f.name] for f in dataclasses.fields(boot.BootConfig)})
    teacher, conds = boot.load_teacher_and_context(cfg, torch.device("cpu"))
    model, student = boot.make_student(teacher, cfg, boot.default_weight(cfg, teacher))
    model.load_state_dict(runkit.load_checkpoint(Path(run) / "checkpoints" / "latest.pt")["ema"])
    if conds.prompts is not None:
        cond = {"encoder_hidden_states": conds.encoder.encode_prompts([PROMPT] * N)["encoder_hidden_states"].float()}
        if cfg.stage == 2:
            x1, _ = boot_reference(cfg.stage1_run)
            cond.update(
                teacher.lowres_cond(x1.clamp(-1, 1), cfg.noise_level, generator=torch.Generator().manual_seed(0))
            )
    else:
        cond = teacher.label_cond(torch.arange(N) % teacher.num_classes) if teacher.num_classes else None
    noise = teachers.seeded_noise(range(N), teacher.sample_shape)
    with torch.no_grad():
        x = boot.y_theta(model.eval(), student, noise, torch.zeros(N), cond, None)
        return x, as_np(teacher.decode(x))


def ddim_reference(path, steps, name=None):
    """`teachers.ddim` of a DKDM student (or the teacher) at its default guidance, labels k mod K."""
    t = teachers.load_teacher(name or str(path))
    cond = t.label_cond(torch.arange(N) % t.num_classes) if t.num_classes else None
    x = teachers.ddim(t, teachers.seeded_noise(range(N), t.sample_shape), steps, cond, t.default_guidance)
    return as_np(t.decode(x))


@pytest.fixture(scope="module")
def exports(tmp_path_factory, tiny_sd_dir, tiny_if_dirs):
    """(cases for OUTSIDE, the repository's images for each case)."""

    tmp = tmp_path_factory.mktemp("exports")
    (tmp / "p.txt").write_text(PROMPT + "\n")
    prompts = ["--prompts", tmp / "p.txt"]
    tiny_ddpm_dir(tmp / "ddpm")
    stage1, stage2 = tiny_if_dirs
    runs = {
        "boot_copy": ["--teacher", "digits", "--w", "2"],
        "boot_copy_unet2d": ["--teacher", tmp / "ddpm", "--loss", "l2"],  # its preset's LPIPS needs a download
        "boot_small": ["--teacher", "digits", "--student", "small"],
        "boot_text_latent": ["--teacher", tiny_sd_dir, *prompts, "--w", "3"],
        "boot_if_stage1": ["--teacher", stage1, *prompts],
        "boot_if_stage2": ["--teacher", stage2, "--stage", "2", "--stage1-run", tmp / "boot_if_stage1", *prompts],
    }
    cases, ref = {}, {}
    for name, args in runs.items():
        snippet = printed_snippet(boot.main, [*args, *TRAIN, "--out", tmp / name])
        d = str(tmp / name / "student")
        text = "--prompts" in map(str, args)
        cases[name] = {
            "path": d,
            "n": N,
            "kwargs": {"prompt": PROMPT} if text else {},
            "roundtrip": name == "boot_copy",
        }
        if name in ("boot_copy", "boot_text_latent"):
            cases[name]["snippet"] = snippet
        ref[name] = boot_reference(tmp / name)[1]
    cases["boot_if_stage2"]["stage1"] = str(tmp / "boot_if_stage1" / "student")
    # BOOT's initial copy student is the teacher's x0-hat at t_max, whatever the target time (App. C.3)
    cfg = boot.resolve(boot.BootConfig(teacher="digits"))
    t, conds = boot.load_teacher_and_context(cfg, torch.device("cpu"))
    net, student = boot.make_student(t, cfg, boot.default_weight(cfg, t))
    facts = boot.generator_facts(cfg, t, student, net)
    students.boot_pipeline(net.eval(), facts, t).save_pretrained(tmp / "init")
    cases["boot_copy_init"] = {"path": str(tmp / "init"), "n": N, "kwargs": {}}
    x0 = t.x0(
        teachers.seeded_noise(range(N), t.sample_shape),
        torch.full((N,), 0.9),
        t.label_cond(torch.arange(N) % 10),
        t.default_guidance,
    )
    ref["boot_copy_init"] = as_np(t.decode(x0))
    for student in ("cnn", "vit"):
        name = f"dkdm_{student}"
        snippet = printed_snippet(
            dkdm.main,
            [
                "--student",
                student,
                "--method",
                "data",
                "--iters",
                "2",
                "--batch",
                "4",
                "--lr",
                "1e-2",
                "--ema",
                "0",
                "--out",
                tmp / name,
            ],
        )
        cases[name] = {
            "path": str(tmp / name / "student"),
            "n": N,
            "kwargs": {"num_inference_steps": 50},
            "snippet": snippet,
            "roundtrip": True,
        }
        ref[name] = ddim_reference(tmp / name / "student", 50)
    from test_dkdm_cli import TINY as DKDM_TINY  # a VQ latent teacher, T = 50
    from test_dkdm_cli import tiny_latent_teacher

    latent = tiny_latent_teacher(tmp / "ldm")
    assert (
        dkdm.main([str(a) for a in ["--teacher", latent, "--iters", "2", *DKDM_TINY, "--out", tmp / "dkdm_latent"]])
        == 0
    )
    cases["dkdm_cnn_latent"] = {
        "path": str(tmp / "dkdm_latent" / "student"),
        "n": N,
        "kwargs": {"num_inference_steps": 50},
    }
    ref["dkdm_cnn_latent"] = ddim_reference(tmp / "dkdm_latent" / "student", 50)
    for steps in (10, 50):
        name = f"teacher_ddim{steps}"
        cases[name] = {
            "path": str(teachers.DIGITS_DIR),
            "n": N,
            "kwargs": {"num_inference_steps": steps},
            "roundtrip": steps == 10,
        }
        ref[name] = ddim_reference(None, steps, name="digits")
    return cases, ref, tmp


def test_every_export_loads_in_plain_diffusers_and_matches_the_repository(exports):
    cases, ref, tmp = exports
    images, classes, snippets, saved = outside(cases, tmp)
    diffs = {k: float(np.abs(images[k] - ref[k]).max()) for k in cases}
    print({k: (classes.get(k), f"{v:.1e}") for k, v in diffs.items()})
    for k in cases:
        assert images[k].shape == ref[k].shape, k
        assert diffs[k] <= TOL, (k, diffs[k])
        assert images[k].std() > 0, k  # not a constant image
    assert {classes[k] for k in cases if k.startswith("boot")} == {"BootPipeline"}
    assert {classes[k] for k in cases if not k.startswith("boot")} == {"TrailingDDIMPipeline"}
    # the printed lines load what was written: 10 labelled digits, or one image for the prompt
    assert snippets == {
        "boot_copy": (10, "Image"),
        "boot_text_latent": (1, "Image"),
        "dkdm_cnn": (10, "Image"),
        "dkdm_vit": (10, "Image"),
    }
    # every kind survives save_pretrained in plain diffusers: its own pipeline file and the list-form
    # _class_name go with it, and the copy loads with trust_remote_code=True and makes the same images
    assert sorted(saved) == ["boot_copy", "dkdm_cnn", "dkdm_vit", "teacher_ddim10"]
    for k, (class_name, again) in saved.items():
        assert class_name == (
            "pipeline_boot/BootPipeline" if k.startswith("boot") else "pipeline_ddim/TrailingDDIMPipeline"
        )
        assert np.array_equal(again, images[k]), k


def test_shipped_teacher_config_states_the_projects_ddim():
    """What a diffusers user reads: the custom pipeline file, a DDIMScheduler with trailing spacing,
    clipping, alpha_bar = 1 after the last step (teachers.ddim's conventions)."""
    d = teachers.DIGITS_DIR
    index = json.loads((d / "model_index.json").read_text())
    assert index["_class_name"] == ["pipeline_ddim", "TrailingDDIMPipeline"] and (d / "pipeline_ddim.py").is_file()
    assert (d / "pipeline_ddim.py").read_text() == (teachers.ROOT / "pipelines" / "pipeline_ddim.py").read_text()
    sched = json.loads((d / "scheduler" / "scheduler_config.json").read_text())
    assert sched["_class_name"] == "DDIMScheduler" and sched["timestep_spacing"] == "trailing"
    assert sched["clip_sample"] and sched["set_alpha_to_one"] and sched["steps_offset"] == 0
    from diffusers import DDIMScheduler

    s = DDIMScheduler.from_config(sched)
    for steps in (1, 7, 10, 50):
        s.set_timesteps(steps)
        assert s.timesteps.tolist() == teachers.trailing_steps(1000, steps)


def test_stock_ddim_scheduler_from_the_shipped_config_is_teachers_ddim():
    """A diffusers user stepping the shipped UNet with the shipped scheduler config (no custom code,
    use_clipped_model_output=True) gets teachers.ddim's samples: the config tells the truth."""
    from diffusers import DDIMScheduler, UNet2DConditionModel

    d = teachers.DIGITS_DIR
    unet = UNet2DConditionModel.from_pretrained(d / "unet")
    sched = DDIMScheduler.from_pretrained(d / "scheduler")
    t = teachers.load_teacher("digits")
    x = noise = teachers.seeded_noise(range(N), t.sample_shape)
    labels = torch.arange(N) % 10
    sched.set_timesteps(10)
    with torch.no_grad():
        for i in sched.timesteps:
            eps = unet(x, i, encoder_hidden_states=None, class_labels=labels).sample[:, :1]
            x = sched.step(eps, i, x, use_clipped_model_output=True).prev_sample
    ref = teachers.ddim(t, noise, 10, t.label_cond(labels), t.default_guidance)
    assert (x - ref).abs().max() <= TOL


def test_train_digits_writes_the_shipped_pipeline_files(tmp_path):
    """`python assets/train.py digits` (here with 0 steps) writes the model_index.json, scheduler
    config and pipeline file that ship in assets/digits-teacher."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("assets_train", teachers.ASSETS / "train.py")
    assets_train = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(assets_train)
    assets_train.train_digits(out_dir=tmp_path, steps=0)
    for f in ("model_index.json", "scheduler/scheduler_config.json"):
        new, shipped = (json.loads((base / f).read_text()) for base in (tmp_path, teachers.DIGITS_DIR))
        new.pop("_diffusers_version"), shipped.pop("_diffusers_version")
        assert new == shipped, f
    assert (tmp_path / "pipeline_ddim.py").read_text() == (teachers.DIGITS_DIR / "pipeline_ddim.py").read_text()


def test_bad_calls_and_old_exports_are_one_clear_error(tmp_path):
    pipe = students.load_pipeline(teachers.DIGITS_DIR)
    with pytest.raises(ValueError, match="class_labels must lie in 0..9"):
        pipe(batch_size=2, class_labels=[3, 12], num_inference_steps=2)
    with pytest.raises(ValueError, match="num_inference_steps must lie in 1..1000"):
        pipe(batch_size=2, num_inference_steps=0)
    old = tmp_path / "run" / "student"  # a run exported before students were pipelines
    old.mkdir(parents=True)
    (old / "generator.json").write_text(json.dumps({"method": "boot", "teacher": "digits", "sample_shape": [1, 8, 8]}))
    (old / "model_index.json").write_text(json.dumps({"_class_name": "DDPMPipeline"}))
    with pytest.raises(teachers.UserError, match="older version of this repository; rerun its training command"):
        students.ExportedStudent(tmp_path / "run")


def test_the_one_step_pipeline_takes_num_inference_steps_1_only(exports):
    """Code written for few-step pipelines passes num_inference_steps: 1 is the BOOT student's, more is an error."""
    pipe = students.load_pipeline(exports[2] / "init")
    one = pipe(
        batch_size=2, num_inference_steps=1, generator=torch.Generator().manual_seed(0), output_type="np"
    ).images
    assert np.array_equal(one, pipe(batch_size=2, generator=torch.Generator().manual_seed(0), output_type="np").images)
    with pytest.raises(ValueError, match="samples in one step: num_inference_steps must be 1, not 4"):
        pipe(batch_size=2, num_inference_steps=4)


@pytest.mark.parametrize("kind", ["copy", "copy-class", "small"])
def test_the_exported_pipeline_computes_boot_y_theta_bitwise(kind, tmp_path, tiny_sd_dir):
    """boot.py's y_theta (one function per kind of student) and the copy of it every export carries
    (pipelines/pipeline_boot.py's boot_generate, steered by the pipeline's config): the same tensor, bit for
    bit, at several target times and weights (given, default, per example), with a student whose new (t, w)
    input is not zero."""

    from pipelines.pipeline_boot import boot_generate

    if kind == "copy-class":  # an unconditional UNet2DModel: t enters through a class embedding
        tiny_ddpm_dir(tmp_path / "ddpm")
        name, prompts = str(tmp_path / "ddpm"), None
    else:  # a text-to-image latent teacher, guided: prompts, CFG weight, VAE
        (tmp_path / "p.txt").write_text(PROMPT + "\n")
        name, prompts = str(tiny_sd_dir), str(tmp_path / "p.txt")
    cfg = boot.BootConfig(teacher=name, prompts=prompts, student=kind.split("-")[0], loss="l2")  # lpips: a download
    cfg = boot.resolve(cfg)
    teacher, context = boot.load_teacher_and_context(cfg, torch.device("cpu"))
    net, student = boot.make_student(teacher, cfg, boot.default_weight(cfg, teacher))
    assert student.kind == kind
    torch.manual_seed(1)
    with torch.no_grad():
        for p in net.parameters():  # the zero-initialised (t, w) input included
            p.add_(0.05 * torch.randn_like(p))
    pipe = students.boot_pipeline(net.eval(), boot.generator_facts(cfg, teacher, student, net), teacher)
    eps = torch.randn(3, *teacher.sample_shape, generator=torch.Generator().manual_seed(2))
    cond = context.fixed(3)
    with torch.no_grad():
        for t in (0.0, 0.3, cfg.t_max):
            for w in (None, 2.0, torch.tensor([1.0, 3.0, 5.0], dtype=torch.float64)):
                tt = torch.full((3,), t)
                a = boot.y_theta(net, student, eps, tt, cond, w)
                b = boot_generate(net, pipe.config, eps, tt, cond, w)
                assert torch.equal(a, b), (kind, t, w, (a - b).abs().max())
        if prompts:  # a pipeline call's guidance_scale reaches the student: its sample at t = 0 for that w
            kw = dict(prompt_embeds=cond["encoder_hidden_states"], latents=eps, output_type="latent")
            call = lambda w: pipe(**kw, guidance_scale=w).images  # noqa: E731
            zero = torch.zeros(3)
            assert torch.equal(call(2.0), boot.y_theta(net, student, eps, zero, cond, 2.0))
            assert torch.equal(call(5.0), boot.y_theta(net, student, eps, zero, cond, 5.0))
            assert not torch.equal(call(2.0), call(5.0))
