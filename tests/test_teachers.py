"""teachers.py against independent references: diffusers' schedulers, the analytic Gaussian
mixture (exact posterior mean, Monte-Carlo), and closed forms."""

import math
import subprocess
import sys

import pytest
import torch

import cli
import teachers
from teachers import Schedule, UserError

from conftest import ROOT, CosineSchedule


TABLES = {
    "scaled_linear": dict(beta_start=0.00085, beta_end=0.012),
    "linear": dict(beta_start=1e-4, beta_end=0.02),
    "squaredcos_cap_v2": {},
}


# --- schedule ------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", list(TABLES))
def test_schedule_matches_diffusers_tables(kind):
    from diffusers import DDPMScheduler

    ref = DDPMScheduler(beta_schedule=kind, **TABLES[kind]).alphas_cumprod.double()
    sch = Schedule(teachers.beta_table(kind, **TABLES[kind]))
    i = torch.arange(1000)
    t = sch.t_of(i)
    assert torch.allclose(sch.alpha(t) ** 2, ref, rtol=1e-6, atol=1e-12)
    tt = torch.rand(500, dtype=torch.float64)
    assert torch.allclose(sch.alpha(tt) ** 2 + sch.sigma(tt) ** 2, torch.ones_like(tt))
    lam = sch.lam(torch.linspace(0, 1, 2001, dtype=torch.float64))
    assert (lam[1:] > lam[:-1]).all()  # lambda = -log(alpha/sigma) increases with t (BOOT's sign)
    # discrete beta and posterior variance agree with the scheduler's own tables
    assert torch.allclose(
        sch.beta(i[1:]).float(), DDPMScheduler(beta_schedule=kind, **TABLES[kind]).betas[1:], atol=1e-6
    )


def test_cosine_closed_form_matches_table():
    closed = CosineSchedule()
    table = Schedule(teachers.beta_table("squaredcos_cap_v2"))
    t = torch.linspace(0, 0.95, 97, dtype=torch.float64)  # away from the beta cap at t -> 1
    assert torch.allclose(closed.alpha(t), table.alpha(t), atol=2e-3)


# --- samplers against diffusers --------------------------------------------------------------
def _tiny_eps_teacher(variance_type="fixed_small", out_mult=1, clip=None):
    from diffusers import UNet2DModel

    torch.manual_seed(0)
    unet = UNet2DModel(
        sample_size=8,
        in_channels=1,
        out_channels=out_mult,
        layers_per_block=1,
        block_out_channels=(16, 32),
        down_block_types=("DownBlock2D",) * 2,
        up_block_types=("UpBlock2D",) * 2,
        norm_num_groups=8,
    )
    sch = Schedule(teachers.beta_table("squaredcos_cap_v2"))
    return teachers.UNetTeacher(unet, sch, (1, 8, 8), variance_type=variance_type, clip=clip).eval()


@pytest.mark.parametrize("steps", [1, 5, 10])
def test_ddim_matches_diffusers(steps):
    from diffusers import DDIMScheduler

    t = _tiny_eps_teacher()
    noise = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    ours = teachers.ddim(t, noise, steps)
    s = DDIMScheduler(
        beta_schedule="squaredcos_cap_v2", timestep_spacing="trailing", set_alpha_to_one=True, clip_sample=False
    )
    s.set_timesteps(steps)
    x = noise
    with torch.no_grad():
        for ts in s.timesteps:
            x = s.step(t.unet(x, ts).sample, ts, x).prev_sample
    assert torch.allclose(ours, x, atol=1e-4), (ours - x).abs().max()


@pytest.mark.parametrize("i,steps", [(999, 1000), (500, 1000), (1, 1000), (899, 10)])
def test_ancestral_step_matches_ddpm_scheduler_learned_range(i, steps):
    from diffusers import DDPMScheduler

    t = _tiny_eps_teacher("learned_range", out_mult=2, clip="static")
    x = torch.randn(3, 1, 8, 8, generator=torch.Generator().manual_seed(2))
    s = DDPMScheduler(
        beta_schedule="squaredcos_cap_v2", variance_type="learned_range", clip_sample=True, timestep_spacing="trailing"
    )
    s.set_timesteps(steps)
    with torch.no_grad():
        out = t.unet(x, i).sample
        ref = s.step(out, i, x, generator=torch.Generator().manual_seed(3)).prev_sample
        prev = s.previous_timestep(i)
        mean, logvar, _ = t.p_mean_logvar(x, torch.tensor(i), prev=torch.tensor(prev))
    z = torch.randn(x.shape, generator=torch.Generator().manual_seed(3))
    assert torch.allclose(mean + (0.5 * logvar).exp() * z, ref, atol=1e-5)


