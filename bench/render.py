"""bench/results.json -> the tables in README.md (between <!-- bench:NAME --> markers)."""
from __future__ import annotations

import re
from pathlib import Path


def _pick(records, sampler=None, nfe=None, name=None):
    """{feature space: record} of the rows that match."""
    out = {}
    for r in records:
        if (name is None or r["name"] == name) and (sampler is None or r["sampler"] == sampler) \
                and (nfe is None or r["nfe"] == nfe):
            out[r["features"]] = r
    return out


def _f(v, spec=".3f"):
    return "–" if v is None else format(v, spec)


def _quality_row(label, nfe, rows, extra):
    d, p = rows.get("digits", {}), rows.get("pixels", {})
    n = d.get("n") or p.get("n")
    return (f"| {label} | {_f(nfe, 'd') if isinstance(nfe, int) else nfe} | {_f(d.get('fid'))} | {_f(p.get('fid'))} | "
            f"{_f(d.get('precision'), '.2f')} | {_f(d.get('recall'), '.2f')} | {n} | {extra} |")


HEAD = ("| | NFE | FD (digits features) | FD (pixels) | precision (digits, k=3) | recall (digits, k=3) | n | "
        "training |\n|---|---|---|---|---|---|---|---|")


def _training(res):
    """Iterations and the time per iteration the run logged last (teacher + student + other)."""
    m = res.get("last_metrics") or {}
    if not m.get("step"):
        return "–"
    ms = m.get("ms_iter") or sum(m.get(k, 0.0) for k in ("ms_teacher", "ms_student", "ms_other"))
    text = f"{m['step']} it × {ms:.0f} ms"
    first = res.get("first_metrics") or {}
    if first.get("init_seconds") is not None:  # DKDM pool initialisation cost
        text += (f"; pool of {first['pool_size']:,} by {first['pool_init']}: {first['init_evals']:,.0f} sample "
                 f"evaluations, {first['init_seconds']:.0f} s")
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
            lines.append(f"| {name} (not measured yet) | | | | | | | |")
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
            lines.append(f"- one-step BOOT student: {stud['images_per_s']:.0f} images/s vs teacher DDIM-50 "
                         f"{ddim50['images_per_s']:.0f} images/s: **{stud['images_per_s'] / ddim50['images_per_s']:.0f}×** "
                         f"(same run, batch 128: `{boot['eval']}`)")
    if s:
        lines.append(f"- BOOT iteration {s['boot_iter_ms']:.0f} ms vs the floor of its network passes "
                     f"{s['boot_floor_ms']:.0f} ms (2 teacher + 1 student forward, 1 student forward+backward, "
                     f"+1/4 boundary pass): **{s['boot_ratio']:.2f}×**")
        lines.append(f"- DKDM iteration {s['dkdm_iter_ms']:.0f} ms vs the floor (1 teacher forward, 1 student "
                     f"forward+backward) {s['dkdm_floor_ms']:.0f} ms: **{s['dkdm_ratio']:.2f}×**")
        lines.append(f"- DKDM iteration with T = 1000 vs T = 100: {s['dkdm_iter_ms']:.0f} ms vs "
                     f"{s['dkdm_T100_iter_ms']:.0f} ms (**{s['dkdm_T1000_over_T100']:.2f}×**: flat in T)")
        lines.append(f"\nThe floor is the sum of the passes timed one by one in the same run; a ratio near 1 means the "
                     f"training loop adds nothing measurable beyond its network passes. One thread each; "
                     f"`python bench/run.py speed` ({s['date']}).")
    return "\n".join(lines) or "(not measured yet: `python bench/run.py speed`)"


def _load_note(rec):
    """Figures taken while other jobs shared the cores say so (load average above half the cores)."""
    if rec["load_before"] > 0.5 * rec["cores"]:
        return (f"; measured while other jobs shared the {rec['cores']} cores (load average "
                f"{rec['load_before']:.1f}): expect less on an idle machine")
    return ""


