"""README.md and docs/*.md: their measured tables are exactly what bench/run.py last wrote to
bench/results.json, and every link in them (code lines, files, images, headings) resolves."""

import json
import re

from bench import render

from conftest import ROOT


RESULTS = ROOT / "bench" / "results.json"
MD_LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")


def _results():
    return json.loads(RESULTS.read_text()) if RESULTS.is_file() else {}


def slug(heading: str) -> str:
    """GitHub's anchor of a markdown heading."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(path):
    return {slug(m.group(1)) for m in re.finditer(r"^#+ (.*)$", path.read_text(), re.M)}


def test_tables_match_bench_results():
    texts = {name: (ROOT / name).read_text() for name in render.FILES}
    for block in render.blocks({}):
        assert any(f"<!-- bench:{block} -->" in t and f"<!-- /bench:{block} -->" in t for t in texts.values()), block
    for name, text in texts.items():
        assert render.render(text, _results(), (ROOT / name).parent) == text, (
            f"{name}: tables or code links differ from bench/results.json and the code: "
            "run `python bench/run.py --render`"
        )


def test_every_link_resolves():
    for name in render.FILES:
        path = ROOT / name
        for target in MD_LINK.findall(path.read_text()):
            if target.startswith(("http://", "https://")):
                continue
            file, _, anchor = target.partition("#")
            dest = (path.parent / file).resolve() if file else path
            assert dest.exists(), f"{name}: link to {target}: no such file"
            if anchor and dest.suffix == ".md":
                assert anchor in anchors(dest), f"{name}: link to {target}: no such heading"
            elif anchor:
                assert re.fullmatch(r"L\d+", anchor), f"{name}: link to {target}: not a line anchor"


def test_a_hand_edited_number_is_caught():
    results = {
        "speed": {
            "boot_iter_ms": 300.0,
            "boot_floor_ms": 250.0,
            "boot_ratio": 1.2,
            "dkdm_iter_ms": 60.0,
            "dkdm_floor_ms": 50.0,
            "dkdm_ratio": 1.2,
            "dkdm_T100_iter_ms": 59.0,
            "dkdm_T1000_over_T100": 1.02,
            "date": "2026-01-01",
        }
    }
    text = render.render("<!-- bench:speed -->\n<!-- /bench:speed -->", results)
    assert "1.20×" in text and render.render(text, results) == text
    assert render.render(text.replace("1.20×", "1.05×"), results) != text.replace("1.20×", "1.05×")


def test_readme_stays_a_tutorial_of_at_most_2500_words():
    """Words outside code blocks (tables included); the rest lives in docs/."""
    prose = re.sub(r"```.*?```", "", (ROOT / "README.md").read_text(), flags=re.S)
    assert len(prose.split()) <= 2500
