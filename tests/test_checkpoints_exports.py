"""Checkpoints kept (--keep N), the student exported while training (--export-every K), resume
from a memory-mapped checkpoint that reproduces the uninterrupted run, and a DKDM export read back as
a teacher."""

import json
from pathlib import Path

import torch

import boot
import dkdm
import runkit
import teachers

from test_dkdm_equations import tiny_teacher


def ckpt_names(run):
    return sorted(f.name for f in (Path(run) / "checkpoints").iterdir())


def test_boot_keeps_the_last_n_and_exports_mid_run(tmp_path, monkeypatch):
    exports = []
    real = boot.finish
    monkeypatch.setattr(
        boot,
        "finish",
        lambda cfg, raw, ema, *a: exports.append(ema.shadow["conv_in.weight"].clone()) or real(cfg, raw, ema, *a),
    )
    run = tmp_path / "run"
    args = [
        "--teacher",
        "gmm",
        "--batch",
        "4",
        "--preview",
        "2",
        "--check",
        "0",
        "--ckpt-every",
        "2",
        "--keep",
        "2",
        "--export-every",
        "3",
        "--out",
        str(run),
    ]
    assert boot.main([*args, "--iters", "6"]) == 0
    assert ckpt_names(run) == ["latest.pt", "step-000000004.pt", "step-000000006.pt"]
    assert runkit.load_checkpoint(run / "checkpoints" / "latest.pt")["step"] == 6
    assert len(exports) == 2 and not torch.equal(exports[0], exports[1])  # step 3 (mid-run) and the end
    assert (run / "student" / "unet" / "diffusion_pytorch_model.safetensors").is_file() and (
        run / "preview.png"
    ).is_file()
    assert boot.main([*args, "--iters", "8"]) == 0  # resume from the mapped latest.pt, keep pruning
    assert ckpt_names(run) == ["latest.pt", "step-000000006.pt", "step-000000008.pt"]


def test_dkdm_keeps_pools_of_kept_checkpoints_and_exports_mid_run(tmp_path, monkeypatch):
    exports = []
    real = dkdm.export_student
    monkeypatch.setattr(
        dkdm, "export_student", lambda cfg, t, raw, ema, path: exports.append(1) or real(cfg, t, raw, ema, path)
    )
    run = tmp_path / "run"
    args = [
        "--rho",
        "0.01",
        "--batch",
        "4",
        "--pool-init",
        "noise",
        "--ckpt-every",
        "2",
        "--keep",
        "2",
        "--export-every",
        "2",
        "--out",
        str(run),
    ]
    assert dkdm.main([*args, "--iters", "5"]) == 0
    assert ckpt_names(run) == [
        "latest.pt",
        "step-000000004.pt",
        "step-000000005.pt",
        "stream-rank0-step4.pt",
        "stream-rank0-step5.pt",
    ]
    assert len(exports) == 3  # steps 2 and 4 while training, then the end
    assert json.loads((run / "student" / "generator.json").read_text())["method"] == "dkdm"
    assert dkdm.main([*args, "--iters", "6", "--export-every", "0"]) == 0
    assert runkit.load_checkpoint(run / "checkpoints" / "latest.pt")["step"] == 6


def test_ema_is_the_closed_form_average_of_the_parameter_sequence():
    """Every export is the EMA: after updates with weights theta_1..theta_n from theta_0,
    e_n = d^n theta_0 + (1 - d) sum_k d^(n - k) theta_k, for parameters and float buffers alike;
    integer buffers are copied."""
    d, n = 0.9, 7
    model = torch.nn.BatchNorm1d(3)  # float weight / bias / running stats and an integer counter
    thetas = [torch.randn(3, generator=torch.Generator().manual_seed(k)) for k in range(n + 1)]
    with torch.no_grad():
        model.weight.copy_(thetas[0])
    ema = runkit.EMA(model, d)
    for k in range(1, n + 1):
        with torch.no_grad():
            model.weight.copy_(thetas[k])
            model.num_batches_tracked += 1
        ema.update(model)
    closed = d**n * thetas[0] + (1 - d) * sum(d ** (n - k) * thetas[k] for k in range(1, n + 1))
    assert torch.allclose(ema.state_dict()["weight"], closed, atol=1e-6)
    assert int(ema.state_dict()["num_batches_tracked"]) == n
    copy = torch.nn.BatchNorm1d(3)
    ema.copy_to(copy)
    assert torch.equal(copy.weight, ema.state_dict()["weight"])


