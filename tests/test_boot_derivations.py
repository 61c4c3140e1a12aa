"""BOOT's loss, weights, time draws, student conditioning and IF stage-II input, each against an
independent derivation: the exact Gaussian-mixture denoiser, closed-form derivatives, autograd of
a hand-assembled loss on a tiny student, scipy's KS test and diffusers' IF noising scheduler.
`python tests/mutants.py` breaks the code one paper-level mistake at a time to show these fail."""

import dataclasses
import json
import math

import pytest
import torch
import torch.nn.functional as F

import boot
import teachers
from pipelines import students

from conftest import CosineSchedule


CPU = torch.device("cpu")


def draw(shape, seed):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def cosine_lambda_prime(t, s=0.008):
    """d lambda / dt of lambda = -1/2 log(ab / (1 - ab)), ab = cos^2(u) / cos^2(u_0), u = (t + s) / (1 + s) pi / 2:
    d ab / dt = -sin(2u) pi / (2 (1 + s)) / cos^2(u_0),
    so lambda' = sin(2u) pi / (4 (1 + s) cos^2(u_0) ab (1 - ab))."""
    u, c0 = (t + s) / (1 + s) * math.pi / 2, math.cos(s / (1 + s) * math.pi / 2) ** 2
    ab = torch.cos(u) ** 2 / c0
    return torch.sin(2 * u) * math.pi / (4 * (1 + s) * c0 * ab * (1 - ab))


# --- Alg. 1 line 6 / Eq. (13)-(14): lambda' and the loss weights ------------------------------
@pytest.mark.parametrize("weighting", ["uniform", "lambda"])
def test_weights_make_the_bootstrapping_loss_a_finite_limit_as_delta_shrinks(weighting):
    """Eq. (13)/(14): for a student constant in t and an Euler target, y_s - SG[y^_s] = -dl (f_t - y)
    with dl = 1 - e^(lambda_s - lambda_t) ~ delta lambda'_t. So w~_t / delta^2 with w~ = 1 (uniform)
    tends to mean_b lambda'_b^2 |f_b - y_b|^2 and w~ = 1 / lambda'^2 to mean_b |f_b - y_b|^2, per example."""
    sch = CosineSchedule()
    t = torch.tensor([0.2, 0.35, 0.5, 0.6, 0.75, 0.85], dtype=torch.float64)
    y, eps = 0.5 * draw((6, 1, 4, 4), 1), draw((6, 1, 4, 4), 2)
    f = lambda x, t: torch.tanh(2 * x)  # noqa: E731 - any denoiser: the weights do not depend on it
    f_t = f(boot.noisy(sch, y, eps, t), t)
    per = (f_t - y).pow(2).flatten(1).mean(1)
    limit = (cosine_lambda_prime(t) ** 2 * per).mean() if weighting == "uniform" else per.mean()
    for delta, rtol in ((1e-3, 2e-2), (1e-4, 2e-3)):  # the gap to the limit is O(delta lambda')
        target = boot.bootstrap_target(f, sch, y, eps, t, t - delta, "euler")
        loss = boot.bootstrap_loss(y, target, boot.loss_weight(sch, t, delta, weighting))
        torch.testing.assert_close(loss, limit, rtol=rtol, atol=0)


# --- Alg. 1 line 4: t ~ U(t_min, t_max) per example, s = max(t - delta, t_min) -----------------
def test_time_draws_are_uniform_per_example_and_progressive_slides_down():
    from scipy.stats import kstest

    cfg = boot.resolve(boot.BootConfig(teacher="gmm", t_min=0.1, t_max=0.9, delta=0.04, iters=100))
    g = torch.Generator().manual_seed(0)
    t = boot.sample_times(g, cfg, 4000, 0)
    assert t.shape == (4000,) and kstest(((t - 0.1) / 0.8).numpy(), "uniform").pvalue > 1e-3
    # Sec. 4.3 ablation: the student starts at t_max, so progressive training moves t from t_max down
    prog = dataclasses.replace(cfg, time_sampling="progressive")
    first, last = boot.sample_times(g, prog, 500, 0), boot.sample_times(g, prog, 500, 99)
    assert first.min() >= 0.9 - 2 * 0.04 and last.max() <= 0.1 + 2 * 0.04
    means = [boot.sample_times(g, prog, 500, k).mean() for k in (0, 25, 50, 75, 99)]
    assert all(a > b for a, b in zip(means, means[1:]))


