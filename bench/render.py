"""bench/results.json -> the tables in README.md (between <!-- bench:NAME --> markers)."""

from __future__ import annotations

import re
from pathlib import Path


def _pick(records, sampler=None, nfe=None, name=None):
    """{feature space: record} of the rows that match."""
    out = {}
    for r in records:
        if (
            (name is None or r["name"] == name)
            and (sampler is None or r["sampler"] == sampler)
            and (nfe is None or r["nfe"] == nfe)
        ):
            out[r["features"]] = r
    return out


def _f(v, spec=".3f"):
    return "–" if v is None else format(v, spec)


def _kid(rec):
    """KID with its spread over 100 subsets, or '–' (a row scored before KID)."""
    g = lambda v, k: f"{v:.{k}g}" if abs(v) < 10 else f"{v:.0f}"  # noqa: E731 - no exponents
    return "–" if not rec or rec.get("kid") is None else f"{g(rec['kid'], 3)} ± {g(rec['kid_std'], 1)}"


def _quality_row(label, nfe, rows, extra):
    d, p = rows.get("digits", {}), rows.get("pixels", {})
    n = d.get("n") or p.get("n")
    return (
        f"| {label} | {_f(nfe, 'd') if isinstance(nfe, int) else nfe} | {_f(d.get('fid'))} | {_f(p.get('fid'))} | "
        f"{_kid(p)} | {_f(d.get('precision'), '.2f')} | {_f(d.get('recall'), '.2f')} | {n} | {extra} |"
    )


HEAD = (
    "| | NFE | FD (digits features) | FD (pixels) | KID ± subset std (pixels) | precision (digits, k=3) "
    "| recall (digits, k=3) "
    "| n | training |\n|---|---|---|---|---|---|---|---|---|"
)


def _training(res):
    """Iterations and the time per iteration the run logged last (teacher + student + other)."""
    m = res.get("last_metrics") or {}
    if not m.get("step"):
        return "–"
    ms = m.get("ms_iter") or sum(m.get(k, 0.0) for k in ("ms_teacher", "ms_student", "ms_other"))
    text = f"{m['step']} it × {ms:.0f} ms"
    first = res.get("first_metrics") or {}
    if first.get("init_seconds") is not None:  # DKDM pool initialisation cost
        text += (
            f"; pool of {first['pool_size']:,} by {first['pool_init']}: {first['init_evals']:,.0f} sample "
            f"evaluations, {first['init_seconds']:.0f} s"
        )
    return text


def table_teacher(results):
    res = results.get("teacher")
    if not res:
        return "(not measured yet: `python bench/run.py teacher`)"
    recs = res["records"]
    real = _pick(recs, name="real")
    n_ref = next(iter(real.values()))["n_ref"]
    lines = [HEAD, _quality_row(f"real digits (held out; reference: the other {n_ref})", "–", real, "–")]
    for nfe in sorted({r["nfe"] for r in recs if r["sampler"] == "ddim"}):
        lines.append(_quality_row(f"teacher DDIM-{nfe}", nfe, _pick(recs, "ddim", nfe), "–"))
    return "\n".join(lines) + f"\n\n`{res['eval']}`"


def table_group(results, group_rows):
    lines, cmds = [HEAD], []
    for name in group_rows:
        res = results.get(name)
        if not res:
            lines.append(f"| {name} (not measured yet) | | | | | | | | |")
            continue
        student = _pick(res["records"], sampler="student")
        nfe = next(iter(student.values()))["nfe"] if student else None
        lines.append(_quality_row(res["about"], nfe, student, _training(res)))
        cmds.append(f"- {res['about']}: `{res['train']}`")
    return "\n".join(lines) + "\n\n" + "\n".join(cmds)


def table_speed(results):
    s = results.get("speed")
    lines = []
    boot = results.get("boot-default")
    if boot:
        stud = _pick(boot["records"], sampler="student").get("digits")
        ddim50 = _pick(boot["records"], "ddim", 50).get("digits")
        if stud and ddim50 and stud["images_per_s"] and ddim50["images_per_s"]:
            lines.append(
                f"- one-step BOOT student: {stud['images_per_s']:.0f} images/s vs teacher DDIM-50 "
                f"{ddim50['images_per_s']:.0f} images/s: **{stud['images_per_s'] / ddim50['images_per_s']:.0f}×** "
                f"(same run, batch 128: `{boot['eval']}`)"
            )
    if s:
        lines.append(
            f"- BOOT iteration {s['boot_iter_ms']:.0f} ms vs the floor of its network passes "
            f"{s['boot_floor_ms']:.0f} ms (2 teacher + 1 student forward, 1 student forward+backward, "
            f"+1/4 boundary pass): **{s['boot_ratio']:.2f}×**"
        )
        lines.append(
            f"- DKDM iteration {s['dkdm_iter_ms']:.0f} ms vs the floor (1 teacher forward, 1 student "
            f"forward+backward) {s['dkdm_floor_ms']:.0f} ms: **{s['dkdm_ratio']:.2f}×**"
        )
        lines.append(
            f"- DKDM iteration with T = 1000 vs T = 100: {s['dkdm_iter_ms']:.0f} ms vs "
            f"{s['dkdm_T100_iter_ms']:.0f} ms (**{s['dkdm_T1000_over_T100']:.2f}×**: flat in T)"
        )
        lines.append(
            f"\nThe floor is the sum of the passes timed one by one in the same run; a ratio near 1 means the "
            f"training loop adds nothing measurable beyond its network passes. One thread each; "
            f"`python bench/run.py speed` ({s['date']})."
        )
    return "\n".join(lines) or "(not measured yet: `python bench/run.py speed`)"


