"""docs/tutorial.md's numbers and figures, computed by the method files' own functions.

    python bench/tutorial.py boot                 # one BOOT iteration by hand on the gmm teacher
    python bench/tutorial.py boot --delta 0.01    # the same iteration with a smaller step (exercise 4)
    python bench/tutorial.py dkdm                 # one DKDM iteration by hand on the digits teacher
    python bench/tutorial.py figures              # assets/figures/tutorial-*.png (trains a gmm BOOT student, ~1 min)

`python bench/run.py tutorial` stores the two worked iterations in bench/results.json and renders them
into docs/tutorial.md; tests/test_tutorial.py recomputes them and fails when the page and the code drift
apart.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


ROOT = Path(__file__).resolve().parents[1]
FIGURES = ROOT / "assets" / "figures"
B = 4  # the batch of the worked iterations
SEED = 0


def pixels():
    """The two pixels (row, column) where the real digits' class means differ most: every figure's projection."""
    import torch

    import teachers

    x, y = teachers.load_digits_tensor()
    spread = torch.stack([x[y == k].mean(0) for k in range(10)]).flatten(1).var(0)
    return [divmod(int(k), x.shape[-1]) for k in spread.topk(2).indices]


def at(x, px, k=0):
    """Example k's values at the two pixels."""
    return [round(float(x[k, 0, r, c]), 6) for r, c in px]


def boot_iteration(delta: float | None = None) -> dict:
    """Alg. 1 lines 2-11 on the gmm teacher (exact f_phi) with a fresh small student, batch 4: every
    intermediate of one example at two pixels, the batch's losses, and boot_step's loss for the same draw."""
    import torch

    import boot
    import teachers

    torch.set_num_threads(1)
    cfg = boot.resolve(boot.BootConfig(teacher="gmm", batch=B, **({"delta": delta} if delta else {})))
    teacher = teachers.load_teacher("gmm")
    net, student = boot.make_student(teacher, cfg, boot.default_weight(cfg, teacher))
    context = boot.Context(teacher, w_range=(cfg.w, cfg.w_max))
    sch, px = teacher.schedule, pixels()
    g = torch.Generator().manual_seed(SEED)
    eps = torch.randn((B, *teacher.sample_shape), generator=g)  # line 2, as train() draws them
    t = boot.sample_times(g, cfg, B, 0)  # line 4
    cond, w = context.draw(g, B, 0, B)  # line 3
    s = boot.step_back(t, cfg.delta, cfg.t_min)  # line 4
    f = boot.guided_teacher(teacher, cond, w)  # line 9's f~
    with torch.no_grad():
        y_t = boot.y_theta(net, student, eps, t.float(), cond, w)  # line 7, under SG
        dl = boot.delta_lambda(sch, t, s)  # line 6
        x_t = boot.noisy(sch, y_t, eps, t)  # line 8
        f_t = f(x_t, t)  # line 9
        y_euler = boot.signal_step(y_t, f_t, dl)  # Eq. 7
        x_s = boot.noisy(sch, y_euler, eps, s)  # Heun's corrector point (Eq. 15)
        f_s = f(x_s, s)
        y_heun = boot.signal_step(y_t, (f_t + f_s) / 2, dl)  # Eq. 15
        weight = boot.loss_weight(sch, t, cfg.delta, cfg.weighting, s)  # line 10
        y_s = boot.y_theta(net, student, eps, s.float(), cond, w)
        t_max = torch.full_like(t, cfg.t_max)
        f_tmax, y_tmax = f(eps, t_max), boot.y_theta(net, student, eps, t_max.float(), cond, w)
        d = (y_s - y_heun).pow(2).flatten(1).mean(1)
        loss_bs = boot.bootstrap_loss(y_s, y_heun, weight)  # line 10 (Eq. 14)
        loss_bc = boot.boundary_loss(y_tmax, f_tmax)  # line 11 (Eq. 8)
        step_loss, _ = boot.boot_step(net, student, teacher, (eps, t, cond, w), cfg, True, None)
    k = int((t - cfg.delta >= cfg.t_min).nonzero()[0])  # the first example with room for a full step
    alpha = lambda u: round(float(sch.alpha(u[k])), 6)  # noqa: E731
    sigma = lambda u: round(float(sch.sigma(u[k])), 6)  # noqa: E731
    return {
        "example": k,
        "pixels": [list(p) for p in px],
        "delta": cfg.delta,
        "t_max": cfg.t_max,
        "label": int(cond["class_labels"][k]),
        "t": round(float(t[k]), 6),
        "s": round(float(s[k]), 6),
        "alpha_t": alpha(t),
        "sigma_t": sigma(t),
        "alpha_s": alpha(s),
        "sigma_s": sigma(s),
        "delta_lambda": round(float(dl[k]), 6),
        "eps": at(eps, px, k),
        "y_t": at(y_t, px, k),
        "x_t": at(x_t, px, k),
        "f_t": at(f_t, px, k),
        "y_euler": at(y_euler, px, k),
        "x_s": at(x_s, px, k),
        "f_s": at(f_s, px, k),
        "y_heun": at(y_heun, px, k),
        "y_s": at(y_s, px, k),
        "f_tmax": at(f_tmax, px, k),
        "y_tmax": at(y_tmax, px, k),
        "weight": round(float(weight[k]), 4),
        "d": round(float(d[k]), 6),
        "loss_bs": round(float(loss_bs), 6),
        "loss_bc": round(float(loss_bc), 6),
        "loss": round(float(loss_bs + cfg.beta * loss_bc), 6),
        "boot_step_loss": round(float(step_loss), 6),
    }


