"""BOOT's equations against the analytic Gaussian-mixture teacher (exact f_phi) and independent
derivations: DDIM from diffusers' scheduler, the Signal-ODE solved by many small PF-ODE steps."""

import math

import pytest
import torch

import boot
import teachers

from conftest import CosineSchedule


@pytest.fixture(scope="module")
def gmm():
    return teachers.load_teacher("gmm").double()


def bcast(v):
    return torch.as_tensor(v, dtype=torch.float64).reshape(-1, 1, 1, 1)


def draw(n=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn((n, 1, 8, 8), generator=g, dtype=torch.float64)


def guided(gmm, n, w):
    """f~(x, t) = f_n + w (f_c - f_n) assembled here from two unguided calls (Eq. 9)."""
    labels = torch.arange(n) % 10
    c, null = gmm.label_cond(labels), gmm.label_cond(torch.full((n,), 10))

    def f(x, t):
        t = torch.as_tensor(t, dtype=torch.float64).expand(n)
        f_c, f_n = gmm.x0(x, t, c).double(), gmm.x0(x, t, null).double()
        return f_n + w * (f_c - f_n)

    return f, c


def pf_ode(f, sch, x, t, s, n_steps):
    """x_t -> x_s by n_steps DDIM steps in x space (Eq. 1): the PF-ODE, first order, tiny steps."""
    ts = torch.linspace(t, s, n_steps + 1, dtype=torch.float64)
    for a, b in zip(ts[:-1], ts[1:]):
        a_t, s_t, a_s, s_s = sch.alpha(a), sch.sigma(a), sch.alpha(b), sch.sigma(b)
        x = s_s / s_t * x + (a_s - a_t * s_s / s_t) * f(x, a)
    return x


def signal_ode(f, sch, eps, y_t, t, s, n_steps=1000):
    """The exact Signal-ODE from (y_t, t) to s: map to x, solve the PF-ODE finely, map back."""
    x = sch.alpha(t) * y_t + sch.sigma(t) * eps
    x_s = pf_ode(f, sch, x, t, s, n_steps)
    return (x_s - sch.sigma(s) * eps) / sch.alpha(s)


# --- Eq. (4)/(11) ----------------------------------------------------------------------------
def test_delta_lambda_is_exp_of_lambda_difference(gmm):
    sch = gmm.schedule
    t, s = torch.tensor([0.9, 0.5, 0.04]), torch.tensor([0.86, 0.3, 0.0])
    assert torch.allclose(boot.delta_lambda(sch, t, s), 1 - torch.exp(sch.lam(s) - sch.lam(t)), atol=1e-12)


def test_signal_step_equals_a_ddim_step_of_diffusers_mapped_to_signal_space(gmm):
    """Eq. (4): y_s = y_t + (1 - e^(lambda_s - lambda_t)) (f - y_t) is diffusers' DDIM step on
    x_t = alpha_t y_t + sigma_t eps, read back as y_s = (x_s - sigma_s eps) / alpha_s."""
    from diffusers import DDIMScheduler

    sch = gmm.schedule
    ddim = DDIMScheduler(beta_schedule="squaredcos_cap_v2", clip_sample=False, prediction_type="epsilon")
    ddim.set_timesteps(25)  # integer steps 40 apart
    eps, y_t = draw(8, 1), 0.7 * draw(8, 2)
    cond = gmm.label_cond(torch.arange(8))
    for i in (960, 600, 200, 40):
        t, s = sch.t_of(i), sch.t_of(i - 40)
        x_t = sch.alpha(t) * y_t + sch.sigma(t) * eps
        f_t = gmm.x0(x_t, t, cond).double()
        eps_hat = gmm.net(x_t, t.reshape(1).expand(8), cond).double()  # the exact eps (no CFG: w unset)
        x_s = ddim.step(eps_hat, i, x_t, eta=0.0).prev_sample
        y_ddim = (x_s - sch.sigma(s) * eps) / sch.alpha(s)
        y_boot = boot.signal_step(y_t, f_t, boot.delta_lambda(sch, t.reshape(1), s.reshape(1)))
        assert torch.allclose(y_boot, y_ddim, atol=1e-5), (i, (y_boot - y_ddim).abs().max())


def test_step_back_never_goes_below_t_min():
    cfg = boot.resolve(boot.BootConfig(teacher="gmm", t_min=0.1, t_max=0.9, delta=0.04, iters=100))
    g = torch.Generator().manual_seed(0)
    for sampling in ("uniform", "progressive"):
        cfg2 = boot.dataclasses.replace(cfg, time_sampling=sampling)
        for step in (0, 50, 99):
            t = boot.sample_times(g, cfg2, 4096, step)
            s = boot.step_back(t, cfg2.delta, cfg2.t_min)
            assert t.min() >= cfg2.t_min and t.max() <= cfg2.t_max
            assert s.min() >= cfg2.t_min  # the step's length: test_boot_derivations.py


# --- Eq. (7)/(13)/(15) -----------------------------------------------------------------------
def test_loss_vanishes_on_the_exact_signal_ode_solution(gmm):
    """A student equal to the exact Signal-ODE solution has a (near) zero bootstrapping loss; a
    student constant in t (the init) does not."""
    sch, n, w = gmm.schedule, 16, 2.0
    f, _ = guided(gmm, n, w)
    eps, t_max, delta = draw(n, 3), 0.9, 0.04
    y_tmax = f(eps, t_max)  # the boundary condition (Eq. 8)
    t = torch.full((n,), 0.5, dtype=torch.float64)
    s = boot.step_back(t, delta, 0.0)
    y_t = signal_ode(f, sch, eps, y_tmax, t_max, 0.5)
    y_s = signal_ode(f, sch, eps, y_t, 0.5, 0.5 - delta, 400)
    weight = boot.loss_weight(sch, t, delta, "uniform")
    for solver, bound in (("euler", 2e-3), ("heun", 2e-5)):
        target = boot.bootstrap_target(f, sch, y_t, eps, t, s, solver)
        exact = boot.bootstrap_loss(y_s, target, weight).item()
        const = boot.bootstrap_loss(y_tmax, boot.bootstrap_target(f, sch, y_tmax, eps, t, s, solver), weight).item()
        print(f"{solver}: loss at the exact solution {exact:.2e}, at a t-constant student {const:.2e}")
        assert exact < bound * const


def one_step_errors(gmm, step_fns, deltas, t0=0.6):
    """RMS error of one step t0 -> t0 - delta from the exact solution, per method and delta."""
    sch, n = gmm.schedule, 8
    f, _ = guided(gmm, n, 3.0)
    eps = draw(n, 4)
    y0 = signal_ode(f, sch, eps, f(eps, 0.9), 0.9, t0, 300)
    t = torch.full((n,), t0, dtype=torch.float64)
    errs = {name: [] for name in step_fns}
    for d in deltas:
        ref = signal_ode(f, sch, eps, y0, t0, t0 - d, 1000)
        for name, fn in step_fns.items():
            errs[name].append((fn(f, sch, y0, eps, t, t - d) - ref).pow(2).mean().sqrt().item())
    return errs


def slope(deltas, errs):
    lx, ly = torch.tensor(deltas).log(), torch.tensor(errs).log()
    lx, ly = lx - lx.mean(), ly - ly.mean()
    return ((lx * ly).sum() / (lx * lx).sum()).item()


def test_heun_error_shrinks_an_order_faster_than_euler(gmm):
    """One-step error vs delta on log-log axes: Euler (DDIM) ~ delta^2, Heun ~ delta^3 (guided,
    nonlinear teacher). Eq. 15 as printed, with the exact delta lambda', stays ~ delta^2."""
    deltas = [0.08, 0.04, 0.02, 0.01]

    def printed_eq15(f, sch, y, eps, t, s):
        dl = teachers.bcast(boot.delta_lambda(sch, t, s), y)
        f_t = f(boot.noisy(sch, y, eps, t), t)
        y_tilde = y + dl * (f_t - y)
        f_s = f(boot.noisy(sch, y_tilde, eps, s), s)
        return y + dl / 2 * ((f_t - y) + (f_s - y_tilde))

    errs = one_step_errors(
        gmm,
        {
            "euler": lambda f, sch, y, e, t, s: boot.bootstrap_target(f, sch, y, e, t, s, "euler"),
            "heun": lambda f, sch, y, e, t, s: boot.bootstrap_target(f, sch, y, e, t, s, "heun"),
            "printed": printed_eq15,
        },
        deltas,
    )
    k = {name: slope(deltas, e) for name, e in errs.items()}
    print("log-log slopes of the one-step error:", {n: round(v, 2) for n, v in k.items()})
    assert 1.6 < k["euler"] < 2.3 and 2.5 < k["heun"] < 3.3 and k["heun"] - k["euler"] > 0.7
    assert k["printed"] < 2.3


# --- Eq. (9), (8), (14) and the student at init ----------------------------------------------
def test_guided_teacher_is_eq9(gmm):
    n, w = 8, 3.5
    f_ref, cond = guided(gmm, n, w)
    x, t = draw(n, 5), torch.full((n,), 0.7, dtype=torch.float64)
    f = boot.guided_teacher(gmm.float(), cond, w)
    assert torch.allclose(f(x.float(), t), f_ref(x, t).float(), atol=1e-5)
    gmm.double()


def test_loss_weights():
    sch = CosineSchedule()
    t = torch.tensor([0.05, 0.3, 0.6, 0.9], dtype=torch.float64, requires_grad=True)
    lam_prime = torch.autograd.grad(sch.lam(t).sum(), t)[0]
    t = t.detach()
    assert torch.allclose(boot.loss_weight(sch, t, 0.04, "uniform"), torch.full_like(t, 625.0))

    # Alg. 1 line 10: 1 / (delta lambda')^2 with the discrete delta lambda' = 1 - alpha_t sigma_s / (sigma_t alpha_s),
    # s = max(t - delta, 0), written out from the cosine alpha_bar (Nichol & Dhariwal) by hand
    def ab(u):
        return torch.cos((u + 0.008) / 1.008 * math.pi / 2) ** 2 / math.cos(0.008 / 1.008 * math.pi / 2) ** 2

    s = (t - 0.04).clamp(min=0)
    dl = 1 - (ab(t) * (1 - ab(s))).sqrt() / ((1 - ab(t)) * ab(s)).sqrt()
    assert torch.allclose(boot.loss_weight(sch, t, 0.04, "lambda"), 1 / dl**2, rtol=1e-9)
    # ... which is not the analytic (delta d lambda/dt)^-2 at delta = 0.04, and tends to it as delta -> 0
    assert (boot.loss_weight(sch, t, 0.04, "lambda") * (0.04 * lam_prime) ** 2 - 1).abs().max() > 0.05
    assert torch.allclose(boot.loss_weight(sch, t, 1e-5, "lambda"), 1 / (1e-5 * lam_prime) ** 2, rtol=1e-3)


def test_teacher_copy_equals_teacher_at_tmax_for_every_t_and_boundary_loss_is_zero():
    """App. C.3: y_theta(eps, t) = f_phi(eps, t_max) for every t at init, so L_BC = 0."""
    teacher = teachers.load_teacher("digits", clip="none")
    cfg = boot.resolve(boot.BootConfig(teacher="digits", iters=1))
    model, student = boot.make_student(teacher, cfg, default_w=1.0)
    eps = draw(8, 8).float()
    cond = teacher.label_cond(torch.arange(8))
    f_tmax = teacher.x0(eps, torch.full((8,), cfg.t_max), cond)
    for t in (0.0, 0.3, cfg.t_max):
        y = boot.y_theta(model, student, eps, torch.full((8,), t), cond, 1.0)
        assert torch.allclose(y, f_tmax, atol=1e-5), t
    t = torch.rand(8, dtype=torch.float64) * cfg.t_max
    _, parts = boot.boot_step(model, student, teacher, (eps, t, cond, 1.0), cfg, True, None)
    assert parts["bc"].item() < 1e-10 and parts["bs"].item() > 1e-3
