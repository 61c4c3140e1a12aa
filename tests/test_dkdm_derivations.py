"""DKDM's objective and knowledge streams against independent derivations: torch.distributions'
KL, diffusers' DDPMScheduler step, the mixture's exact per-step marginal mean, and the fixed point
of distillation (a student equal to the teacher has zero loss).
`python tests/mutants.py` breaks the code one paper-level mistake at a time to show these fail."""

import math

import pytest
import torch
import torch.nn.functional as F

import dkdm
from pipelines import students

from test_dkdm_equations import T, gmm_teacher, tiny_teacher


N = torch.distributions.Normal


# --- Eq. (21): L*vlb = KL(p_T || p_S), teacher first ----------------------------------------------
def test_vlb_is_the_kl_from_the_teacher_step_to_the_student_step():
    """p_S is the student's (eps, v) read through the Gaussian step that test_teachers checks against
    diffusers (x0 unclipped, mean from the detached eps); the KL is torch.distributions', in bits."""
    teacher, as_student = tiny_teacher(), tiny_teacher(clip=None)
    g = torch.Generator().manual_seed(4)
    x, i = torch.randn(6, 1, 8, 8, generator=g), torch.tensor([0, 1, 4, 9, 15, 19])
    target = teacher.p_mean_logvar(x, i, teacher.label_cond(torch.arange(6)))
    out = torch.randn(6, 2, 8, 8, generator=g).requires_grad_()
    _, _, vb = dkdm.dkdm_loss(teacher.schedule, x, i, out, target, 1.0, True)
    mean_S, logvar_S, _ = as_student.p_mean_logvar(x, i, out=(out[:, :1].detach(), out[:, 1:]))
    mean_T, logvar_T, _ = target
    kl = torch.distributions.kl_divergence(N(mean_T, (0.5 * logvar_T).exp()), N(mean_S, (0.5 * logvar_S).exp()))
    ref = kl.mean(dim=(1, 2, 3)) / math.log(2)
    torch.testing.assert_close(vb, ref, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(
        torch.autograd.grad(vb.sum(), out)[0], torch.autograd.grad(ref.sum(), out)[0], rtol=1e-3, atol=1e-6
    )


def test_fixed_variance_teacher_gives_l_simple_only():
    """A fixed-variance teacher (latent LDMs, google/ddpm-*): the student predicts eps only and the
    loss is Eq. (20), torch's per-example MSE. With both variances fixed, Eq. (21)'s KL would be
    the same eps error times a constant per step: L*vlb adds nothing."""
    teacher = tiny_teacher(learned=False, clip=None)
    assert students.out_channels(teacher) == 1
    g = torch.Generator().manual_seed(5)
    x, i = torch.randn(3, 1, 8, 8, generator=g), torch.tensor([2, 7, 19])
    target = teacher.p_mean_logvar(x, i, teacher.label_cond(torch.tensor([0, 1, 2])))
    ratios = []
    for _ in range(2):
        out = torch.randn(3, 1, 8, 8, generator=g)
        loss, mse, vb = dkdm.dkdm_loss(teacher.schedule, x, i, out, target, 1.0, False)
        torch.testing.assert_close(loss, F.mse_loss(out, target[2], reduction="none").mean(dim=(1, 2, 3)))
        assert (vb == 0).all()
        as_student = teacher.p_mean_logvar(x, i, out=(out, None))
        std = (0.5 * target[1]).exp()
        kl = torch.distributions.kl_divergence(N(target[0], std), N(as_student[0], std)).mean(dim=(1, 2, 3))
        ratios.append(kl / loss)
    torch.testing.assert_close(ratios[0], ratios[1], rtol=1e-3, atol=0)


# --- Eq. (16) / Sec. 3.2: the teacher's step g_T that feeds the pool ------------------------------
@pytest.mark.parametrize("i", [19, 10, 1])
def test_teacher_step_is_a_ddpm_scheduler_step(i):
    """x_{t-1} ~ p_T(. | x_t): diffusers' DDPMScheduler (learned range, clipped x0) with the same noise."""
    from diffusers import DDPMScheduler

    teacher = tiny_teacher()
    x, labels = torch.randn(3, 1, 8, 8, generator=torch.Generator().manual_seed(6)), torch.tensor([1, 2, 10])
    sched = DDPMScheduler(
        num_train_timesteps=T, beta_schedule="squaredcos_cap_v2", variance_type="learned_range", clip_sample=True
    )
    with torch.no_grad():
        out = teacher.unet(x, i, class_labels=labels).sample
    ref = sched.step(out, i, x, generator=torch.Generator().manual_seed(7)).prev_sample
    _, x_prev = dkdm.teacher_step(teacher, x, torch.full((3,), i), labels, None, torch.Generator().manual_seed(7))
    torch.testing.assert_close(x_prev, ref, rtol=1e-5, atol=1e-5)


# --- Alg. 1, Sec. 3.3: every stream keeps each entry at its step's marginal ------------------------
def marginal_gap(teacher, pool):
    """E[x_i | label k] = sqrt(alpha_bar_i) mu_k exactly for the mixture's ancestral chain (its
    x0-hat is the exact posterior mean and the step's mean is affine in (x0-hat, x_i)). Returns
    mean <x - sqrt(ab_i) mu_k, mu_k> / mean |mu_k|^2: ~0 (sampling noise ~0.005 here) when every
    entry's step i and label k describe its x; ~0.05 when i is off by one step."""
    mu = teacher.means[pool.labels].flatten(1).double()
    r = pool.x.flatten(1).double() - teacher.schedule.alpha_bar(pool.i).sqrt()[:, None] * mu
    return abs(((r * mu).sum(1).mean() / (mu**2).sum(1).mean()).item())


def test_pool_inits_and_write_back_keep_every_entry_at_its_marginal():
    teacher = gmm_teacher()
    g = torch.Generator().manual_seed(0)
    staggered = dkdm.init_staggered(teacher, 4000, 800, g)
    assert marginal_gap(teacher, staggered) < 0.02
    assert marginal_gap(teacher, dkdm.init_shuffle(teacher, 2000, g)) < 0.02
    for _ in range(400):  # ~5 steps per entry, ~1/4 of them restarting from noise
        dkdm.knowledge_step(teacher, staggered, 50)
    assert marginal_gap(teacher, staggered) < 0.02


def test_pool_draws_without_replacement():
    """Alg. 1 line 4: b distinct entries per iteration."""
    pool = dkdm.init_noise(gmm_teacher(), 40, torch.Generator().manual_seed(1))
    for _ in range(20):
        assert len(pool.draw(30).unique()) == 30


def test_the_three_streams():
    """Sec. 3.3: iterative = b samples from T-1 in lockstep; shuffled = b samples at staggered t
    (shuffle denoise); dynamic = a pool of rho T b entries spread evenly over t."""
    teacher, b = gmm_teacher(), 16
    pools = {}
    for method in ("iterative", "shuffled", "dynamic"):
        cfg = dkdm.DKDMConfig(method=method, rho=0.5, chains=64)
        n = dkdm.pool_size(cfg, T, b)
        pools[method] = dkdm.make_pool(cfg, teacher, n, torch.Generator().manual_seed(2), None)
    assert len(pools["iterative"]) == b and (pools["iterative"].i == T - 1).all()
    assert len(pools["shuffled"]) == b and len(pools["shuffled"].i.unique()) > b // 2
    assert len(pools["dynamic"]) == round(0.5 * T * b)
    assert (torch.bincount(pools["dynamic"].i, minlength=T) == b // 2).all()


# --- Alg. 1 lines 5-7: the distillation fixed point -------------------------------------------------
class AsStudent(torch.nn.Module):
    """The mixture teacher seen as a diffusers-style student: called with the integer step."""

    def __init__(self, teacher):
        super().__init__()
        self.teacher = teacher

    def forward(self, x, timestep, class_labels=None, return_dict=False):
        return (self.teacher.net(x, timestep / (T - 1), {"class_labels": class_labels}),)


def test_a_student_equal_to_the_teacher_has_zero_loss_on_the_stream():
    """The student sees the same x_t at the same step i as the teacher's target: zero loss."""
    teacher = gmm_teacher()
    cfg = dkdm.DKDMConfig(method="dynamic", rho=0.5)
    pool = dkdm.init_staggered(teacher, dkdm.pool_size(cfg, T, 16), 64, torch.Generator().manual_seed(3))
    for _ in range(5):
        loss, mse, _ = dkdm.student_step(cfg, teacher, AsStudent(teacher), pool, 16, None)
        assert loss.item() < 1e-8 and mse.item() < 1e-8


def test_guided_learned_variance_comes_from_the_conditional_model():
    """diffusers' IFPipeline convention: CFG (Eq. 9) mixes the eps channels; the variance channels
    are the conditional model's."""
    teacher = tiny_teacher()
    x, t = torch.randn(3, 1, 8, 8), torch.tensor([0.3, 0.5, 0.9])
    labels = torch.tensor([1, 2, 3])
    eps, var = teacher.model_output(x, t, teacher.label_cond(labels), 3.0)
    with torch.no_grad():
        c = teacher.unet(x, t * (T - 1), class_labels=labels).sample
        n = teacher.unet(x, t * (T - 1), class_labels=torch.full((3,), 10)).sample
    torch.testing.assert_close(var, c[:, 1:])
    torch.testing.assert_close(eps, n[:, :1] + 3.0 * (c[:, :1] - n[:, :1]))