def test_step_back_takes_a_full_step_when_there_is_room_and_stops_at_t_min():
    """Alg. 1 prints s = min(t - delta, t_min), which would be t_min for every t: the step from t
    to s must be exactly delta long unless that would leave [t_min, t_max], then end at t_min."""
    t = torch.linspace(0.1, 0.9, 801, dtype=torch.float64)
    s = boot.step_back(t, 0.04, 0.1)
    assert (s >= 0.1).all() and (s <= t).all() and (t - s <= 0.04 + 1e-12).all()
    room = t >= 0.14
    torch.testing.assert_close(t[room] - s[room], torch.full_like(s[room], 0.04))
    assert (s[~room] == 0.1).all()


# --- Eq. (9): the student y_theta(eps, t, c, w) is conditioned on w ------------------------------
def test_student_is_conditioned_on_w_drawn_per_example():
    """Sec. 3.3 (after Meng et al.): with w ~ U(w, w_max) the student sees w, one draw per example."""
    from scipy.stats import kstest

    teacher = teachers.load_teacher("gmm")
    cfg = boot.resolve(boot.BootConfig(teacher="gmm", w=1.0, w_max=5.0))
    model, student = boot.make_student(teacher, cfg, default_w=2.0)  # fresh: its (t, w) projection is not zero
    eps, cond, t = draw((4, 1, 8, 8), 3).float(), teacher.label_cond(torch.arange(4)), torch.full((4,), 0.5)
    with torch.no_grad():
        y1, y4 = (boot.y_theta(model, student, eps, t, cond, w) for w in (1.0, 4.0))
        y4_each = boot.y_theta(model, student, eps, t, cond, torch.full((4,), 4.0))
    assert (y1 - y4).abs().max() > 1e-4 and torch.allclose(y4, y4_each)
    cond, w = boot.Context(teacher, w_range=(cfg.w, cfg.w_max)).draw(torch.Generator().manual_seed(0), 4000, 0, 4000)
    assert w.shape == (4000,) and kstest(((w - 1.0) / 4.0).numpy(), "uniform").pvalue > 1e-3
    counts = torch.bincount(cond["class_labels"], minlength=10)  # Alg. 1 line 3: c per example, uniform
    assert counts.sum() == 4000 and (counts - 400).abs().max() < 80


# --- Alg. 1 lines 7-12: one BOOT iteration's loss and gradient ---------------------------------
@pytest.mark.parametrize("weighting,boundary", [("uniform", True), ("lambda", False)])
def test_boot_step_is_eq7_plus_eq8_with_a_stop_gradient_target(weighting, boundary):
    """Assembled here from its parts on a fresh (t-dependent) student and the exact mixture:
    L = mean_b w~_b / delta^2 |y_theta(eps, s) - SG[y^(y_theta(eps, t))]|^2
        + beta |y_theta(eps, t_max) - f~(eps, t_max)|^2,
    its value and its gradient (the target is a constant: no gradient flows through y_theta(eps, t))."""
    teacher = teachers.load_teacher("gmm")
    exact = teachers.load_teacher("gmm").double()
    cfg = boot.resolve(boot.BootConfig(teacher="gmm", weighting=weighting, t_min=0.05, beta=0.5))
    model, student = boot.make_student(teacher, cfg, default_w=2.0)
    n, w = 6, 2.0
    eps = draw((n, 1, 8, 8), 11).float()
    t = torch.tensor([0.06, 0.2, 0.4, 0.6, 0.8, 0.9], dtype=torch.float64)  # 0.06: s is clipped at t_min
    cond = teacher.label_cond(torch.arange(n))
    loss, parts = boot.boot_step(model, student, teacher, (eps, t, cond, w), cfg, boundary, None)
    got = torch.autograd.grad(loss, list(model.parameters()))

    c, null = exact.label_cond(torch.arange(n)), exact.label_cond(torch.full((n,), 10))

    def f(x, tt):  # Eq. 9 on the exact posterior means
        tt = torch.as_tensor(tt, dtype=torch.float64).expand(n)
        f_n = exact.x0(x, tt, null)
        return f_n + w * (exact.x0(x, tt, c) - f_n)

    def y(tt):
        return boot.y_theta(model, student, eps, tt.float(), cond, w).double()

    s = torch.where(t - cfg.delta > cfg.t_min, t - cfg.delta, torch.full_like(t, cfg.t_min))
    with torch.no_grad():
        target = boot.bootstrap_target(f, exact.schedule, y(t), eps.double(), t, s, cfg.solver)
    weight = boot.loss_weight(exact.schedule, t, cfg.delta, weighting, s=s)
    bs = (weight * (y(s) - target).pow(2).flatten(1).mean(1)).mean()
    bc = F.mse_loss(y(torch.full_like(t, cfg.t_max)), f(eps.double(), cfg.t_max))
    ref = bs + cfg.beta * bc if boundary else bs  # Eq. 8 only on boundary iterations (every k-th)
    torch.testing.assert_close(parts["bs"].double(), bs.detach(), rtol=1e-4, atol=0)
    torch.testing.assert_close(
        parts["bc"].double(), bc.detach() if boundary else torch.zeros_like(bc), rtol=1e-4, atol=0
    )
    want = torch.autograd.grad(ref, list(model.parameters()))
    diff = sum((a.double() - b).pow(2).sum() for a, b in zip(got, want)).sqrt()
    norm = sum(b.pow(2).sum() for b in want).sqrt()
    assert diff < 1e-3 * norm, (diff / norm).item()


