"""The command lines a newcomer meets first: `--help` of every script answers without importing
torch; the dry-run shows resolved values instead of nulls; one `sample RUN` shape in both
training scripts."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest


ROOT = Path(__file__).resolve().parents[1]

# Runs a script as __main__ and reports, after it exits, whether torch was imported.
PROBE = """
import json, runpy, sys
sys.argv = [sys.argv[1], *sys.argv[2:]]
sys.path.insert(0, {root!r})
try:
    runpy.run_path(sys.argv[0], run_name="__main__")
    code = 0
except SystemExit as e:
    code = e.code or 0
print(json.dumps({{"code": code, "torch": "torch" in sys.modules, "diffusers": "diffusers" in sys.modules}}),
      file=sys.stderr)
"""


def probe(script, *args):
    p = subprocess.run(
        [sys.executable, "-c", PROBE.format(root=str(ROOT)), str(ROOT / script), *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )
    return p.stdout, p.stderr.splitlines()[:-1], json.loads(p.stderr.splitlines()[-1])


@pytest.mark.parametrize("script", ["boot.py", "dkdm.py", "evaluate.py"])
def test_help_answers_without_torch_and_is_the_scripts_own_parser(script):
    """boot.py and dkdm.py keep their config last, below the method: --help reads it from their source
    (cli.help_from_source) and prints what their own parser prints, without importing torch or diffusers."""
    out, _, facts = probe(script, "--help")
    assert facts == {"code": 0, "torch": False, "diffusers": False}
    module = script.removesuffix(".py")
    own = subprocess.run(
        [
            sys.executable,
            "-c",
            f"import sys; sys.argv = ['{script}']; import {module}; print({module}.parser().format_help(), end='')",
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
    ).stdout
    assert out.startswith(f"usage: {script}") and out == own


def test_boot_dry_run_without_nulls_where_a_default_applies(tmp_path, monkeypatch, capsys):
    import boot

    def dry(*args):
        code = boot.main([*args, "--dry-run"])
        out, err = capsys.readouterr()
        return code, out, [ln for ln in err.splitlines() if ln.strip()]

    monkeypatch.chdir(ROOT)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    code, out, _ = dry()
    # the memory estimate builds the networks from their configs (diffusers)
    assert code == 0 and "memory_estimate" in json.loads(out)
    cfg = json.loads(out)
    assert cfg["w"] == 1.0 and cfg["iters"] == 3000 and cfg["out"] == "runs/boot-digits"
    assert [k for k, v in cfg.items() if v is None] == ["model_id", "stage1_run", "prompts", "w_max", "minutes"]
    (tmp_path / "p.txt").write_text("a red cube\n")
    sd21 = json.loads(dry("--teacher", "sd21", "--prompts", str(tmp_path / "p.txt"))[1])
    assert sd21["w"] == 7.5  # Table 3
    # a text-to-image teacher without prompts: refused before any weight is read, the dry-run too
    code, _, err = dry("--teacher", "sd21")
    assert code == 2 and err == [
        "error: text-to-image teacher 'sd21' needs --prompts FILE (one prompt per line; tools/prompts.py builds one)"
    ]
    # bad input is still one line and exit code 2
    code, _, err = dry("--teacher", "gmm", "--delta", "0")
    assert code == 2 and len(err) == 1 and err[0].startswith("error: need 0 < delta")


def test_registry_guidance_shown_by_dry_run_is_the_loaded_teachers(tiny_sd_dir):
    import boot
    import teachers

    for name in ("digits", "gmm"):
        t = teachers.load_teacher(name)
        assert (t.default_guidance or 1.0) == boot.REGISTRY_W[name], name
    assert teachers.load_teacher(str(tiny_sd_dir)).default_guidance == boot.REGISTRY_W["sd21"]


def test_usage_lines_and_help_text():
    boot_help = probe("boot.py", "--help")[0]
    assert "boot.py sample RUN" in boot_help.split("\n\n")[0]  # in the usage block
    dkdm_help = probe("dkdm.py", "--help")[0]
    assert "dkdm.py sample RUN" in dkdm_help.split("\n\n")[0]
    assert "--teacher ddpm-cifar10 \\\n        --out" in dkdm_help  # the torchrun example keeps its continuation


def test_sample_subcommand_of_both_scripts(tmp_path, capsys):
    import boot
    import dkdm

    (tmp_path / "config.json").write_text("{}")  # a run directory whose training never finished
    for main in (boot.main, dkdm.main):
        assert main(["sample", str(tmp_path)]) == 2
        assert "has no student/generator.json" in capsys.readouterr().err


# Runs every entry point as __main__ in one interpreter with an argument none of them knows.
EVERY = """
import contextlib, io, json, runpy, sys
sys.path.insert(0, {root!r})
seen = {{}}
for script in {scripts!r}:
    sys.argv, err = [script, "--no-such-flag"], io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            runpy.run_path(script, run_name="__main__")
            code = 0
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else 1
    seen[script] = [code, err.getvalue().strip().splitlines()]
print(json.dumps(seen))
"""
ENTRY_POINTS = [
    "boot.py",
    "dkdm.py",
    "evaluate.py",
    "teachers.py",
    "assets/train.py",
    "tools/prompts.py",
    *sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / "bench").glob("*.py") if p.name != "__init__.py"),
]


def test_every_entry_point_refuses_an_unknown_argument_in_one_line():
    """boot.py, dkdm.py, evaluate.py, teachers.py, assets/train.py, tools/prompts.py and every bench/*.py: an
    argument they do not know is one line and exit code 2 (`python teachers.py --sample gmm` printed the registry
    and exited 0)."""
    p = subprocess.run(
        [sys.executable, "-c", EVERY.format(root=str(ROOT), scripts=[str(ROOT / s) for s in ENTRY_POINTS])],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    seen = json.loads(p.stdout.strip().splitlines()[-1])
    assert len(seen) == len(ENTRY_POINTS) >= 12
    for script, (code, err) in seen.items():
        assert code == 2 and len(err) == 1, (script, code, err)
        assert "--no-such-flag" in err[0] or "runs through bench/run.py" in err[0] or "required" in err[0], err