def _load_note(rec):
    """Figures taken while other jobs shared the cores say so (load average above half the cores)."""
    if rec["load_before"] > 0.5 * rec["cores"]:
        return (
            f"; measured while other jobs shared the {rec['cores']} cores (load average "
            f"{rec['load_before']:.1f}): expect less on an idle machine"
        )
    return ""


def table_newcomer(results):
    """The first screen's figures: the default run's time, install size, --help time."""
    r = results.get("newcomer") or {}
    lines = []
    b = r.get("boot_default")
    if b and b["full"]:
        lines.append(
            f"- `python boot.py`: **{b['wall_s'] / 60:.0f} min** on {b['cores']} CPU cores, torch's default "
            f"threads ({b['iters']:,} iterations, {b['ms_per_iter']:.0f} ms each{_load_note(b)}; "
            f"`python bench/run.py newcomer-boot-full`, {b['date']})"
        )
    elif b:
        lines.append(
            f"- `python boot.py`: **about {b['estimate_min']:.0f} min** on {b['cores']} CPU cores, torch's "
            f"default threads (3,000 iterations × {b['ms_per_iter']:.0f} ms, timed over the first "
            f"{b['iters']}, plus start-up and the final check{_load_note(b)}; `python bench/run.py newcomer-boot`, "
            f"{b['date']})"
        )
    elif results.get("boot-default", {}).get("last_metrics"):  # the bench's own full default run
        d = results["boot-default"]
        m = d["last_metrics"]
        lines.append(
            f"- `python boot.py`: **{m['elapsed_s'] / 60:.0f} min** of training ({m['step']:,} iterations × "
            f"{m['ms_teacher'] + m['ms_student'] + m['ms_other']:.0f} ms) on 2 CPU cores with "
            f"OMP_NUM_THREADS=1, bench jobs running two at a time (`python bench/run.py "
            f"boot-default`, {d['date']}); the command above leaves torch its default of one thread per "
            f"core, which `python bench/run.py newcomer-boot` times"
        )
    others = r.get("boot_default_others") or []
    if b and others:  # the same bench elsewhere: how much a machine of the same size changes the wait
        slow = max(others, key=lambda o: o["ms_per_iter"])
        lines[-1] += (
            f"; machines of the same size differ: the same bench measured {slow['ms_per_iter']:.0f} ms per "
            f"iteration on another {slow['cores']}-core machine, where the whole run from a fresh clone took "
            f"{slow['whole_run_s'] // 60:.0f} min {slow['whole_run_s'] % 60:.0f} s"
        )
    i = r.get("install")
    if i:
        kind = "a CUDA build, which also runs on CPU" if i["cuda_build"] else "a CPU build"
        lines.append(
            f"- install: the virtual environment takes **{i['venv_gb']:.1f} GB**, {i['torch_and_cuda_gb']:.1f} GB "
            f"of it torch {i['torch']} ({kind}) with its CUDA libraries (`python bench/run.py newcomer`, "
            f"{i['date']})"
        )
    h = r.get("help")
    if h:
        c = h["cpu_s"]
        lines.append(
            f"- `python boot.py --help`: **{c['boot.py']:.2f} s** of CPU (dkdm.py {c['dkdm.py']:.2f}, "
            f"evaluate.py {c['evaluate.py']:.2f}; `import torch` alone "
            f"{c['import torch']:.2f} s: --help loads neither torch nor diffusers, the method files' config read "
            f"from their source; `python bench/run.py newcomer`, {h['date']})"
        )
    return "\n".join(lines) or "(not measured yet: `python bench/run.py newcomer`)"


def table_tests_time(results):
    t = (results.get("newcomer") or {}).get("tests")
    if not t:
        return "(time not measured yet: `python bench/run.py newcomer-tests`)"
    return (
        f"The tests took **{t['wall_s'] / 60:.0f} min** on {t['cores']} CPU cores after the install "
        f"(`{t['summary']}`{_load_note(t)}; `python bench/run.py newcomer-tests`, {t['date']})."
    )