def dkdm_iteration() -> dict:
    """Alg. 1 lines 1-8 on the digits teacher (learned variance) with a pool of 8 and a fresh cnn student, b = 4:
    the pool's steps before and after, and for each drawn entry its step, the teacher's step and both losses."""
    import copy

    import torch

    import dkdm
    import teachers

    torch.set_num_threads(1)
    teacher, px = teachers.load_teacher("digits"), pixels()
    cfg = dkdm.DKDMConfig(batch=B)
    torch.manual_seed(cfg.seed)
    student = dkdm.build_student(cfg, teacher)
    pool = dkdm.init_staggered(teacher, 2 * B, 2 * B, torch.Generator().manual_seed(SEED))  # line 1
    before, untouched = pool.i.tolist(), copy.deepcopy(pool)
    state = pool.g.get_state()
    idx = pool.draw(B).tolist()  # line 4: which entries knowledge_step is about to draw
    pool.g.set_state(state)
    w = teacher.default_guidance
    with torch.no_grad():
        x_t, i, labels, (mean, logvar, eps_T) = dkdm.knowledge_step(teacher, pool, B, w)  # lines 4 and 8
        out = teachers.call_net(student, x_t, i.float(), dkdm.as_cond(labels))  # line 5: the student
        loss, mse, vb = dkdm.dkdm_loss(teacher.schedule, x_t, i, out, (mean, logvar, eps_T), cfg.lam, True)
        step_loss, _, _ = dkdm.student_step(cfg, teacher, student, untouched, B, w)  # the same, as train() calls it
    rows = [
        {
            "entry": idx[k],
            "i": int(i[k]),
            "i_after": int(pool.i[idx[k]]),
            "label": int(labels[k]),
            "x_t": at(x_t, px, k),
            "eps_T": at(eps_T, px, k),
            "mean_T": at(mean, px, k),
            "sigma_T": at((0.5 * logvar).exp(), px, k),
            "x_prev": at(pool.x[idx], px, k),
            "eps_S": at(out[:, :1], px, k),
            "l_simple": round(float(mse[k]), 6),
            "l_vlb": round(float(vb[k]), 6),
        }
        for k in range(B)
    ]
    return {
        "pixels": [list(p) for p in px],
        "pool_steps_before": before,
        "pool_steps_after": pool.i.tolist(),
        "drawn": rows,
        "loss": round(float(loss.mean()), 6),
        "student_step_loss": round(float(step_loss), 6),
    }


