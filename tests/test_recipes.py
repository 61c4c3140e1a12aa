"""docs/recipes.md: a card for every registry teacher, and every command on it parses.

Training commands run with --dry-run (at their torchrun process count) on tiny stand-ins of the same family, the
registry name kept and the stand-in passed as --model-id, as a user without the weights would plan them; `sample`
and evaluate.py commands go through their own parsers; tools/prompts.py runs on a small .jsonl stand-in of
diffusiondb's metadata and a COCO caption file.
"""

import json
import sys
from pathlib import Path

import pytest

import evaluate
import teachers
from bench import recipes, render
from cli import UserError
from pipelines import students

from conftest import tiny_ddpm_dir


ROOT = Path(__file__).resolve().parents[1]
CARDS = recipes.cards(recipes.RECIPES.read_text())


def test_every_registry_teacher_has_a_card_with_its_table():
    assert list(CARDS) == list(teachers.REGISTRY) == list(render.RECIPE_CARDS)
    text = recipes.RECIPES.read_text()
    for name, lines in CARDS.items():
        assert f"<!-- bench:recipe-{name} -->" in text, name
        assert any(recipes.is_training(*recipes.split(ln)[:2]) for ln in lines), f"{name}: no training command"
        assert any("--nnodes 2" in ln for ln in lines), f"{name}: no command for many nodes"


def test_split_reads_the_process_count_from_torchrun():
    assert recipes.split("python boot.py --teacher gmm") == ("boot.py", ["--teacher", "gmm"], 1)
    assert recipes.split("torchrun --standalone --nproc_per_node=8 dkdm.py --student vit")[2] == 8
    line = "torchrun --nnodes 2 --nproc-per-node 8 --rdzv-id x boot.py --teacher sd21  # a comment"
    assert recipes.split(line) == ("boot.py", ["--teacher", "sd21"], 16)


def test_gpu_hours_are_read_from_the_dry_runs_time_estimate(tmp_path):
    """The cards' GPU-hours column takes them from costs.measured_time's own text (a format change fails here)."""
    import costs

    record = {"device": "G", "date": "2026-01-02", "boot_sd21": {"ms_iter_range": [90, 110], "batch": 4}}
    (tmp_path / "r.json").write_text(json.dumps({"gpu": {"G": record}}))
    estimate = costs.measured_time("boot_sd21", 9000, 8, 8, tmp_path / "r.json")
    assert recipes.hours(estimate) == [{"device": "G", "gpu_hours": "3.6-4.4", "date": "2026-01-02"}]
    assert recipes.hours("no GPU has measured this run yet") == []


@pytest.fixture(scope="module")
def standins(tmp_path_factory, tiny_sd_dir, tiny_if_dirs):
    from bench import gpu

    root = tmp_path_factory.mktemp("recipes")
    (root / "prompts.txt").write_text("a photograph of an astronaut riding a horse\n")
    (root / "metadata.jsonl").write_text("".join(json.dumps({"prompt": f"prompt {k}"}) + "\n" for k in range(5)))
    coco = {"annotations": [{"caption": "Prompt 1."}]}
    for name in ("captions_train2014.json", "captions_val2014.json"):
        (root / name).write_text(json.dumps(coco))
    return {
        "root": root,
        "teachers": {
            "ddpm-cifar10": str(tiny_ddpm_dir(root / "cifar")),
            "ldm-celebahq": gpu.build("ldm-celebahq", root, tiny=True),
            "sd21": str(tiny_sd_dir),
            "if": str(tiny_if_dirs[0]),
            "if-2": str(tiny_if_dirs[1]),
        },
        **{name: str(root / name) for name in ("prompts.txt", "captions_train2014.json", "captions_val2014.json")},
        "metadata.parquet": str(root / "metadata.jsonl"),  # pyarrow is optional: the .jsonl stand-in
    }


@pytest.mark.parametrize(
    "card, line", [(card, line) for card, lines in CARDS.items() for line in lines], ids=lambda v: v[:60]
)
def test_every_command_parses(card, line, standins, monkeypatch, capsys):
    monkeypatch.chdir(standins["root"])
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    script, argv, world = recipes.split(line)
    argv = [standins.get(a, a) for a in argv]
    if script in ("boot.py", "dkdm.py") and argv[:1] == ["sample"]:
        with pytest.raises(UserError, match="does not exist"):  # the flags parse; the run is not there yet
            students.sample_command(script.removesuffix(".py"), argv[1:])
    elif script in ("boot.py", "dkdm.py"):
        stage2 = "--stage" in argv and argv[argv.index("--stage") + 1] == "2"
        replace = {
            **standins,
            "teachers": {**standins["teachers"], "if": standins["teachers"]["if-2" if stage2 else "if"]},
        }
        plan = ["--dry-run"] if "--dry-run" in argv else []
        if stage2:  # the dry-run checks that the stage-1 run is finished: it is not, here
            with pytest.raises(UserError, match="stage-1"):
                recipes.dry_run(script, [a for a in argv if a not in plan], world, replace)
            return
        shown = recipes.dry_run(script, [a for a in argv if a not in plan], world, replace)
        assert shown["world_size" if script == "dkdm.py" else "teacher"] and isinstance(shown["memory_estimate"], dict)
    elif script == "evaluate.py":
        evaluate.parser().parse_args(argv)
    elif script == "tools/prompts.py":
        sys.path.insert(0, str(ROOT / "tools"))
        import prompts

        assert prompts.main(argv + ["--n", "4"]) == 0  # the default 1,000,000 of 4 prompts here
        assert "prompt 1\n" not in (standins["root"] / "prompts.txt").read_text()  # "Prompt 1." is a COCO caption
    else:
        pytest.fail(f"{card}: a command of an unknown script: {line}")
