"""evaluate.py at paper scale: each process turns its samples into features batch by batch and only features
(and the grid's few images) are gathered, kept by a row or written to the teacher cache, so memory follows
--batch, not n; --save-images writes the same PNGs, bitwise, on one process and on two (torchrun, the strict
distributed mode)."""

import json
import os
import subprocess
import sys
import weakref

import numpy as np
import pytest
from safetensors import safe_open

import evaluate as E
import runkit

from conftest import ROOT
from test_strict_dist import torchrun


def image_like(x, shape):
    """Is x a stack of images of this shape (a tensor or array N x C x H x W)?"""
    return hasattr(x, "shape") and tuple(x.shape[1:]) == tuple(shape)


def test_no_row_cache_or_grid_keeps_more_than_a_batch_of_images(tmp_path, monkeypatch):
    live, most = weakref.WeakSet(), [0]  # the sample batches still referenced anywhere
    gathered, teacher_sampler, score, gather = [], E.teacher_sampler, E.Scorer.__call__, runkit.gather

    def tracked_sampler(*a, **k):
        sample = teacher_sampler(*a, **k)

        def tracked(seeds):
            images = sample(seeds)
            live.add(images)
            return images

        return tracked

    def counting_score(self, images, texts=None):
        most[0] = max(most[0], len(live))
        return score(self, images, texts)

    monkeypatch.setattr(E, "teacher_sampler", tracked_sampler)
    monkeypatch.setattr(E.Scorer, "__call__", counting_score)
    monkeypatch.setattr(runkit, "gather", lambda obj, world=1: gathered.append(obj) or gather(obj, world))
    argv = ["--teacher", "gmm", "--nfe", "1", "2", "--n", "72", "--batch", "8", "--features", "digits", "pixels"]
    argv += ["--cache", str(tmp_path / "c"), "--grid", str(tmp_path / "g.png"), "--json", str(tmp_path / "a.json")]
    assert E.main(argv) == 0
    assert most[0] == 1  # when a batch is scored, no earlier batch of samples is alive
    assert len(gathered) == 2
    for values, seconds, kept in gathered:  # what a process hands on: a value per sample, 16 images
        assert set(values) == {"digits", "pixels", "probs"} and all(
            len(v) == 72 and v.ndim == 2 for v in values.values()
        )
        assert len(kept) == E.GRID_COLUMNS and all(im.shape == (1, 8, 8) for im in kept.values())
    for f in (tmp_path / "c").iterdir():
        with safe_open(str(f), framework="pt") as st:
            stacks = {k: st.get_tensor(k).shape for k in st.keys() if image_like(st.get_tensor(k), (1, 8, 8))}
        assert stacks == {"grid": (E.GRID_COLUMNS, 1, 8, 8)}
    monkeypatch.setattr(E, "save_grid", lambda rows, path: gathered.append(rows))
    assert E.main(argv) == 0  # from the cache: the rows hold the grid's images only
    assert [(label, tuple(images.shape)) for label, images in gathered[-1]] == [
        ("ddim-2", (E.GRID_COLUMNS, 1, 8, 8)),
        ("ddim-1", (E.GRID_COLUMNS, 1, 8, 8)),
    ]


def test_a_record_scores_the_samples_against_the_reference_not_the_reverse():
    """precision = the share of samples inside the reference's manifold, recall = the share of the reference
    inside the samples': samples covering one of two reference modes have precision 1, recall 1/2."""
    rng = np.random.default_rng(0)
    ref = np.concatenate([rng.standard_normal((50, 2)), rng.standard_normal((50, 2)) + 100])
    samples = ref[:50]  # the first mode
    (record,) = E.evaluate_samples({"pixels": samples}, {"pixels": ref}, {"name": "one mode"})
    assert (record["precision"], record["recall"]) == (1.0, 0.5)
    assert (record["n"], record["n_ref"]) == (50, 100)


def test_save_images_are_the_same_on_one_and_two_processes(tmp_path):
    args = ["--teacher", "gmm", "--nfe", "3", "--num-samples", "21", "--batch", "4", "--features", "pixels"]
    one, two = tmp_path / "one", tmp_path / "two"
    assert E.main([*args, "--save-images", str(one), "--json", str(tmp_path / "one.json")]) == 0
    p = torchrun(ROOT / "evaluate.py", *args, "--save-images", two, "--json", tmp_path / "two.json", timeout=240)
    assert p.returncode == 0, p.stderr[-3000:]
    files = sorted(f.relative_to(one) for f in one.rglob("*.png"))
    assert [str(f) for f in files] == [f"ddim-3/{s:06d}.png" for s in range(21)]
    assert files == sorted(f.relative_to(two) for f in two.rglob("*.png"))
    assert all((one / f).read_bytes() == (two / f).read_bytes() for f in files)
    a, b = (json.loads((tmp_path / f"{k}.json").read_text()) for k in ("one", "two"))
    for x, y in zip(a, b, strict=True):
        assert x["fid"] == pytest.approx(y["fid"], rel=1e-6) and x["n"] == y["n"] == 21


def test_memory_bench_child_runs(tmp_path):
    """bench/eval_memory.py's child (the `eval-memory` bench row) on 32 samples: the features of each, its peak."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MALLOC_MMAP_THRESHOLD_": "131072"}
    argv = [sys.executable, "bench/eval_memory.py", "--child", "32", "--keep-samples"]
    p = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    row = json.loads(p.stdout.strip().splitlines()[-1])
    assert row["n"] == 32 and row["samples_kept"] and row["peak_rss_mb"] >= row["before_mb"] > 0