def table_newcomer(results):
    """The first screen's figures: the default run's time, install size, --help time."""
    r = results.get("newcomer") or {}
    lines = []
    b = r.get("boot_default")
    if b and b["full"]:
        lines.append(f"- `python boot.py`: **{b['wall_s'] / 60:.0f} min** on {b['cores']} CPU cores, torch's default "
                     f"threads ({b['iters']:,} iterations, {b['ms_per_iter']:.0f} ms each{_load_note(b)}; "
                     f"`python bench/run.py newcomer-boot-full`, {b['date']})")
    elif b:
        lines.append(f"- `python boot.py`: **about {b['estimate_min']:.0f} min** on {b['cores']} CPU cores, torch's "
                     f"default threads (3,000 iterations × {b['ms_per_iter']:.0f} ms, timed over the first "
                     f"{b['iters']}, plus start-up and the final check{_load_note(b)}; `python bench/run.py newcomer`, "
                     f"{b['date']})")
    elif results.get("boot-default", {}).get("last_metrics"):  # the bench's own full default run
        d = results["boot-default"]
        m = d["last_metrics"]
        lines.append(f"- `python boot.py`: **{m['elapsed_s'] / 60:.0f} min** of training ({m['step']:,} iterations × "
                     f"{m['ms_teacher'] + m['ms_student'] + m['ms_other']:.0f} ms) on 2 CPU cores with "
                     f"OMP_NUM_THREADS=1, bench jobs running two at a time (`python bench/run.py "
                     f"boot-default`, {d['date']}); the command above leaves torch its default of one thread per "
                     f"core, which `python bench/run.py newcomer-boot` times")
    i = r.get("install")
    if i:
        kind = "a CUDA build, which also runs on CPU" if i["cuda_build"] else "a CPU build"
        lines.append(f"- install: the virtual environment takes **{i['venv_gb']:.1f} GB**, {i['torch_and_cuda_gb']:.1f} GB "
                     f"of it torch {i['torch']} ({kind}) with its CUDA libraries (`python bench/run.py newcomer`, "
                     f"{i['date']})")
    h = r.get("help")
    if h:
        c = h["cpu_s"]
        lines.append(f"- `python boot.py --help`: **{c['boot.py']:.2f} s** of CPU (dkdm.py {c['dkdm.py']:.2f}, "
                     f"evaluate.py {c['evaluate.py']:.2f}, teachers.py {c['teachers.py']:.2f}; `import torch` alone "
                     f"{c['import torch']:.2f} s: --help does not load it; `python bench/run.py newcomer`, {h['date']})")
    return "\n".join(lines) or "(not measured yet: `python bench/run.py newcomer`)"


def table_tests_time(results):
    t = (results.get("newcomer") or {}).get("tests")
    if not t:
        return "(time not measured yet: `python bench/run.py newcomer-tests`)"
    return (f"The tests took **{t['wall_s'] / 60:.0f} min** on {t['cores']} CPU cores after the install "
            f"(`{t['summary']}`{_load_note(t)}; `python bench/run.py newcomer-tests`, {t['date']}).")


def blocks(results) -> dict[str, str]:
    return {
        "newcomer": table_newcomer(results),
        "tests-time": table_tests_time(results),
        "teacher": table_teacher(results),
        "boot": table_group(results, ["boot-default", "boot-long", "boot-heun", "boot-euler", "boot-no-boundary",
                                      "boot-progressive"]),
        "dkdm-default": table_group(results, ["dkdm-default", "dkdm-data-10k"]),
        "dkdm": table_group(results, ["dkdm-dynamic", "dkdm-shuffled", "dkdm-iterative", "dkdm-data",
                                      "dkdm-data-free", "dkdm-vit"]),
        "dkdm-pool": table_group(results, ["dkdm-dynamic", "dkdm-rho0.02-M512", "dkdm-rho0.02-M2",
                                           "dkdm-rho0.02-shuffle"]),
        "speed": table_speed(results),
    }


ROOT = Path(__file__).resolve().parents[1]
LINK = re.compile(r"\[`([A-Za-z_][\w.]*)`\]\(([\w/]+\.py)#L\d+\)")


def line_of(path: str, name: str) -> int:
    """1-based line of `def name` / `class name` (`Class.method`: the method inside the class)."""
    lines = (ROOT / path).read_text().splitlines()
    start = 0
    for part in name.split("."):
        pat = re.compile(rf"^\s*(def|class)\s+{re.escape(part)}\b")
        hit = next((k for k in range(start, len(lines)) if pat.match(lines[k])), None)
        if hit is None:
            raise KeyError(f"README links to {path}:{name}, which does not exist")
        start = hit
    return start + 1


def fix_links(text: str) -> str:
    """Point every [`name`](file.py#L..) link at the line where `name` is defined now."""
    return LINK.sub(lambda m: f"[`{m.group(1)}`]({m.group(2)}#L{line_of(m.group(2), m.group(1))})", text)


def render(text: str, results) -> str:
    """Replace each <!-- bench:NAME --> ... <!-- /bench:NAME --> block's body; refresh code links."""
    for name, body in blocks(results).items():
        pat = re.compile(rf"(<!-- bench:{re.escape(name)} -->\n).*?(<!-- /bench:{re.escape(name)} -->)", re.S)
        text = pat.sub(lambda m: m.group(1) + body + "\n" + m.group(2), text)
    return fix_links(text)


def write_readme(results, readme: Path):
    readme.write_text(render(readme.read_text(), results))