def table_curves(results, names=("curve-cnn", "curve-vit")):
    """FD (digits features) vs iterations of both students along one run each, with the teacher's
    DDIM-50 from the same evaluations; the default iterations of each student in bold."""
    import dkdm  # the default iterations (torch-free until a student is built)

    curves = {n: {p["iters"]: p for p in results[n]["curve"]} for n in names if results.get(n)}
    if not curves:
        return "(not measured yet: `python bench/run.py curves`)"
    iters = sorted({k for c in curves.values() for k in c})
    head = (
        "| iterations | "
        + " | ".join(f"{n.split('-')[1]} FD (digits) | ms / it" for n in curves)
        + " | teacher DDIM-50 FD |"
    )
    lines = [head, "|" + "---|" * (2 * len(curves) + 2)]
    for k in iters:
        cells, teacher = [], None
        for name, c in curves.items():
            p = c.get(k)
            fd = _pick(p["records"], sampler="student").get("digits", {}).get("fid") if p else None
            teacher = teacher or (_pick(p["records"], "ddim", 50).get("digits", {}).get("fid") if p else None)
            cell = _f(fd)
            if p and k == dkdm.PRESETS["digits"][name.split("-")[1]]["iters"]:
                cell = f"**{cell}**" + (" (default)" if "--lr-decay" not in results[name]["train"] else "")
            cells += [cell, _f((p or {}).get("last_metrics", {}).get("ms_iter"), ".0f")]
        lines.append(f"| {k:,} | " + " | ".join(cells) + f" | {_f(teacher)} |")
    cmds = [
        f"- {results[n]['about']}: `{results[n]['train']} --iters K` for K = "
        f"{', '.join(f'{k:,}' for k in curves[n])}, each resuming the last"
        for n in curves
    ]
    return "\n".join(lines) + "\n\n" + "\n".join(cmds)


def table_gpu(results):
    """bench/gpu.py's last run on each device kind (docs/gpu.md), with its date; GPUs first."""
    import costs
    from bench import gpu

    records = costs.gpu_records(results)
    if not records:
        return "(not measured yet: `python bench/run.py gpu`)"
    parts = []
    for device, r in sorted(records.items(), key=lambda kv: kv[0] == "cpu"):
        note = (
            "\n\nThis run found no GPU: the rows are CPU rates, one thread; on a machine with a GPU, "
            "`python bench/run.py gpu` measures the real architectures there and adds that GPU's record."
            if device == "cpu"
            else ""
        )
        parts.append(gpu.table(r) + note)
    return "\n\n".join(parts) + "\n\n`python bench/run.py gpu` (one record per device kind)"


def table_memory(results):
    """--dry-run's memory estimate for BOOT on SD 2.1-base (bench/memory.py), beside the H200 measurement."""
    m = results.get("memory")
    if not m:
        return "(not measured yet: `python bench/run.py memory`)"
    lines = [
        "| student precision | teacher (fp16) | student + grads + AdamW + EMA | autocast weight copies | "
        "activations / sample | total at batch 8 | batch that fits 40 / 80 GB |",
        "|---|---|---|---|---|---|---|",
    ]
    for precision in ("auto", "fp32"):
        e = m[f"sd21-base, 8 GPUs x batch 8, --half, --precision {precision}"]
        fits = e["max_local_batch_fitting"]
        lines.append(
            f"| {'bf16 autocast (auto)' if precision == 'auto' else 'float32'} | {e['teacher_weights_GiB']:.1f} GiB | "
            f"{e['student_weights_grads_adamw_ema_GiB']:.1f} GiB | {e['autocast_weight_copies_MiB'] / 1024:.1f} GiB | "
            f"{e['activations_per_sample_MiB'] / 1024:.2f} GiB × {e['activations_batch_factor']} | "
            f"**{e['total_at_local_batch_GiB']:.1f} GiB** | {fits['40GB']} / {fits['80GB']} |"
        )
    v = m["vs the H200 measurement (batch 8, --half, bf16; nvidia-smi, whole process)"]
    return "\n".join(lines) + (
        f"\n\nMeasured on one H200 (2026-12-04, random-weight teachers of the same architecture, "
        f"batch 8, `--half`, bf16): {v['measured_GiB']:.1f} GiB for the whole process in nvidia-smi "
        f"(CUDA context and allocator cache included); the estimate is {v['estimated_GiB']:.1f} GiB, "
        f"{v['estimate_over_measured']:.2f}× that. `python bench/run.py memory` ({m['date']})"
    )


def _px(values):
    return ", ".join(f"{v:.4f}" for v in values)


