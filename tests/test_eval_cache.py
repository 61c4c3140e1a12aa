"""evaluate.py keeps the teacher's samples: a second evaluation of the same teacher rows (same
teacher weights, sampler, NFE, n, seed, w) samples nothing and scores exactly the same images;
throughput is printed with 3 significant figures."""

import json

import pytest

import evaluate as E
import teachers


def records(path):
    return json.loads(path.read_text())


def test_teacher_rows_come_from_the_cache(tmp_path, monkeypatch, capsys):
    argv = ["--teacher", "gmm", "--nfe", "1", "3", "--n", "40", "--features", "pixels", "--cache", str(tmp_path / "c")]
    assert E.main([*argv, "--json", str(tmp_path / "a.json")]) == 0
    files = sorted(p.name for p in (tmp_path / "c").iterdir())
    assert len(files) == 2 and files[0].startswith("gmm-ddim1-n40-seed0-") and files[0].endswith(".safetensors")
    capsys.readouterr()
    with monkeypatch.context() as m:
        m.setattr(teachers, "ddim", lambda *a, **k: pytest.fail("the teacher was sampled"))
        assert E.main([*argv, "--json", str(tmp_path / "b.json")]) == 0
    assert "samples' features from " in capsys.readouterr().out
    assert records(tmp_path / "b.json") == records(tmp_path / "a.json")  # the same images, the same numbers
    # another seed or another w is another row: sampled again, and cached beside the first
    calls = []
    real_ddim = teachers.ddim
    monkeypatch.setattr(teachers, "ddim", lambda *a, **k: calls.append(1) or real_ddim(*a, **k))
    assert E.main([*argv, "--seed", "1"]) == 0
    assert E.main([*argv, "--w", "2"]) == 0
    assert len(calls) > 0 and len(list((tmp_path / "c").iterdir())) == 6
    calls.clear()
    assert E.main([*argv, "--cache", "off"]) == 0 and len(calls) > 0


def test_run_directory_reuses_teacher_rows(tmp_path, monkeypatch, capsys):
    import boot

    run = tmp_path / "boot-gmm"  # a real (tiny) finished run
    assert (
        boot.main(
            ["--teacher", "gmm", "--iters", "2", "--batch", "4", "--preview", "0", "--check", "0", "--out", str(run)]
        )
        == 0
    )
    argv = ["--run", str(run), "--nfe", "1", "2", "--n", "40", "--features", "pixels"]
    assert E.main([*argv, "--json", str(tmp_path / "a.json")]) == 0
    assert len(list((run / "teacher-samples").iterdir())) == 2
    monkeypatch.setattr(teachers, "ddim", lambda *a, **k: pytest.fail("the teacher was sampled"))
    assert E.main([*argv, "--json", str(tmp_path / "b.json")]) == 0
    a, b = records(tmp_path / "a.json"), records(tmp_path / "b.json")
    drop = lambda rs: [{k: v for k, v in r.items() if k not in ("images_per_s", "speedup")} for r in rs]  # noqa: E731
    assert drop(a) == drop(b)  # teacher rows and the (re-sampled, deterministic) student row alike
    assert out_has_sig3(capsys.readouterr().out)


def out_has_sig3(out):
    rows = [line for line in out.splitlines() if line.startswith("| gmm |")]
    cells = [row.split("|")[-3].strip() for row in rows]  # the images/s column
    return rows and all(c not in ("0", "–") for c in cells)


@pytest.mark.parametrize(
    "x, text",
    [
        (0.012345, "0.0123"),
        (0.4, "0.400"),
        (4.567, "4.57"),
        (45.67, "45.7"),
        (456.7, "457"),
        (12345.0, "12300"),
        (None, "–"),
    ],
)
def test_three_significant_figures(x, text):
    assert E.sig3(x) == text
