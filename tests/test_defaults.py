"""Defaults that follow the papers, and the deviations kept as flags: the DiT student's adaLN-Zero
initialisation (Peebles & Xie, Sec. 3.2) and DKDM's optional gradient clipping."""

import pytest
import torch

import dkdm
import teachers


@pytest.fixture(scope="module")
def digits():
    return teachers.load_teacher("digits")


def test_vit_student_starts_adaln_zero_and_trains(digits):
    """adaLN-Zero: every block's gate is 0, so each block maps its input to itself, and the final
    projection is 0, so the whole student outputs 0 at init; one AdamW step moves it off 0."""
    torch.manual_seed(0)
    model = dkdm.build_student(dkdm.DKDMConfig(student="vit"), digits)
    x, t = torch.randn(6, 1, 8, 8), torch.tensor([0.0, 10, 200, 500, 900, 999])
    labels = torch.tensor([0, 3, 5, 7, 9, 10])
    seen = []
    hooks = [
        b.register_forward_hook(lambda m, args, out: seen.append((args[0], out))) for b in model.transformer_blocks
    ]
    out = teachers.call_net(model, x, t, {"class_labels": labels})
    for h in hooks:
        h.remove()
    assert len(seen) == len(model.transformer_blocks) >= 2
    for block_in, block_out in seen:
        assert torch.equal(block_in, block_out)
    assert out.shape == (6, 2, 8, 8) and torch.equal(out, torch.zeros_like(out))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    teachers.call_net(model, x, t, {"class_labels": labels}).sub(torch.randn(6, 2, 8, 8)).pow(2).mean().backward()
    opt.step()
    assert teachers.call_net(model, x, t, {"class_labels": labels}).abs().min() > 0


def test_clip_grad_default_is_the_papers_none_except_on_the_embedded_teachers():
    """The paper and its trainer clip nothing: so does every hub or local teacher by default; the
    embedded digits / gmm teachers keep the 1.0 their bench rows were measured with."""
    for teacher, clip in [
        ("digits", 1.0),
        ("gmm", 1.0),
        ("ddpm-cifar10", 0.0),
        ("ldm-celebahq", 0.0),
        ("google/ddpm-cifar10-32", 0.0),
        ("path/to/iddpm-cifar10", 0.0),
    ]:
        assert dkdm.DKDMConfig(teacher=teacher).clip_grad == clip, teacher
    assert dkdm.DKDMConfig(teacher="ddpm-cifar10", clip_grad=0.5).clip_grad == 0.5
    assert dkdm.DKDMConfig(teacher="digits", clip_grad=0.0).clip_grad == 0.0


def test_dynamic_pool_init_default_is_the_papers_shuffle_except_on_the_embedded_teachers():
    """Shuffle denoise (Fig. 3) initialises the dynamic pool of every hub or local teacher; the embedded
    digits / gmm teachers keep the staggered chains (the paper's init costs ~80 CPU-min there)."""
    init = lambda **k: dkdm.resolved_init(dkdm.DKDMConfig(**k))  # noqa: E731
    for teacher, how in [
        ("digits", "staggered"),
        ("gmm", "staggered"),
        ("ddpm-cifar10", "shuffle"),
        ("ldm-celebahq", "shuffle"),
        ("path/to/iddpm-cifar10", "shuffle"),
    ]:
        assert init(teacher=teacher) == how, teacher
        assert init(teacher=teacher, method="shuffled") == "shuffle"
        assert init(teacher=teacher, method="iterative") == "noise"
    assert init(teacher="ddpm-cifar10", pool_init="staggered") == "staggered"
    assert init(teacher="digits", pool_init="shuffle") == "shuffle"


@pytest.mark.parametrize("clip", [None, "0", "0.5"])
def test_clip_grad_flag(tmp_path, monkeypatch, clip):
    """--clip-grad 0 clips nothing (the paper and the official trainer); a positive value is the max norm."""
    calls = []
    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", lambda params, max_norm, **k: calls.append(max_norm))
    flags = [
        "--teacher",
        "gmm",
        "--rho",
        "0.01",
        "--batch",
        "4",
        "--chains",
        "16",
        "--iters",
        "2",
        "--out",
        str(tmp_path / "run"),
    ] + ([] if clip is None else ["--clip-grad", clip])
    assert dkdm.main(flags) == 0
    assert calls == {None: [1.0, 1.0], "0": [], "0.5": [0.5, 0.5]}[clip]


