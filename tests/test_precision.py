"""Student precision: bf16 autocast (on by default on GPUs, asked for here on CPU), gradient
checkpointing that leaves the gradients unchanged, and --half meaning the same in both scripts."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch

import boot
import dkdm
import teachers


ROOT = Path(__file__).resolve().parents[1]


def conv_in_dtypes(model):
    seen = []
    model.conv_in.register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    return seen


@pytest.mark.parametrize(
    "precision,dtype", [("bf16", torch.bfloat16), ("fp32", torch.float32), ("auto", torch.float32)]
)
def test_boot_iteration_under_autocast(precision, dtype):
    teacher = teachers.load_teacher("gmm")
    cfg = boot.resolve(boot.BootConfig(teacher="gmm", precision=precision))
    net, student = boot.make_student(teacher, cfg, None)
    seen = conv_in_dtypes(net)
    g = torch.Generator().manual_seed(0)
    eps, t = torch.randn(4, 1, 8, 8, generator=g), boot.sample_times(g, cfg, 4, 0)
    cond, w = boot.Context(teacher, w_range=(cfg.w, cfg.w_max)).draw(g, 4, 0, 4)
    loss, _ = boot.boot_step(net, student, teacher, (eps, t, cond, w), cfg, True, None)
    loss.backward()
    assert seen == [dtype, dtype]  # the no-grad y_t pass and the training pass ("auto" is fp32 on CPU)
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    assert all(p.grad is None or torch.isfinite(p.grad).all() for p in net.parameters())


@pytest.mark.parametrize("precision,dtype", [("bf16", torch.bfloat16), ("fp32", torch.float32)])
def test_dkdm_iteration_under_autocast(precision, dtype):
    teacher = teachers.load_teacher("digits")
    cfg = dkdm.DKDMConfig(precision=precision, iters=1)
    student = dkdm.build_student(cfg, teacher)
    seen = conv_in_dtypes(student)
    pool = dkdm.init_noise(teacher, 8, torch.Generator().manual_seed(0))
    loss, mse, vb = dkdm.student_step(cfg, teacher, student, pool, 4, teacher.default_guidance)
    loss.backward()
    assert seen == [dtype] and loss.dtype == torch.float32 and torch.isfinite(loss) and vb > 0


def test_cli_bf16_iteration_of_each_method(tmp_path):
    assert (
        boot.main(
            [
                "--teacher",
                "gmm",
                "--precision",
                "bf16",
                "--grad-checkpointing",
                "--iters",
                "1",
                "--batch",
                "4",
                "--preview",
                "0",
                "--check",
                "0",
                "--out",
                str(tmp_path / "boot"),
            ]
        )
        == 0
    )
    assert (
        dkdm.main(
            [
                "--precision",
                "bf16",
                "--grad-checkpointing",
                "--iters",
                "1",
                "--rho",
                "0.01",
                "--batch",
                "4",
                "--pool-init",
                "noise",
                "--chains",
                "8",
                "--out",
                str(tmp_path / "dkdm"),
            ]
        )
        == 0
    )


def test_gradient_checkpointing_leaves_gradients_unchanged():
    teacher = teachers.load_teacher("digits")
    grads = []
    for on in (False, True):
        torch.manual_seed(0)
        student = dkdm.build_student(dkdm.DKDMConfig(), teacher).train()
        if on:
            student.enable_gradient_checkpointing()
        x = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(1))
        out = teachers.call_net(
            student, x, torch.tensor([3.0, 100.0, 500.0, 999.0]), {"class_labels": torch.arange(4)}
        )
        out.square().mean().backward()
        grads.append(torch.cat([p.grad.flatten() for p in student.parameters()]))
    assert student.is_gradient_checkpointing and torch.allclose(grads[0], grads[1], atol=1e-6, rtol=1e-5)


@pytest.mark.skipif(torch.cuda.is_available(), reason="--half is refused only without a GPU")
@pytest.mark.parametrize("script", ["boot.py", "dkdm.py"])
def test_half_needs_a_gpu_in_both_scripts(script, tmp_path):
    p = subprocess.run(
        [sys.executable, str(ROOT / script), "--half", "--out", str(tmp_path / "run")],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )
    assert p.returncode == 2 and len(p.stderr.strip().splitlines()) == 1 and "--half needs a GPU" in p.stderr
    assert not (tmp_path / "run").exists()