def table_tutorial_boot(results, key="boot"):
    """docs/tutorial.md: one BOOT iteration on the gmm teacher, each quantity of one example at two pixels."""
    w = (results.get("tutorial") or {}).get(key)
    if not w:
        return "(not computed yet: `python bench/run.py tutorial`)"
    (r1, c1), (r2, c2) = w["pixels"]
    rows = [
        ("2", "ε ~ N(0, I)", "", _px(w["eps"])),
        ("3", "c ~ D", "a label", str(w["label"])),
        ("4", "t ~ U(t_min, t_max)", f"t_max = {w['t_max']}", f"{w['t']:.4f}"),
        ("4", "s = max(t − δ, t_min)", f"δ = {w['delta']}", f"{w['s']:.4f}"),
        (
            "",
            "α_t, σ_t; α_s, σ_s",
            "the teacher's schedule",
            f"{w['alpha_t']:.4f}, {w['sigma_t']:.4f}; {w['alpha_s']:.4f}, {w['sigma_s']:.4f}",
        ),
        ("6", "δλ' = 1 − α_t σ_s / (σ_t α_s)", "`delta_lambda`", f"{w['delta_lambda']:.4f}"),
        ("7", "y_t = y_θ(ε, t)", "the student, no gradient", _px(w["y_t"])),
        ("8", "x̂_t = α_t y_t + σ_t ε", "`noisy`", _px(w["x_t"])),
        ("9", "f_t = f(x̂_t, t)", "the teacher's x̂0", _px(w["f_t"])),
        ("Eq. 7", "y_Euler = y_t + δλ' (f_t − y_t)", "`signal_step`", _px(w["y_euler"])),
        ("Eq. 15", "x̃_s = α_s y_Euler + σ_s ε", "Heun's second point", _px(w["x_s"])),
        ("Eq. 15", "f_s = f(x̃_s, s)", "", _px(w["f_s"])),
        ("Eq. 15", "ŷ = y_t + δλ' ((f_t + f_s)/2 − y_t)", "the target, SG", _px(w["y_heun"])),
        ("10", "y_θ(ε, s)", "the student, with gradient", _px(w["y_s"])),
        ("10", "w̃ / δ² = 1 / δ²", "uniform weighting", f"{w['weight']:g}"),
        ("10", "d = mean (y_θ(ε, s) − ŷ)²", "this example", f"{w['d']:.6f}"),
        ("10", "L_BS = mean_b (w̃/δ²) d_b", "the batch of 4", f"{w['loss_bs']:.4f}"),
        ("9, 11", "f(ε, t_max); y_θ(ε, t_max)", "the boundary", f"{_px(w['f_tmax'])}; {_px(w['y_tmax'])}"),
        ("11", "L_BC = mean (f(ε, t_max) − y_θ(ε, t_max))²", "Eq. 8, the batch", f"{w['loss_bc']:.4f}"),
        ("", "L = L_BS + β L_BC", "`boot_step` gives", f"{w['loss']:.4f} ({w['boot_step_loss']:.4f})"),
    ]
    head = f"| Alg. 1 | quantity | | example {w['example']}: pixels ({r1}, {c1}), ({r2}, {c2}) |\n|---|---|---|---|"
    return "\n".join([head, *(f"| {a} | {b} | {c} | {d} |" for a, b, c, d in rows)])