def test_exported_student_loads_as_a_teacher(tmp_path):
    teacher = tiny_teacher()
    cfg = dkdm.DKDMConfig(teacher="gmm", student="cnn")  # gmm: scheduler rebuilt from the table
    student = dkdm.build_student(cfg, teacher)
    d = dkdm.export_student(cfg, teacher, student, runkit.EMA(student, 0.9), tmp_path)
    loaded = teachers.load_teacher(str(d))
    assert loaded.learned_variance and loaded.num_classes == 10 and loaded.sample_shape == (1, 8, 8)
    torch.testing.assert_close(loaded.schedule.alphas_cumprod, teacher.schedule.alphas_cumprod, rtol=1e-6, atol=1e-7)
    x = torch.randn(2, 1, 8, 8)
    i = torch.tensor([3, 7])
    ref = teachers.call_net(student, x, i.float(), dkdm.as_cond(torch.tensor([1, 2])))
    got = loaded.model_output(x, loaded.schedule.t_of(i).float(), loaded.label_cond([1, 2]))
    torch.testing.assert_close(torch.cat(got, 1), ref, atol=1e-5, rtol=1e-5)


def test_every_export_holds_the_ema_of_its_step(tmp_path):
    """--export-every 2 over 4 iterations exports twice: the second export (the run's end) holds the EMA weights of
    step 4, bitwise those of the checkpoint, not those of the first export (one EMA copy, refreshed at each call)."""
    from safetensors.torch import load_file

    run = tmp_path / "run"
    args = ["--teacher", "gmm", "--batch", "4", "--preview", "0", "--check", "0", "--ema", "0.5", "--lr", "1e-2"]
    assert boot.main([*args, "--iters", "4", "--export-every", "2", "--out", str(run)]) == 0
    exported = load_file(str(run / "student" / "unet" / "diffusion_pytorch_model.safetensors"))
    ema = runkit.load_checkpoint(run / "checkpoints" / "latest.pt")["ema"]
    assert exported.keys() <= ema.keys() and all(torch.equal(exported[k], ema[k]) for k in exported)


def proxy_sample(module, monkeypatch, *args):
    """The `sample(noise, cond)` a method's proxy scores (what it hands to evaluate.proxy)."""
    import evaluate

    monkeypatch.setattr(evaluate, "proxy", lambda every, teacher, cond_of, w, meter, sample: sample)
    return module.proxy(*args)


def test_later_proxy_evaluations_see_the_current_ema(monkeypatch):
    """Both methods' proxy samples from the EMA weights of the step it scores: after the EMA moved, its samples are
    those of a proxy made fresh on the new weights, not the first evaluation's."""
    torch.manual_seed(0)
    g = teachers.load_teacher("gmm")
    cfg = boot.resolve(boot.BootConfig(teacher="gmm", eval_every=50))
    context = boot.Context(g)
    net, student = boot.make_student(g, cfg, boot.default_weight(cfg, g))
    dcfg = dkdm.DKDMConfig(teacher="gmm", eval_every=100)
    dnet = dkdm.build_student(dcfg, g)
    noise, cond = torch.randn(4, *g.sample_shape), context.fixed(4)
    for module, model, args in (
        (boot, net, lambda ema: (cfg, g, context, ema, student, None)),
        (dkdm, dnet, lambda ema: (dcfg, g, ema, None)),
    ):
        ema = runkit.EMA(model, 0.0)  # decay 0: the EMA is the model's weights
        sample = proxy_sample(module, monkeypatch, *args(ema))
        with torch.no_grad():
            first = sample(noise, cond)
            for p in model.parameters():
                p.add_(0.1 * torch.randn_like(p))
        ema.update(model)
        later, fresh = sample(noise, cond), proxy_sample(module, monkeypatch, *args(ema))(noise, cond)
        assert not torch.equal(first, later) and torch.equal(later, fresh), module.__name__