@pytest.mark.parametrize("i", [999, 500, 1])
def test_ancestral_step_matches_ddpm_scheduler_fixed_large(i):
    """The fixed-variance step google/ddpm-cifar10-32 would use with variance_type="fixed_large": the
    step's variance is beta_t (not the posterior's beta~_t) for t > 0."""
    from diffusers import DDPMScheduler

    t = _tiny_eps_teacher("fixed_large", clip="static")
    x = torch.randn(3, 1, 8, 8, generator=torch.Generator().manual_seed(2))
    s = DDPMScheduler(beta_schedule="squaredcos_cap_v2", variance_type="fixed_large", clip_sample=True)
    with torch.no_grad():
        out = t.unet(x, i).sample
        ref = s.step(out, i, x, generator=torch.Generator().manual_seed(3)).prev_sample
        mean, logvar, _ = t.p_mean_logvar(x, i)
    z = torch.randn(x.shape, generator=torch.Generator().manual_seed(3))
    assert torch.allclose(mean + (0.5 * logvar).exp() * z, ref, atol=1e-5)


@pytest.mark.parametrize("i", [900, 400, 10])
def test_v_prediction_matches_diffusers(i):
    """A v-prediction teacher's x0-hat and eps against diffusers' conversion (DDIMScheduler.step's
    pred_original_sample; eps recovered from the same step), at integer steps."""
    from diffusers import DDIMScheduler

    t = _tiny_eps_teacher()
    t.prediction_type = "v_prediction"
    x = torch.randn(3, 1, 8, 8, generator=torch.Generator().manual_seed(4))
    s = DDIMScheduler(beta_schedule="squaredcos_cap_v2", prediction_type="v_prediction", clip_sample=False)
    s.set_timesteps(10)
    with torch.no_grad():
        v = t.unet(x, i).sample
        x0_ref = s.step(v, i, x).pred_original_sample
        eps, x0 = t.split(v, x, t.schedule.t_of(i).float())
    ab = s.alphas_cumprod[i]
    assert torch.allclose(x0, x0_ref, atol=1e-5)
    assert torch.allclose(eps, (x - ab.sqrt() * x0_ref) / (1 - ab).sqrt(), atol=1e-4)


def test_ancestral_sampler_runs_and_is_seeded():
    t = _tiny_eps_teacher("learned_range", out_mult=2, clip="static")
    noise = teachers.seeded_noise([0, 1], (1, 8, 8))
    a = teachers.ancestral(t, noise, 10, generator=torch.Generator().manual_seed(0))
    b = teachers.ancestral(t, noise, 10, generator=torch.Generator().manual_seed(0))
    assert torch.equal(a, b) and a.abs().max() <= 1.0 + 1e-6  # last step returns the clipped mean
    assert torch.equal(teachers.seeded_noise([5], (1, 8, 8))[0], teachers.seeded_noise([4, 5], (1, 8, 8))[1])


# --- the analytic teacher ---------------------------------------------------------------------
def _toy2d():
    means = torch.tensor([[-2.0, 0.0], [2.0, 1.0], [0.0, -2.5]])
    return teachers.GaussianMixture(means, torch.tensor([0.3, 0.5, 0.4]), weights=[0.5, 0.3, 0.2])


def _mixture_samples(g, n, generator):
    """Exact samples x0 of the mixture: a component k ~ pi, then mu_k + s_k z."""
    k = torch.multinomial(g.log_weights.exp(), n, replacement=True, generator=generator)
    z = torch.randn((n, *g.sample_shape), generator=generator)
    return g.means[k] + g.stds[k, None] * z