def random_lpips():
    """LPIPS with a random AlexNet trunk and the package's own linear layers: offline, as in the tests."""
    import lpips

    return lpips.LPIPS(net="alex", pnet_rand=True, verbose=False).eval().requires_grad_(False)


@pytest.mark.parametrize("loss", ["huber", "lpips"])
@pytest.mark.parametrize("weighting", ["uniform", "lambda"])
def test_each_distance_keeps_the_stop_gradient_and_the_weight_per_example(monkeypatch, loss, weighting):
    """--loss huber / lpips: L_BS = mean_b w~_b / delta^2 d(y_theta(eps, s), SG[y^]) with d the
    pseudo-Huber distance of improved consistency training, sqrt(|y - y^|^2 + c^2) - c with
    c = 0.00054 sqrt(dims), or LPIPS on the images (grey repeated to RGB, upsampled to 224 x 224):
    its value and its gradient, the target a constant."""
    net = random_lpips()
    monkeypatch.setattr(boot, "lpips_network", lambda device: net)
    teacher = teachers.load_teacher("gmm")
    cfg = boot.resolve(boot.BootConfig(teacher="gmm", weighting=weighting, loss=loss))
    model, student = boot.make_student(teacher, cfg, default_w=None)
    n = 5
    eps, t = draw((n, 1, 8, 8), 12).float(), torch.tensor([0.1, 0.3, 0.5, 0.7, 0.9], dtype=torch.float64)
    cond = teacher.label_cond(torch.arange(n))
    loss_value, parts = boot.boot_step(model, student, teacher, (eps, t, cond, None), cfg, False, None)
    got = torch.autograd.grad(loss_value, list(model.parameters()))
    y = lambda tt: boot.y_theta(model, student, eps, tt.float(), cond, None)  # noqa: E731
    s = (t - cfg.delta).clamp(min=cfg.t_min)
    with torch.no_grad():
        target = boot.bootstrap_target(boot.guided_teacher(teacher, cond, None), teacher.schedule, y(t), eps, t, s)
    if loss == "huber":
        c = 0.00054 * 8.0  # sqrt(1 x 8 x 8)
        d = ((y(s) - target).pow(2).sum(dim=(1, 2, 3)) + c * c).sqrt() - c
    else:

        def up(v):
            return F.interpolate(v.repeat(1, 3, 1, 1), size=(224, 224), mode="bilinear", align_corners=False)

        d = net(up(y(s)), up(target)).reshape(n)
    ref = (boot.loss_weight(teacher.schedule, t, cfg.delta, weighting, s=s).float() * d).mean()
    torch.testing.assert_close(parts["bs"], ref.detach(), rtol=1e-4, atol=1e-7)
    want = torch.autograd.grad(ref, list(model.parameters()))
    diff = sum((a - b).pow(2).sum() for a, b in zip(got, want)).sqrt()
    assert diff < 1e-3 * sum(b.pow(2).sum() for b in want).sqrt()


def test_lpips_needs_a_pixel_teacher_and_says_what_to_download(monkeypatch, tmp_path, capsys, tiny_sd_dir):
    def offline(device):
        raise boot.UserError("--loss lpips needs torchvision's AlexNet ImageNet weights (alexnet-owt-7be5be79.pth)")

    monkeypatch.setattr(boot, "lpips_network", offline)
    assert boot.main(["--teacher", "gmm", "--loss", "lpips", "--iters", "1", "--out", str(tmp_path / "a")]) == 2
    assert "alexnet-owt-7be5be79.pth" in capsys.readouterr().err and not (tmp_path / "a").exists()
    (tmp_path / "p.txt").write_text("a cat\n")
    assert (
        boot.main(
            [
                "--teacher",
                str(tiny_sd_dir),
                "--prompts",
                str(tmp_path / "p.txt"),
                "--loss",
                "lpips",
                "--out",
                str(tmp_path / "b"),
            ]
        )
        == 2
    )
    assert "is latent: use --loss l2 or huber" in capsys.readouterr().err