def table_tutorial_dkdm(results):
    """docs/tutorial.md: one DKDM iteration on the digits teacher, the pool and each drawn entry."""
    w = (results.get("tutorial") or {}).get("dkdm")
    if not w:
        return "(not computed yet: `python bench/run.py tutorial`)"
    (r1, c1), (r2, c2) = w["pixels"]
    lines = [
        f"- the pool's steps i before the iteration: {', '.join(map(str, w['pool_steps_before']))}",
        f"- and after it: {', '.join(map(str, w['pool_steps_after']))}",
        "",
        "| entry | i → i−1 | label | x_t | ε_T | mean_T | σ_T | x_{t−1} | ε_S | L'simple | L'vlb |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in w["drawn"]:
        cells = [str(r["entry"]), f"{r['i']} → {r['i_after']}", str(r["label"])]
        cells += [_px(r[k]) for k in ("x_t", "eps_T", "mean_T", "sigma_T", "x_prev", "eps_S")]
        cells += [f"{r['l_simple']:.4f}", f"{r['l_vlb']:.4g}"]
        lines.append("| " + " | ".join(cells) + " |")
    lines += [
        "",
        f"pixels ({r1}, {c1}), ({r2}, {c2}); the batch's L*DKDM = mean(L'simple + λ L'vlb) = "
        f"{w['loss']:.4f} (`student_step` gives {w['student_step_loss']:.4f})",
    ]
    return "\n".join(lines)


EXERCISE_ROWS = [  # (exercise, its run, the run it is compared with)
    ("1. Euler or Heun?", "ex-boot-gmm-euler", "ex-boot-gmm"),
    ("2. Without the boundary loss", "ex-boot-gmm-no-boundary", "ex-boot-gmm"),
    ("3. t_max = 0.98", "ex-boot-gmm-tmax98", "ex-boot-gmm"),
    ("4. δ = 0.01", "ex-boot-gmm-delta01", "ex-boot-gmm"),
    ("5. Iterative instead of dynamic", "ex-dkdm-iterative", "ex-dkdm"),
    ("6. A small pool, two chains", "ex-dkdm-rho002-m2", "ex-dkdm-rho002"),
]


def _answer(rec):
    """An exercise run's answer: BOOT's mean squared distance to the teacher's DDIM-50 from the same noise (its
    distance.json), or DKDM's FD in the digits features."""
    if "distance" in rec:
        return f"distance {rec['distance']['student']:.5f}"
    fd = _pick(rec["records"], sampler="student").get("digits", {}).get("fid")
    return f"FD {_f(fd, '.2f')}"


def table_exercises(results):
    """docs/results.md: docs/tutorial.md's exercises, each one command, with what it measured and its CPU time
    (training and scoring, user + system), beside the run it is compared with and the teacher's own figure."""
    lines = [
        "| exercise | command | answer | compared with | its answer | the teacher | CPU time |",
        "|---|---|---|---|---|---|---|",
    ]
    for label, name, base in EXERCISE_ROWS:
        if name not in results or base not in results:
            lines.append(f"| {label} | `python bench/run.py {name}` | not measured yet | | | | |")
            continue
        rec, cpu = results[name], results[name]["cpu_s"]
        if "distance" in rec:  # the teacher's own few-step samplers, on the same noise
            teacher = f"DDIM-10 {rec['distance']['DDIM-10']:.5f}, DDIM-1 {rec['distance']['DDIM-1']:.5f}"
        else:
            teacher = f"DDIM-50 FD {_f(_pick(rec['records'], sampler='ddim', nfe=50)['digits']['fid'], '.2f')}"
        lines.append(
            f"| {label} | `{rec['train']}` | {_answer(rec)} | `{results[base]['train']}` | "
            f"{_answer(results[base])} | {teacher} | {cpu / 60:.1f} min |"
        )
    return "\n".join(lines)


def table_eval_memory(results):
    """bench/eval_memory.py: an evaluation's peak resident memory at n and 4n samples (docs/runs.md)."""
    m = results.get("eval-memory")
    if not m:
        return "(not measured yet: `python bench/run.py eval-memory`)"
    lines = ["| samples n | peak resident memory | the samples themselves (float32) |", "|---|---|---|"]
    for r in m["rows"]:
        n = f"{r['n']:,}" + (", every sample kept (the control)" if r["samples_kept"] else "")
        lines.append(f"| {n} | {r['peak_rss_mb']:,.0f} MB | {r['n'] * m['image_mb']:,.0f} MB |")
    return "\n".join(lines) + (
        f"\n\nOne teacher row of 3×{m['size']}×{m['size']} samples, batch {m['batch']}, one process, Inception "
        f"features through a random-weight stand-in (its weights are a download), freed memory handed back to "
        f"the system at once (bench/eval_memory.py); `python bench/run.py eval-memory` ({m['date']})"
    )


RECIPE_CARDS = ("digits", "gmm", "ddpm-cifar10", "ldm-celebahq", "sd21", "if")  # docs/recipes.md, in order


def _recipe_row(r) -> str:
    cmd = f"`{r['command']}`"
    if "refused" in r:
        return f"| {cmd} | – | refused: {r['refused']} | – | – |"
    m, ema = r["memory"], r.get("ema")
    preset = f"{r['preset']}: {r['iters']:,} it. × batch {r['batch']}, lr {r['lr']:g}" + (
        f", EMA {ema}" if ema else ""
    )
    if "unavailable" in m:
        memory, fits = m["unavailable"], "–"
    else:
        size = f"{m['GiB']:.1f} GiB" if m["GiB"] >= 1 else f"{m['GiB'] * 1024:.0f} MiB"
        memory, fits = f"{size} (batch {m['local_batch']} per GPU)", f"{m['fits_80GB']:,}"
    hours = "; ".join(f"{h['gpu_hours']} on {h['device']} ({h['date']})" for h in r["gpu_hours"]) or "not measured"
    return f"| {cmd} | {preset} | {memory} | {fits} | {hours} |"


def table_recipe(results, teacher: str) -> str:
    """A card of docs/recipes.md: each training command's dry-run (bench/recipes.py)."""
    rec = results.get("recipes")
    if not rec or teacher not in rec["cards"]:
        return "(not measured yet: `python bench/run.py recipes`)"
    head = (
        "| command (the dry-run's processes) | preset as resolved | memory per GPU | batch per GPU that fits 80 GB "
        "| GPU-hours (bench/gpu.py records) |\n|---|---|---|---|---|"
    )
    rows = "\n".join(_recipe_row(r) for r in rec["cards"][teacher])
    return f"{head}\n{rows}\n\n`python bench/run.py recipes` ({rec['date']}){_proxy_at_end(results, teacher)}"


PROXY_RUNS = {"digits": ("boot-default", "dkdm-default")}  # bench rows of a card's commands, with a proxy logged


def _proxy_at_end(results, teacher: str) -> str:
    """Where the proxy ended in the bench's runs of the card's commands, beside the teacher's own floor."""
    runs = []
    for name in PROXY_RUNS.get(teacher, ()):
        m = results[name]["last_metrics"]
        floor = re.search(r"own DDIM-50: FD ([\d.]+)", m["proxy"]).group(1)
        runs.append(
            f"`{results[name]['train']}` ended at proxy FD {m['proxy_fd']:.1f} ({m['step']:,} it.) "
            f"against the teacher's own {floor}"
        )
    return "\n\nWhen to stop, as measured here: " + "; ".join(runs) + " (n = 256 each)." if runs else ""


def blocks(results) -> dict[str, str]:
    return {
        **{f"recipe-{name}": table_recipe(results, name) for name in RECIPE_CARDS},
        "tutorial-boot": table_tutorial_boot(results),
        "tutorial-boot-delta01": table_tutorial_boot(results, "boot_delta01"),
        "tutorial-dkdm": table_tutorial_dkdm(results),
        "exercises": table_exercises(results),
        "newcomer": table_newcomer(results),
        "tests-time": table_tests_time(results),
        "teacher": table_teacher(results),
        "boot": table_group(
            results,
            [
                "boot-default",
                "boot-seed1",
                "boot-huber",
                "boot-huber-seed1",
                "boot-small",
                "boot-long",
                "boot-heun",
                "boot-euler",
                "boot-no-boundary",
                "boot-progressive",
            ],
        ),
        "dkdm-default": table_group(results, ["dkdm-default", "dkdm-data-10k"]),
        "dkdm": table_group(
            results,
            [
                "dkdm-dynamic",
                "dkdm-shuffled",
                "dkdm-iterative",
                "dkdm-data",
                "dkdm-data-free",
                "dkdm-vit",
                "dkdm-vit-diffusers-init",
            ],
        ),
        "dkdm-pool": table_group(
            results,
            [
                "dkdm-dynamic",
                "dkdm-dynamic-seed1",
                "dkdm-shuffle-init",
                "dkdm-dynamic-4k",
                "dkdm-dynamic-seed1-4k",
                "dkdm-shuffle-init-4k",
                "dkdm-chains2560-4k",
                "dkdm-rho0.02-M512",
                "dkdm-rho0.02-M2",
                "dkdm-rho0.02-shuffle",
            ],
        ),
        "speed": table_speed(results),
        "paper": table_paper(results),
        "headline": table_headline(results),
        "gpu": table_gpu(results),
        "memory": table_memory(results),
        "eval-memory": table_eval_memory(results),
        "curves": table_curves(results),
    }


def _fd(results, name):
    """FD (digits features) of a bench run's student, or None."""
    rec = _pick((results.get(name) or {}).get("records", []), sampler="student").get("digits")
    return rec and rec["fid"]


def _vs(results, ours, paper, label_ours, label_paper, iters="2k"):
    a, b = _fd(results, ours), _fd(results, paper)
    if a is None or b is None:
        return f"not measured yet (`{ours}`, `{paper}`)"
    return f"{a:.2f} ({label_ours}) vs {b:.2f} ({label_paper}) at {iters} it. (`{ours}`, `{paper}`)"


def _noise(results):
    """FD of the default DKDM command at seeds 0 and 1 (2,000 and 4,000 iterations): run-to-run noise."""
    out = []
    for iters, a, b in (
        ("2,000", "dkdm-dynamic", "dkdm-dynamic-seed1"),
        ("4,000", "dkdm-dynamic-4k", "dkdm-dynamic-seed1-4k"),
    ):
        fa, fb = _fd(results, a), _fd(results, b)
        if fa is not None and fb is not None:
            out.append(f"{fa:.2f} vs {fb:.2f} at {iters} iterations")
    return (
        "Seed 0 vs seed 1 of the same DKDM command: " + ", ".join(out) + " — differences below these are noise."
        if out
        else ""
    )


def _eval_sampler(results):
    """Student and teacher FD under DDIM-50 (the digits protocol) and IDDPM-50 (the paper's), one run."""
    ddim, iddpm = (results.get(k) or {} for k in ("dkdm-dynamic-seed1", "dkdm-eval-iddpm"))
    rows = [
        (
            _pick(r.get("records", []), sampler="student").get("digits"),
            _pick(r.get("records", []), sampler=smp, nfe=50).get("digits"),
        )
        for r, smp in ((ddim, "ddim"), (iddpm, "ancestral"))
    ]
    if not all(s and t for s, t in rows):
        return "not measured yet (`dkdm-dynamic-seed1`, `dkdm-eval-iddpm`)"
    (sd, td), (si, ti) = rows
    return (
        f"student / teacher: DDIM-50 {sd['fid']:.2f} / {td['fid']:.2f} ({sd['fid'] / td['fid']:.2f}×), "
        f"IDDPM-50 {si['fid']:.2f} / {ti['fid']:.2f} ({si['fid'] / ti['fid']:.2f}×) (`dkdm-eval-iddpm`)"
    )


def _boot_facts():
    """Computed, not trained: BOOT's analytic/discrete lambda-weight ratio (cosine, delta 0.04) at
    t = 0.3 / 0.6 / 0.89, and 1/alpha at each preset's t_max (and at 0.9) on diffusers' beta tables."""
    import sys

    import torch
    from diffusers import DDPMScheduler

    sys.path[:0] = [str(ROOT), str(ROOT / "tests")]
    import boot
    import teachers

    from conftest import CosineSchedule

    cos = CosineSchedule()
    t = torch.tensor([0.3, 0.6, 0.89], dtype=torch.float64, requires_grad=True)
    lam_prime = torch.autograd.grad(cos.lam(t).sum(), t)[0]
    t = t.detach()
    ratio = (1 / (0.04 * lam_prime) ** 2) / boot.loss_weight(cos, t, 0.04, "lambda")
    tables = {
        "if": dict(beta_schedule="squaredcos_cap_v2"),
        "sd21": dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012),
        "ddpm-cifar10": dict(beta_schedule="linear", beta_start=1e-4, beta_end=0.02),
    }
    amp = {}
    for name, betas in tables.items():
        sch = teachers.Schedule(alphas_cumprod=DDPMScheduler(num_train_timesteps=1000, **betas).alphas_cumprod)
        t_max = boot.resolve(boot.BootConfig(teacher=name)).t_max
        amp[name] = (t_max, float(1 / sch.alpha(torch.tensor(t_max))), float(1 / sch.alpha(torch.tensor(0.9))))
    return ratio.tolist(), amp


