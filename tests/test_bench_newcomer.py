"""The first screen's figures come from bench records: how they render, and the size walk."""

import os

from bench import newcomer, render


def rec(**kw):
    return {"date": "2026-01-01", **kw}


RESULTS = {
    "newcomer": {
        "help": rec(
            cpu_s={"boot.py": 0.061, "dkdm.py": 0.06, "evaluate.py": 0.05, "teachers.py": 0.05, "import torch": 1.9}
        ),
        "install": rec(venv_gb=6.31, torch_and_cuda_gb=5.5, torch="2.14.1+cu130", cuda_build=True),
        "boot_default": rec(
            full=False,
            iters=30,
            ms_per_iter=250.0,
            wall_s=40.0,
            estimate_min=13.2,
            load_before=0.3,
            load_after=0.4,
            cores=2,
        ),
        "tests": rec(
            wall_s=300.0, summary="200 passed, 9 deselected", returncode=0, load_before=5.0, load_after=5.0, cores=2
        ),
    }
}


def test_first_screen_figures_render_from_the_records():
    text = render.table_newcomer(RESULTS)
    assert "**about 13 min** on 2 CPU cores" in text and "3,000 iterations × 250 ms" in text
    assert "**6.3 GB**, 5.5 GB of it torch 2.14.1+cu130" in text and "**0.06 s** of CPU" in text
    assert "other jobs shared" not in text  # measured at low load: no label
    tests = render.table_tests_time(RESULTS)
    assert "**5 min**" in tests and "load average 5.0" in tests  # measured under load: labelled
    full = {
        "newcomer": {
            "boot_default": rec(
                full=True, iters=3000, ms_per_iter=300.0, wall_s=960.0, load_before=3.0, load_after=3.0, cores=2
            )
        }
    }
    text = render.table_newcomer(full)
    assert "**16 min** on 2 CPU cores" in text and "load average 3.0" in text
    assert "not measured yet" in render.table_newcomer({}) and "not measured yet" in render.table_tests_time({})
    # no timing at the README's thread setting yet: the bench's own full default run, said how it ran
    bench_run = {
        "boot-default": {
            "date": "2026-01-02",
            "last_metrics": {
                "step": 3000,
                "elapsed_s": 1500.0,
                "ms_teacher": 135.0,
                "ms_student": 285.0,
                "ms_other": 5.0,
            },
        }
    }
    text = render.table_newcomer(bench_run)
    assert "**25 min** of training (3,000 iterations × 425 ms)" in text and "OMP_NUM_THREADS=1" in text


def test_install_size_walk_counts_files_once_and_skips_links(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "x.bin").write_bytes(b"0" * 1000)
    (tmp_path / "y.bin").write_bytes(b"0" * 24)
    os.symlink(tmp_path / "a" / "x.bin", tmp_path / "link.bin")
    os.symlink(tmp_path / "a", tmp_path / "linkdir")
    assert newcomer._tree_bytes(tmp_path) == 1024