def test_negative_clip_grad_is_refused(tmp_path, capsys):
    assert dkdm.main(["--clip-grad", "-1", "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--clip-grad" in err[0] and not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    "preset,betas",
    [
        ("digits", dict(beta_schedule="squaredcos_cap_v2")),
        ("if", dict(beta_schedule="squaredcos_cap_v2")),
        ("sd21", dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)),
        ("ddpm-cifar10", dict(beta_schedule="linear", beta_start=1e-4, beta_end=0.02)),
    ],
)
def test_boot_t_max_preset_keeps_the_digits_amplification(preset, betas):
    """Each preset's t_max sits where 1/alpha_t (the factor an eps error is amplified by in the student's
    output) is about 6.4, its value at the measured digits setting; alpha from diffusers' own table."""
    import math

    from diffusers import DDPMScheduler

    import boot

    t_max = boot.resolve(boot.BootConfig(teacher=preset)).t_max
    ac = DDPMScheduler(num_train_timesteps=1000, **betas).alphas_cumprod.double()
    u = t_max * 999
    lo = int(u)
    snr = [math.log(ac[k] / (1 - ac[k])) for k in (lo, lo + 1)]  # log-SNR linear between grid points
    log_snr = snr[0] + (u - lo) * (snr[1] - snr[0])
    amplification = math.sqrt(1 + math.exp(-log_snr))  # 1 / alpha with alpha^2 = sigmoid(log-SNR)
    assert 6.2 < amplification < 6.6, (preset, t_max, amplification)


@pytest.mark.parametrize(
    "name,latent,synth,scored",
    [
        ("ddpm-cifar10", False, ("ancestral", 1000), ("ancestral", 50)),  # Table 4: IDDPM-1000; Sec. 4.1: IDDPM-50
        ("ldm-celebahq", True, ("ddim", 100), ("ddim", 200)),  # Table 4: DDIM-100; Sec. 4.1: DDIM-200
        ("path/to/pixel-ddpm", False, ("ancestral", 1000), ("ancestral", 50)),
        ("digits", False, ("ancestral", 100), ("ddim", 50)),  # the embedded teacher's CPU protocol (README)
    ],
)
def test_dkdm_samplers_follow_table_4_and_the_evaluation_protocol(name, latent, synth, scored):
    from types import SimpleNamespace

    teacher = SimpleNamespace(latent=latent, schedule=SimpleNamespace(T=1000))
    cfg = dkdm.DKDMConfig(teacher=name)
    assert dkdm.synth_plan(cfg, teacher) == synth and dkdm.eval_plan(cfg, teacher) == scored
    cfg = dkdm.DKDMConfig(teacher=name, synth_sampler="ddim", synth_steps=20)
    assert dkdm.synth_plan(cfg, teacher) == ("ddim", 20)


def test_vit_init_diffusers_keeps_the_default_init(digits):
    torch.manual_seed(0)
    model = dkdm.build_student(dkdm.DKDMConfig(student="vit", vit_init="diffusers"), digits)
    assert model.proj_out_2.weight.abs().sum() > 0 and model.transformer_blocks[0].norm1.linear.weight.abs().sum() > 0


def test_ancestral_student_scores_are_seeded(digits):
    """Hub pixel students are scored with IDDPM-50: the step noise must follow the seeds, as the teacher's does."""
    import evaluate

    class Ancestral:
        info = {"method": "dkdm", "sampler": "ancestral"}

        def generate(self, noise, cond=None, w=None, generator=None):
            return noise + torch.randn(noise.shape, generator=generator)

    sample = evaluate.student_sampler(Ancestral(), digits)
    assert torch.equal(sample([3, 4]), sample([3, 4])) and not torch.equal(sample([3, 4]), sample([5, 6]))