def trained_gmm_student(run=ROOT / "runs" / "tutorial" / "boot-gmm"):
    """(teacher, network with its EMA weights, Student, config) of `python boot.py --teacher gmm` (trained here
    once, about a CPU-minute; a rerun finds it finished)."""

    import boot
    import runkit
    import teachers

    if not (Path(run) / "student" / "generator.json").is_file():
        boot.main(["--teacher", "gmm", "--out", str(run), "--preview", "0", "--check", "0"])
    cfg = boot.BootConfig(**json.loads((Path(run) / "config.json").read_text()))
    teacher = teachers.load_teacher("gmm")
    net, student = boot.make_student(teacher, cfg, boot.default_weight(cfg, teacher))
    net.load_state_dict(runkit.load_checkpoint(Path(run) / "checkpoints" / "latest.pt")["ema"])
    return teacher, net.eval().requires_grad_(False), student, cfg


def signal_ode_figure(path=FIGURES / "tutorial-signal-ode.png", n=4, steps=200):
    """Left: the teacher's DDIM trajectories x_t from t_max to 0 for n noises (two pixels). Right: the same
    trajectories in signal space, y_t = (x_t - sigma_t eps) / alpha_t, the Signal-ODE (Eq. 5) started at
    y_tmax = f(eps, t_max) (Eq. 8), beside the trained student's y_theta(eps, t) and where it lands at t = 0."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import torch

    import boot
    import teachers

    teacher, net, student, cfg = trained_gmm_student()
    sch, px = teacher.schedule, pixels()
    eps = teachers.seeded_noise(range(n), teacher.sample_shape)
    cond = teacher.label_cond(torch.arange(n))
    f = boot.guided_teacher(teacher, cond, boot.default_weight(cfg, teacher))
    ts = torch.linspace(cfg.t_max, 0.0, steps + 1, dtype=torch.float64)
    with torch.no_grad():
        y = [f(eps, ts[0].expand(n))]  # the boundary condition: the teacher sees pure noise at t_max
        for t, s in zip(ts[:-1], ts[1:]):  # one DDIM step in signal space (Eq. 4) per grid step
            t, s = t.expand(n), s.expand(n)
            y.append(boot.signal_step(y[-1], f(boot.noisy(sch, y[-1], eps, t), t), boot.delta_lambda(sch, t, s)))
        ys = torch.stack(y)
        xs = torch.stack([boot.noisy(sch, y_t, eps, t.expand(n)) for y_t, t in zip(ys, ts)])
        y_student = torch.stack([boot.y_theta(net, student, eps, t.expand(n).float(), cond) for t in ts])
    (r1, c1), (r2, c2) = px
    fig, (left, right, in_t) = plt.subplots(1, 3, figsize=(14, 4.2))
    for k in range(n):
        color = f"C{k}"
        left.plot(xs[:, k, 0, r1, c1], xs[:, k, 0, r2, c2], color=color, lw=1)
        left.plot(xs[0, k, 0, r1, c1], xs[0, k, 0, r2, c2], "o", color=color, mfc="none")
        left.plot(xs[-1, k, 0, r1, c1], xs[-1, k, 0, r2, c2], "o", color=color)
        right.plot(ys[:, k, 0, r1, c1], ys[:, k, 0, r2, c2], color=color, lw=1)
        right.plot(y_student[:, k, 0, r1, c1], y_student[:, k, 0, r2, c2], "--", color=color, lw=1)
        right.plot(ys[-1, k, 0, r1, c1], ys[-1, k, 0, r2, c2], "o", color=color)
        right.plot(y_student[-1, k, 0, r1, c1], y_student[-1, k, 0, r2, c2], "x", color=color, ms=9, mew=2)
        in_t.plot(ts, ys[:, k, 0, r1, c1], color=color, lw=1, label=f"label {k}: teacher y_t")
        in_t.plot(ts, y_student[:, k, 0, r1, c1], "--", color=color, lw=1, label=f"label {k}: student")
    name = f"pixel ({r1}, {c1})", f"pixel ({r2}, {c2})"
    left.set(title=f"DDIM x_t from t = {cfg.t_max} (open) to 0 (filled)", xlabel=name[0], ylabel=name[1])
    right.set(title="signal y_t: teacher (solid), student (dashed, x: t = 0)", xlabel=name[0], ylabel=name[1])
    in_t.set(title=f"{name[0]} of y_t against t", xlabel="t", xlim=(cfg.t_max, 0))
    in_t.legend(fontsize=6, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return path


def pool_figure(path=FIGURES / "tutorial-dkdm-pool.png", k=200):
    """DKDM's dynamic pool on the digits teacher (rho 0.4, b 64, staggered init, M = 512): the histogram of its
    steps at iteration 0 and after k knowledge steps, and a row of its states from pure noise to an image."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import torch

    import dkdm
    import teachers

    torch.set_num_threads(1)
    teacher, T, b = teachers.load_teacher("digits"), 1000, 64
    cfg = dkdm.DKDMConfig()
    n = dkdm.pool_size(cfg, T, b)
    pool = dkdm.init_staggered(teacher, n, cfg.chains, torch.Generator().manual_seed(SEED))
    start = pool.i.clone()
    for _ in range(k):
        dkdm.knowledge_step(teacher, pool, b, teacher.default_guidance)
    steps = [999, 800, 600, 400, 300, 200, 100, 50, 20, 0]
    row = torch.cat([pool.x[(pool.i == s).nonzero()[0]] for s in steps])
    images = teacher.decode(row).clamp(0, 1)[:, 0]
    fig = plt.figure(figsize=(11, 4.2))
    grid = fig.add_gridspec(2, len(steps), height_ratios=[2.2, 1])
    hist = fig.add_subplot(grid[0, :])
    bins = torch.linspace(0, T, 21).numpy()
    hist.hist(start.numpy(), bins=bins, histtype="step", lw=2, label="after the staggered init (iteration 0)")
    hist.hist(pool.i.numpy(), bins=bins, histtype="step", lw=1, ls="--", label=f"after {k} iterations")
    hist.set(title=f"steps i of the pool's {n:,} entries (rho T b, b = {b})", xlabel="i", ylabel="entries")
    hist.legend(fontsize=7, loc="lower center")
    for j, (s, image) in enumerate(zip(steps, images)):
        ax = fig.add_subplot(grid[1, j])
        ax.imshow(image, cmap="gray", vmin=0, vmax=1)
        ax.set(title=f"i = {s}", xticks=[], yticks=[])
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return path


