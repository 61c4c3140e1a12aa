"""tools/prompts.py, the prompt file a text-to-image preset trains on, offline on small stand-ins of diffusiondb's
metadata (a .jsonl and a .csv with a prompt column; the parquet itself where pyarrow is installed) and of COCO-2014's
caption files: N unique prompts, de-duplicated after normalising, no COCO caption among them, the same file for the
same inputs and seed."""

import contextlib
import csv
import io
import json
import sys
import types
import unicodedata

import pytest

from conftest import ROOT


sys.path.insert(0, str(ROOT / "tools"))
import prompts  # noqa: E402


ROWS = [
    "A castle on a hill, oil painting",
    "a castle on a hill,  oil painting",  # the same prompt, other case and spacing
    "A man riding a horse on a beach.",  # a COCO caption, but for case and the full stop
    "cyberpunk city at night, neon",
    "ｃｙｂｅｒｐｕｎｋ city at night, neon",  # fullwidth letters: the same under NFKC
    "",
    "portrait of a cat wearing a crown",
    "two dogs playing in the snow",  # a COCO caption, exactly
    "a red cube on a blue sphere",
    "   ",
    "an astronaut riding a horse, photo",
]
COCO = {"annotations": [{"caption": "a man riding a horse on a beach"}, {"caption": "Two dogs  playing in the snow."}]}
# what must stay: the first spelling of each prompt that is no caption, whitespace collapsed, in source order
KEPT = [
    "A castle on a hill, oil painting",
    "cyberpunk city at night, neon",
    "portrait of a cat wearing a crown",
    "a red cube on a blue sphere",
    "an astronaut riding a horse, photo",
]


def run(*args):
    """tools/prompts.py's main in this process (as a process: tests/test_cli_light.py's every-entry-point test)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = prompts.main([str(a) for a in args])
        except SystemExit as e:  # argparse
            code = e.code
    return types.SimpleNamespace(returncode=code, stdout=out.getvalue(), stderr=err.getvalue())


@pytest.fixture
def inputs(tmp_path):
    (tmp_path / "meta.jsonl").write_text(
        "".join(json.dumps({"prompt": p, "seed": k}) + "\n" for k, p in enumerate(ROWS))
    )
    with open(tmp_path / "meta.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["image_name", "prompt"])
        w.writerows([f"{k}.png", p] for k, p in enumerate(ROWS))
    (tmp_path / "captions_val2014.json").write_text(json.dumps(COCO))
    return tmp_path


def test_normalised_unique_prompts_without_coco_captions(inputs):
    for source in ("meta.jsonl", "meta.csv"):
        out = inputs / f"{source}.txt"
        p = run("--source", inputs / source, "--coco", inputs / "captions_val2014.json", "--n", 5, "--out", out)
        assert p.returncode == 0, p.stderr
        assert out.read_text().splitlines() == KEPT, source
        assert "5 prompts" in p.stdout and "2 of them COCO-2014 captions" in p.stdout


def test_the_draw_is_seeded_and_keeps_the_source_order(inputs):
    args = ["--source", inputs / "meta.jsonl", "--coco", inputs / "captions_val2014.json", "--n", 3]
    files = {}
    for seed, name in ((0, "a"), (0, "b"), (1, "c")):
        assert run(*args, "--seed", seed, "--out", inputs / name).returncode == 0
        files[name] = (inputs / name).read_text().splitlines()
    assert files["a"] == files["b"] and len(set(files["a"])) == 3
    assert all(KEPT.index(x) < KEPT.index(y) for x, y in zip(files["a"], files["a"][1:]))  # the source's order
    chosen = prompts.build(ROWS, [c["caption"] for c in COCO["annotations"]], 3, 1)[0]  # the same draw in-process
    assert files["c"] == chosen and set(chosen) <= set(KEPT)


def test_normal_form():
    assert prompts.normalise("  Two dogs\tplaying IN the snow. ") == "two dogs playing in the snow"
    assert prompts.normalise("ｃａｔ") == "cat" == unicodedata.normalize("NFKC", "ｃａｔ")


@pytest.mark.parametrize(
    "case,args,message",
    [
        ("too many", ["--n", 6], "--n 6 is more than the 5 unique prompts left without COCO captions"),
        ("no source", ["--source", "missing.jsonl"], "--source 'missing.jsonl' does not exist"),
        ("no captions", ["--coco", "missing.json"], "captions file 'missing.json' does not exist"),
        ("other format", ["--source", "captions_val2014.json"], "expected a .parquet, .jsonl or .csv file"),
        ("unknown flag", ["--shuffle"], "unrecognized arguments: --shuffle"),
    ],
)
def test_bad_input_is_one_line(inputs, case, args, message, monkeypatch):
    monkeypatch.chdir(inputs)
    base = {"--source": "meta.csv", "--coco": "captions_val2014.json", "--n": "2", "--out": "out.txt"}
    for k, v in zip(args[::2], args[1::2]):
        base[k] = v
    argv = [x for kv in base.items() for x in kv] + ([] if len(args) % 2 == 0 else args)
    p = run(*argv)  # as a process too: tests/test_cli_light.py's every-entry-point test
    err = p.stderr.strip().splitlines()
    assert p.returncode == 2 and len(err) == 1 and message in err[0], (case, p.stderr)
    assert not (inputs / "out.txt").exists()


def test_parquet_needs_pyarrow_or_says_so(inputs, monkeypatch):
    (inputs / "metadata.parquet").write_bytes(b"PAR1")
    if "pyarrow" not in sys.modules:
        monkeypatch.setitem(sys.modules, "pyarrow", None)  # as if not installed
        monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
        with pytest.raises(prompts.UserError, match="needs pyarrow: pip install pyarrow"):
            prompts.source_prompts(inputs / "metadata.parquet")


def test_diffusiondb_parquet(inputs):
    pa, pq = pytest.importorskip("pyarrow"), pytest.importorskip("pyarrow.parquet")
    pq.write_table(
        pa.table({"image_name": [f"{k}.png" for k in range(len(ROWS))], "prompt": ROWS}), inputs / "m.parquet"
    )
    assert prompts.source_prompts(inputs / "m.parquet") == [p for p in ROWS if p.strip()]