def table_paper(results):
    """Settings the papers fix against this repository's defaults, with the measured difference."""
    ratio, amp = _boot_facts()
    rows = [
        (
            "DKDM pool initialisation",
            "shuffle denoise",
            "shuffle denoise; staggered (M = 512) on digits / gmm",
            _vs(results, "dkdm-dynamic", "dkdm-shuffle-init", "staggered", "shuffle")
            + "; "
            + _vs(results, "dkdm-dynamic-4k", "dkdm-shuffle-init-4k", "staggered", "shuffle", "4k"),
        ),
        (
            "DKDM gradient clipping",
            "none",
            "none; max norm 1.0 on digits / gmm",
            _vs(results, "dkdm-dynamic", "dkdm-no-clip", "1.0", "none"),
        ),
        (
            "DKDM lr / warm-up / EMA / batch",
            "1e-4 / none / 0.9999 / 128 (official code)",
            "the paper's in the GPU commands; on digits cnn 1e-3 / 200 / 0.998 / 64, vit 3e-3 / 200 / 0.9995 / 64",
            _vs(results, "dkdm-dynamic", "dkdm-official-recipe", "cnn, ours", "official"),
        ),
        (
            "DiT student init",
            "adaLN-Zero (DiT paper)",
            "adaLN-Zero (`--vit-init diffusers`: diffusers' default)",
            _vs(results, "dkdm-vit", "dkdm-vit-diffusers-init", "adaLN-Zero", "diffusers"),
        ),
        (
            "DKDM synthetic set (Table 4)",
            "IDDPM-1000 (pixel), DDIM-100 (latent)",
            "the paper's; ancestral-100 on digits",
            _vs(results, "dkdm-data-free", "dkdm-data-free-iddpm", "100 steps", "IDDPM-1000"),
        ),
        (
            "DKDM evaluation (Sec. 4.1)",
            "IDDPM-50 (pixel), DDIM-200 (latent)",
            "the paper's; DDIM-50 on digits",
            _eval_sampler(results),
        ),
        (
            "BOOT λ weighting (Alg. 1 line 10)",
            "1/(δλ')², δλ' = 1 − α_tσ_s/(σ_tα_s)",
            "the same",
            "the analytic dλ/dt would weigh t = 0.3 / 0.6 / 0.89 by "
            + " / ".join(f"{r:.2f}" for r in ratio)
            + " × (cosine, δ = 0.04)",
        ),
        (
            "BOOT t_max",
            "not given",
            "0.9 digits, " + ", ".join(f"{v[0]:g} {k}" for k, v in amp.items()),
            "1/α_tmax, the amplification of an ε error: "
            + ", ".join(f"{v[1]:.1f} {k}" for k, v in amp.items())
            + " (at 0.9: "
            + ", ".join(f"{v[2]:.1f} {k}" for k, v in amp.items())
            + ")",
        ),
        (
            "BOOT lr / EMA",
            "1e-4 / 0.9999 (Table 3)",
            "Table 3's on hub teachers; 3e-4 / 0.995 on digits",
            _vs(results, "boot-default", "boot-table3-lr", "ours", "Table 3's", "3k"),
        ),
        (
            "BOOT distance d (Eq. 14)",
            "L2; with LPIPS for CIFAR-10's best row (Sec. 4.1, Table 2: FID 4.38 vs 6.88)",
            "LPIPS on ddpm-cifar10 (`--loss lpips`), L2 elsewhere; `--loss huber`: improved CT's pseudo-Huber",
            _vs(results, "boot-default", "boot-huber", "L2", "pseudo-Huber", "3k")
            + "; seed 1: "
            + _vs(results, "boot-seed1", "boot-huber-seed1", "L2", "pseudo-Huber", "3k")
            + " (LPIPS needs AlexNet's ImageNet weights: not measured offline)",
        ),
        (
            "DiT student schedule",
            "not given (official trainer: constant 1e-4)",
            "3e-3 after 200 warm-up, cosine to 10% over iterations 7,000-10,000 (`--lr-decay`), EMA 0.9995",
            "the three runs of the default: "
            + " / ".join(_f(_fd(results, f"vit-seed{k}"), ".2f") for k in range(3))
            + " (seed 0 with torch's threads, seeds 1, 2 with one; `vit-seed0..2`)",
        ),
    ]
    lines = ["| setting | paper | ours (default) | FD on the embedded teacher |", "|---|---|---|---|"]
    lines += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in rows]
    return "\n".join(lines) + ("\n\n" + _noise(results) if _noise(results) else "")