@pytest.mark.parametrize("tc", [0.3, 0.6, 0.9])
def test_gmm_denoiser_is_the_posterior_mean(tc):
    """Self-normalised Monte Carlo: E[x0|x_t] = sum_j x0_j N(x_t; a x0_j, s^2) / sum_j N(...)."""
    g = _toy2d()
    gen = torch.Generator().manual_seed(0)
    x0 = _mixture_samples(g, 400_000, gen)
    x0 = x0.double()
    a, s = g.schedule.alpha(torch.tensor(tc)), g.schedule.sigma(torch.tensor(tc))
    xt = torch.tensor([[0.5, 0.2], [-1.5, 0.3], [0.1, -1.0]], dtype=torch.float64)
    for x in xt:
        logw = -((x - a * x0) ** 2).sum(1) / (2 * s**2)
        w = torch.softmax(logw, 0)
        mc = (w[:, None] * x0).sum(0)
        exact = g.x0(x[None].float(), torch.tensor([tc]))[0].double()
        assert torch.allclose(exact, mc, atol=0.03), (exact, mc)


def test_gmm_many_step_ddim_lands_on_the_mixture():
    g = _toy2d()
    noise = torch.randn(4000, 2, generator=torch.Generator().manual_seed(0))
    x = teachers.ddim(g, noise, 200)
    data = _mixture_samples(g, 200_000, torch.Generator().manual_seed(1))
    assert torch.allclose(x.mean(0), data.mean(0), atol=0.08)
    assert torch.allclose(torch.cov(x.T), torch.cov(data.T), atol=0.2)


def test_cfg_is_eq9_on_the_exact_denoiser():
    """Label k conditions on component k alone (closed form); the null label on the mixture."""
    g = _toy2d()
    x, tc = torch.tensor([[0.4, -0.3]]), torch.tensor([0.5])
    a, s = g.schedule.alpha(tc).item(), g.schedule.sigma(tc).item()
    k = 1
    mu, v = g.means[k], g.stds[k] ** 2
    f_c = mu + a * v / (a**2 * v + s**2) * (x - a * mu)  # Gaussian posterior mean of one component
    f_n = g.x0(x, tc)
    cond = g.label_cond(torch.tensor([k]))
    assert torch.allclose(g.x0(x, tc, cond), f_c, atol=1e-5)
    for w in (0.0, 3.0):
        assert torch.allclose(g.x0(x, tc, cond, w), f_n + w * (f_c - f_n), atol=1e-5)


def test_thresholding_matches_diffusers():
    from diffusers import DDPMScheduler

    x0 = 3 * torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    s = DDPMScheduler(thresholding=True, dynamic_thresholding_ratio=0.95, sample_max_value=1.5)
    assert torch.allclose(teachers.threshold(x0, "dynamic", 0.95, 1.5), s._threshold_sample(x0), atol=1e-6)
    # Imagen (Saharia et al. 2022): s = max(1, percentile_p |x0|), capped at the max; x0 clamped to
    # [-s, s] and divided by s. Rows whose percentile is below 1 (s = 1: the bound) and above it.
    x0 = torch.stack([0.1 * x0[0], 0.9 * x0[1] / x0[1].abs().max(), x0[2], 10 * x0[3]])
    p = torch.quantile(x0.flatten(1).abs(), 0.95, dim=1)
    assert (p < 1).sum() == 2 and (p > 1).sum() == 2
    s_ref = p.clamp(1.0, 1.5).view(-1, 1, 1, 1)
    imagen = torch.maximum(torch.minimum(x0, s_ref), -s_ref) / s_ref
    assert torch.allclose(teachers.threshold(x0, "dynamic", 0.95, 1.5), imagen, atol=1e-6)
    assert torch.equal(teachers.threshold(x0[:2], "dynamic", 0.95, 1.5), x0[:2].clamp(-1, 1))  # s = 1: not scaled up
    assert teachers.threshold(x0, "static").abs().max() <= 1
    assert teachers.threshold(x0, None) is x0


# --- tiny SD-like and IF-like teachers through the hub code path ----------------------------
def test_tiny_sd_teacher(tiny_sd_dir):
    t = teachers.load_teacher(str(tiny_sd_dir))
    assert t.latent and t.sample_shape == (4, 8, 8) and t.default_guidance == 7.5
    assert not any(p.requires_grad for p in t.parameters())
    cond = t.encode_prompts(["a red cube", "a cat"])
    nfe = t.nfe
    x = teachers.ddim(t, torch.randn(2, *t.sample_shape), 2, cond, 7.5)
    assert t.nfe - nfe == 2
    assert t.decode(x).shape == (2, 3, 16, 16)
    # the negative condition is the empty prompt's embedding
    assert torch.allclose(t.null["encoder_hidden_states"], t.encode_prompts([""])["encoder_hidden_states"])


