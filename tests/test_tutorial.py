"""docs/tutorial.md against the code: its worked iterations are recomputed by bench/tutorial.py with the
method files' own functions and compared with the numbers the page shows (bench/results.json, rendered by
tests/test_bench.py's check), and every exercise command on the page is one whose answer was measured."""

import json
import re

import pytest

from bench import tutorial
from bench.run import BY_NAME

from conftest import ROOT


RESULTS = json.loads((ROOT / "bench" / "results.json").read_text())


def close(a, b, path="") -> list:
    """Where two JSON-like values differ (numbers to 1e-4, relative or absolute)."""
    if isinstance(a, dict):
        return [d for k in a.keys() | b.keys() for d in close(a.get(k), b.get(k), f"{path}.{k}")]
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        return [d for k, (u, v) in enumerate(zip(a, b)) for d in close(u, v, f"{path}[{k}]")]
    if isinstance(a, float) or isinstance(b, float):
        ok = isinstance(a, (int, float)) and isinstance(b, (int, float)) and abs(a - b) <= 1e-4 * max(1, abs(b))
        return [] if ok else [f"{path}: {a} != {b}"]
    return [] if a == b else [f"{path}: {a} != {b}"]


@pytest.mark.parametrize(
    "key,compute",
    [
        ("boot", lambda: tutorial.boot_iteration()),
        ("boot_delta01", lambda: tutorial.boot_iteration(0.01)),
        ("dkdm", tutorial.dkdm_iteration),
    ],
)
def test_the_worked_iterations_are_what_the_code_computes(key, compute):
    stored = RESULTS["tutorial"][key]
    assert not close(compute(), stored), close(compute(), stored)


def test_the_worked_boot_iteration_adds_up():
    """The page's BOOT numbers obey the equations they stand for (recomputed here from the shown values)."""
    w = RESULTS["tutorial"]["boot"]
    dl = 1 - w["alpha_t"] * w["sigma_s"] / (w["sigma_t"] * w["alpha_s"])
    assert abs(dl - w["delta_lambda"]) < 1e-4
    for k in range(2):
        assert abs(w["alpha_t"] * w["y_t"][k] + w["sigma_t"] * w["eps"][k] - w["x_t"][k]) < 1e-4
        assert abs(w["y_t"][k] + dl * (w["f_t"][k] - w["y_t"][k]) - w["y_euler"][k]) < 1e-4
        heun = w["y_t"][k] + dl * ((w["f_t"][k] + w["f_s"][k]) / 2 - w["y_t"][k])
        assert abs(heun - w["y_heun"][k]) < 1e-4
    assert w["weight"] == pytest.approx(1 / w["delta"] ** 2)
    assert w["loss"] == pytest.approx(w["boot_step_loss"], rel=1e-4)


def test_every_exercise_is_one_measured_command_under_five_cpu_minutes():
    """Each numbered exercise names one command, measured by bench/run.py (its answer on the results page) and
    under 5 CPU-minutes; every other command the section names (the runs compared with) is measured too."""
    text = (ROOT / "docs" / "tutorial.md").read_text()
    section = text[text.index("## Exercises") :]
    measured = {" ".join(BY_NAME[n].train): n for n in BY_NAME if n.startswith("ex-")}

    def name_of(command):
        name = measured.get(" ".join(command.split()).removeprefix("python "))
        assert name, f"a command on the page that bench/run.py does not measure: {command}"
        return name

    items = re.findall(r"^\d+\. \*\*.*?(?=^\d+\. \*\*|\Z)", section, re.M | re.S)
    assert len(items) >= 6
    for item in items:
        (command,) = re.findall(r"`(python (?:boot|dkdm)\.py [^`]+)`", item)
        assert RESULTS[name_of(command)]["cpu_s"] <= 300, (command, RESULTS[name_of(command)]["cpu_s"])
    for command in re.findall(r"`(python (?:boot|dkdm)\.py [^`]+)`", section):
        assert name_of(command) in RESULTS