SEEDS = {  # each default command and its runs at seeds 1 and 2
    "boot-default": ("boot-default", "boot-seed1", "boot-seed2"),
    "dkdm-default": ("dkdm-default", "dkdm-default-seed1", "dkdm-default-seed2"),
    "vit-seed0": ("vit-seed0", "vit-seed1", "vit-seed2"),
}


def _seed_spread(results, name):
    """' (mean ± std, 3 seeds)' of a default command's FD (digits features) over its seeds, std with
    n - 1; '' for other rows or while a seed is not measured."""
    fds = [_fd(results, k) for k in SEEDS.get(name, ())]
    if not fds or None in fds:
        return ""
    mean = sum(fds) / len(fds)
    std = (sum((x - mean) ** 2 for x in fds) / (len(fds) - 1)) ** 0.5
    return f" ({mean:.2f} ± {std:.2f}, 3 seeds)"


def table_headline(results):
    """The README's results: the real-vs-real floor, the teacher's DDIM rows and each method's default
    command (the DiT's three runs), by FD and KID."""
    teacher = (results.get("teacher") or {}).get("records", [])
    if not teacher:
        return "(not measured yet: `python bench/run.py teacher`)"
    lines = [
        "| | NFE | FD (digits features) | KID ± subset std (pixels) | KID ± subset std (digits features) | training |",
        "|---|---|---|---|---|---|",
    ]

    unscored = []

    def row(label, recs, nfe, training, spread=""):
        d, p = recs.get("digits"), recs.get("pixels")
        lines.append(f"| {label} | {nfe} | {_f(d and d['fid'])}{spread} | {_kid(p)} | {_kid(d)} | {training} |")

    row("real digits, held out (the floor: real against real)", _pick(teacher, name="real"), "–", "–")
    for nfe in (50, 10, 1):
        row(f"teacher, DDIM-{nfe}", _pick(teacher, "ddim", nfe), nfe, "–")
    for name, label in (
        ("boot-default", "BOOT student, `python boot.py`"),
        ("boot-small", "BOOT, smaller fresh student, `python boot.py --student small`"),
        ("boot-long", "BOOT student, `python boot.py --iters 9000`"),
        ("dkdm-default", "DKDM cnn student, `python dkdm.py`"),
        ("vit-seed0", "DKDM DiT student, `python dkdm.py --student vit` (seed 0, torch's threads)"),
        ("vit-seed1", "the same, `--seed 1` (one thread)"),
        ("vit-seed2", "the same, `--seed 2` (one thread)"),
        ("dkdm-data-10k", "baseline: the cnn trained on the real digits"),
    ):
        res = results.get(name) or {}
        if res.get("curve"):  # a curve's last point is its default run
            res = {**res["curve"][-1], "first_metrics": None}
        student = _pick(res.get("records", []), sampler="student")
        nfe = next(iter(student.values()))["nfe"] if student else "–"
        row(label, student, nfe, _training(res) if res else "not measured yet", _seed_spread(results, name))
        unscored += [name] if res and not any(r.get("kid") is not None for r in student.values()) else []
    rerun = (
        f" KID –: a row scored before KID was added (`python bench/run.py {' '.join(unscored)} --force` "
        "retrains and rescores it)."
        if unscored
        else ""
    )
    return "\n".join(lines) + (
        f"\n\nn = 1,000 samples per row against a fixed reference split of the real digits (FD is biased by n: "
        f"compare equal n only; KID is not). KID ±: std over 100 subsets; (a ± b, 3 seeds): the default command's "
        f"FD, mean ± std over seeds 0, 1, 2. `{results['teacher']['eval']}` and the commands in "
        f"[docs/results.md](docs/results.md).{rerun}"
    )