def test_tiny_if_cascade(tiny_if_dirs):
    s1, s2 = tiny_if_dirs
    t1, t2 = teachers.load_teacher(str(s1)), teachers.load_teacher(str(s2))
    assert t1.learned_variance and t1.clip == "dynamic" and t1.dynamic_max == 1.5 and t1.sample_shape == (3, 8, 8)
    assert t2.sample_shape == (3, 16, 16) and t2.dynamic_max == 1.0
    low = teachers.ddim(t1, torch.randn(2, 3, 8, 8), 2, t1.encode_prompts(["a", "b"]), 7.0)
    cond = {**t2.encode_prompts(["a", "b"]), **t2.lowres_cond(low, 250, torch.Generator().manual_seed(0))}
    assert cond["lowres"].shape == (2, 3, 16, 16) and (cond["class_labels"] == 250).all()
    x = teachers.ancestral(t2, torch.randn(2, 3, 16, 16), 3, cond, 4.0, torch.Generator().manual_seed(0))
    assert x.shape == (2, 3, 16, 16) and torch.isfinite(x).all()


# --- bad input --------------------------------------------------------------------------------
def test_bad_inputs(tmp_path):
    with pytest.raises(UserError, match="unknown teacher 'sdxl'.*digits"):
        teachers.load_teacher("sdxl")
    with pytest.raises(UserError, match="does not exist"):
        teachers.load_teacher(str(tmp_path / "nowhere"))
    with pytest.raises(UserError, match="cannot load hub id 'someone/not-cached'.*local directory"):
        teachers.load_teacher("someone/not-cached")
    with pytest.raises(UserError, match="prompts file .* does not exist"):
        cli.load_prompts(tmp_path / "missing.txt")
    (tmp_path / "empty.txt").write_text("\n  \n")
    with pytest.raises(UserError, match="is empty"):
        cli.load_prompts(tmp_path / "empty.txt")
    (tmp_path / "p.txt").write_text("a cat\n\na dog\n")
    assert cli.load_prompts(tmp_path / "p.txt") == ["a cat", "a dog"]
    with pytest.raises(UserError, match="steps must lie"):
        teachers.trailing_steps(1000, 0)


def test_running_teachers_py_lists_the_registry_without_a_download():
    out = subprocess.run(
        [sys.executable, "teachers.py"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**__import__("os").environ, "HF_HUB_OFFLINE": "1"},
    )
    assert out.returncode == 0
    for name in ("sd21", "if", "ddpm-cifar10", "ldm-celebahq", "digits", "gmm"):
        assert name in out.stdout


# --- the embedded teacher -------------------------------------------------------------------------
@pytest.mark.skipif(not (teachers.DIGITS_DIR / "unet").is_dir(), reason="embedded digits teacher not trained")
def test_digits_teacher_samples_look_like_digits():
    """Pixel-space Frechet distance of 300 DDIM-25 samples to the real digits is far below noise's."""
    from cleanfid.fid import frechet_distance

    t = teachers.load_teacher("digits")
    assert t.num_classes == 10 and t.learned_variance and t.sample_shape == (1, 8, 8)
    seeds = range(300)
    x = teachers.ddim(t, teachers.seeded_noise(seeds, (1, 8, 8)), 25, t.label_cond([s % 10 for s in seeds]))
    real, _ = teachers.load_digits_tensor()

    def fd(a, b):
        a, b = a.flatten(1).double().numpy(), b.flatten(1).double().numpy()
        return frechet_distance(
            a.mean(0), torch.cov(torch.tensor(a).T).numpy(), b.mean(0), torch.cov(torch.tensor(b).T).numpy()
        )

    fd_model, fd_noise = fd(x, real), fd(torch.randn(300, 1, 8, 8).clamp(-1, 1), real)
    assert fd_model < 1.0 < 10 < fd_noise, (fd_model, fd_noise)
    assert math.isfinite(fd_model)