def test_a_short_gmm_run_learns_the_teachers_ode_output(tmp_path, monkeypatch):
    """End to end (Alg. 1: Heun targets, boundary loss, AdamW, EMA) on the analytic teacher: 150
    iterations at batch 32 (~12 s of one core) take a fresh student from noise to under a quarter of
    the teacher's DDIM-1 distance to its own DDIM-50 output from the same noise (measured: 0.007 vs
    0.056; the same student read at t_max instead of t_min: 0.033)."""
    seen, step = [], boot.boot_step
    monkeypatch.setattr(boot, "boot_step", lambda *a: seen.append(a[3][0]) or step(*a))  # its eps (Alg. 1 line 2)
    run = tmp_path / "gmm"
    assert (
        boot.main(
            [
                "--teacher",
                "gmm",
                "--iters",
                "150",
                "--batch",
                "32",
                "--ema",
                "0.9",
                "--preview",
                "0",
                "--check",
                "128",
                "--out",
                str(run),
            ]
        )
        == 0
    )
    eps = torch.cat(seen).flatten(1)  # N(0, I) per example and iteration: 150 x 32 distinct rows
    assert len(seen) == 150 and len(eps.unique(dim=0)) == len(eps) == 4800
    assert abs(eps.mean()) < 0.01 and abs(eps.std() - 1) < 0.01
    d = json.loads((run / "distance.json").read_text())
    assert d["n"] == 128 and d["student"] < 0.25 * d["DDIM-1"], d
    # the exported one-step generator (what evaluate.py and `boot.py sample` load): y_theta(eps, t_min)
    gen, teacher = students.ExportedStudent(run), teachers.load_teacher("gmm")
    noise, cond = teachers.seeded_noise(range(128), (1, 8, 8)), gen.label_cond(torch.arange(128) % 10)
    ode = teachers.ddim(teacher, noise, 50, cond)
    one_step = (gen.generate(noise, cond) - ode).pow(2).mean()
    assert one_step < 0.25 * (teachers.ddim(teacher, noise, 1, cond) - ode).pow(2).mean()


def test_boundary_loss_is_torchs_mse():
    """Eq. (8) as a mean over examples and dimensions (torch's F.mse_loss)."""
    y, f = draw((4, 3, 5, 5), 6), draw((4, 3, 5, 5), 7)
    torch.testing.assert_close(boot.boundary_loss(y, f), F.mse_loss(y, f))


# --- IF stage II: the low-resolution input, as diffusers' IFSuperResolutionPipeline makes it -----
def test_if_stage2_input_is_the_pipelines_noise_augmentation(tiny_if_dirs):
    """Upscale (bilinear, align_corners) then noise with the pipeline's image_noising_scheduler at
    noise_level = 250 (IF-II's default), passed as class_labels; also through BOOT's condition draw."""
    from diffusers import DDPMScheduler

    _, s2 = tiny_if_dirs
    t2 = teachers.load_teacher(str(s2))
    noising = DDPMScheduler.from_pretrained(s2, subfolder="image_noising_scheduler")

    def pipeline(low, z):
        up = F.interpolate(low, size=(16, 16), mode="bilinear", align_corners=True)
        return noising.add_noise(up, z, torch.full((low.shape[0],), 250))

    low, z = draw((2, 3, 8, 8), 8).float().clamp(-1, 1), draw((2, 3, 16, 16), 9).float()
    got = t2.lowres_cond(low, 250, noise=z)
    torch.testing.assert_close(got["lowres"].float(), pipeline(low, z), rtol=1e-5, atol=1e-5)
    assert (got["class_labels"] == 250).all()

    class Stage1:  # a stage-1 generator whose output is known: 3 eps (clipped to [-1, 1] by BOOT)
        sample_shape, default_guidance = (3, 8, 8), 7.0

        def generate(self, e, cond, w):
            return 3 * e

    cfg = boot.resolve(boot.BootConfig(teacher=str(s2), stage=2, stage1_run="unused"))
    conds = boot.Context(t2, ["a", "b"], t2, Stage1(), (cfg.w, cfg.w_max), cfg.noise_level)
    got = conds.lowres(torch.Generator().manual_seed(5), 2, 0, 2, t2.encode_prompts(["a", "b"]))
    g = torch.Generator().manual_seed(5)
    eps1, z = torch.randn((2, 3, 8, 8), generator=g), torch.randn((2, 3, 16, 16), generator=g)
    torch.testing.assert_close(got["lowres"].float(), pipeline((3 * eps1).clamp(-1, 1), z), rtol=1e-5, atol=1e-5)
    assert (got["class_labels"] == cfg.noise_level).all() and cfg.noise_level == 250
