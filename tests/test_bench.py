"""README.md's measured tables are exactly what bench/run.py last wrote to bench/results.json."""
import json

from bench import render
from conftest import ROOT

RESULTS = ROOT / "bench" / "results.json"


def _results():
    return json.loads(RESULTS.read_text()) if RESULTS.is_file() else {}


def test_readme_tables_match_bench_results():
    text = (ROOT / "README.md").read_text()
    for name in render.blocks({}):
        assert f"<!-- bench:{name} -->" in text and f"<!-- /bench:{name} -->" in text, name
    assert render.render(text, _results()) == text, "README tables differ from bench/results.json: " \
        "run `python bench/run.py --render` (or the bench itself)"


def test_a_hand_edited_number_is_caught():
    results = {"speed": {"boot_iter_ms": 300.0, "boot_floor_ms": 250.0, "boot_ratio": 1.2, "dkdm_iter_ms": 60.0,
                         "dkdm_floor_ms": 50.0, "dkdm_ratio": 1.2, "dkdm_T100_iter_ms": 59.0,
                         "dkdm_T1000_over_T100": 1.02, "date": "2026-01-01"}}
    text = render.render("<!-- bench:speed -->\n<!-- /bench:speed -->", results)
    assert "1.20×" in text and render.render(text, results) == text
    assert render.render(text.replace("1.20×", "1.05×"), results) != text.replace("1.20×", "1.05×")