def fd_figure(path=FIGURES / "tutorial-fd-curves.png"):
    """FD (digits features, n = 1,000) of both DKDM students' default runs vs iterations, from bench/results.json
    (`python bench/run.py curves`), with the teacher's DDIM-50 and the real held-out images as floors."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    results = json.loads((ROOT / "bench" / "results.json").read_text())
    fig, ax = plt.subplots(figsize=(6, 3.6))
    for name, label in (("curve-cnn", "cnn student"), ("curve-vit", "DiT student (constant lr)")):
        points = results[name]["curve"]
        fd = [
            next(r["fid"] for r in p["records"] if r["sampler"] == "student" and r["features"] == "digits")
            for p in points
        ]
        ax.plot([p["iters"] for p in points], fd, "o-", label=label)
    records = results["curve-cnn"]["curve"][-1]["records"]
    for name, style in (("real", ":"), ("digits", "--")):
        fd = next(r["fid"] for r in records if r["name"] == name and r["features"] == "digits")
        ax.axhline(fd, ls=style, color="gray", label="real held-out images" if name == "real" else "teacher DDIM-50")
    ax.set(xlabel="iteration", ylabel="FD (digits features)", yscale="log", title="DKDM: FD vs iterations")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return path


def main(argv=None):
    import cli

    p = cli.OneLineParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("what", choices=["boot", "dkdm", "figures"])
    p.add_argument("--delta", type=float, default=None, help="boot: the step size delta (default: the preset's)")
    a = p.parse_args(argv)
    if a.what == "boot":
        print(json.dumps(boot_iteration(a.delta), indent=1))
    elif a.what == "dkdm":
        print(json.dumps(dkdm_iteration(), indent=1))
    else:
        for make in (signal_ode_figure, pool_figure, fd_figure):
            print(f"wrote {make().relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    sys.exit(main())