ROOT = Path(__file__).resolve().parents[1]
LINK = re.compile(r"\[`([A-Za-z_][\w.]*)`\]\(((?:\.\./)?[\w/]+\.py)#L\d+\)")
FILES = (
    "README.md",
    "docs/tutorial.md",
    "docs/recipes.md",
    "docs/runs.md",
    "docs/gpu.md",
    "docs/results.md",
    "docs/testing.md",
)


def line_of(path: Path, name: str) -> int:
    """1-based line of `def name` / `class name` (`Class.method`: the method inside the class)."""
    lines = path.read_text().splitlines()
    start = 0
    for part in name.split("."):
        pat = re.compile(rf"^\s*(def|class)\s+{re.escape(part)}\b")
        hit = next((k for k in range(start, len(lines)) if pat.match(lines[k])), None)
        if hit is None:
            raise KeyError(f"a link points at {path.relative_to(ROOT)}:{name}, which does not exist")
        start = hit
    return start + 1


def fix_links(text: str, folder: Path = ROOT) -> str:
    """Point every [`name`](file.py#L..) link at the line where `name` is defined now."""
    return LINK.sub(lambda m: f"[`{m.group(1)}`]({m.group(2)}#L{line_of(folder / m.group(2), m.group(1))})", text)


def render(text: str, results, folder: Path = ROOT) -> str:
    """Replace each <!-- bench:NAME --> ... <!-- /bench:NAME --> block's body; refresh code links."""
    for name, body in blocks(results).items():
        pat = re.compile(rf"(<!-- bench:{re.escape(name)} -->\n).*?(<!-- /bench:{re.escape(name)} -->)", re.S)
        text = pat.sub(lambda m: m.group(1) + body + "\n" + m.group(2), text)
    return fix_links(text, folder)


def write_docs(results):
    """Render README.md and docs/*.md in place."""
    for name in FILES:
        path = ROOT / name
        path.write_text(render(path.read_text(), results, path.parent))


if __name__ == "__main__":  # a part of bench/run.py, not a command of its own
    import sys

    print("bench/render.py runs through bench/run.py: python bench/run.py --render", file=sys.stderr)
    sys.exit(2)
