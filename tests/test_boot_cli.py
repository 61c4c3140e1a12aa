"""boot.py end to end: smoke runs on every teacher family (tiny offline pipelines), kill and rerun,
a 2-process torchrun against 1 process, bad input, and the gmm student matching its teacher."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import boot
import runkit
import teachers
from pipelines import students

from conftest import tiny_ddpm_dir


ROOT = Path(__file__).resolve().parents[1]
TINY = ["--iters", "3", "--batch", "4", "--preview", "2", "--check", "4", "--log-every", "1"]


def env(**extra):
    e = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    return {**e, **extra}


def boot_cli(*args, check=True, **kw):
    p = subprocess.run(
        [sys.executable, str(ROOT / "boot.py"), *map(str, args)],
        capture_output=True,
        text=True,
        env=env(),
        cwd=kw.pop("cwd", ROOT),
        timeout=kw.pop("timeout", 300),
    )
    if check:
        assert p.returncode == 0, p.stderr[-3000:]
    return p


def boot_main(*args, capsys=None):
    """The same command line, run in this process (no interpreter start-up, imports already done)."""
    rc = boot.main([str(a) for a in args])
    return rc if capsys is None else (rc, capsys.readouterr())


def weights(run, key="model"):
    return runkit.load_checkpoint(Path(run) / "checkpoints" / "latest.pt")[key]


def assert_finished(run, steps):
    run = Path(run)
    info = json.loads((run / "student" / "generator.json").read_text())
    assert (run / "student" / "unet" / "config.json").is_file() and (run / "preview.png").is_file()
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert records[-1]["step"] == steps and all(k in records[-1] for k in ("ms_teacher", "ms_student", "ms_other"))
    assert json.loads((run / "config.json").read_text())["iters"] == steps
    return info


# --- bad input: one line on stderr, exit code 2, nothing written --------------------------------
BAD = {
    "t_min >= t_max": ["--teacher", "gmm", "--t-min", "0.9", "--t-max", "0.5"],
    "delta <= 0": ["--teacher", "gmm", "--delta", "0"],
    "negative delta": ["--teacher", "gmm", "--delta", "-0.1"],
    "unknown solver": ["--teacher", "gmm", "--solver", "rk4"],
    "stage 2 without a stage-1 run": ["--teacher", "if", "--stage", "2"],
    "stage 2 with a missing stage-1 run": ["--teacher", "if", "--stage", "2", "--stage1-run", "nope"],
    "missing prompts file": ["--teacher", "gmm", "--prompts", "missing.txt"],
    "unknown teacher": ["--teacher", "no-such-teacher"],
    "w-max without w": ["--teacher", "gmm", "--w-max", "3"],
    "prompts for a class teacher": ["--teacher", "gmm", "--prompts", "prompts.txt"],
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_is_one_line_and_writes_nothing(case, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "prompts.txt").write_text("a cat\n")
    assert boot.main(BAD[case]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    assert not (tmp_path / "runs").exists()


def test_batch_not_divisible_by_world_size(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("WORLD_SIZE", "2")  # checked before any process group is made
    assert boot.main(["--teacher", "gmm", "--batch", "3"]) == 2
    assert "not a positive multiple of the 2 processes" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


def test_text_teacher_without_prompts(tiny_sd_dir, tiny_if_dirs, tmp_path, monkeypatch, capsys):
    """Known from the registry or model_index.json before any weight is read (load_teacher never called), in the
    dry-run too; and prompts for a teacher known not to take them."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(teachers, "load_teacher", lambda *a, **k: pytest.fail("a teacher was loaded"))
    (tmp_path / "p.txt").write_text("a cat\n")
    for args in (
        ["--teacher", str(tiny_sd_dir)],
        ["--teacher", str(tiny_sd_dir), "--dry-run"],
        ["--teacher", "sd21", "--dry-run"],
        ["--teacher", "if", "--half", "--dry-run"],
        ["--teacher", str(tiny_if_dirs[0])],
        ["--teacher", "gmm", "--prompts", "p.txt", "--dry-run"],
        ["--teacher", "ddpm-cifar10", "--prompts", "p.txt"],
    ):
        assert boot.main(args) == 2, args
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and ("needs --prompts FILE" in err[0] or "--prompts does not apply" in err[0]), err
    assert not (tmp_path / "runs").exists()


def test_bad_input_from_the_command_line(tmp_path):
    p = boot_cli("--teacher", "gmm", "--solver", "rk4", check=False, cwd=tmp_path)
    assert p.returncode == 2 and p.stderr.strip() == "error: unknown solver 'rk4' (known: euler, heun)"
    assert not (tmp_path / "runs").exists()


def test_dry_run_prints_resolved_config_and_writes_nothing(tmp_path):
    (tmp_path / "p.txt").write_text("a cat\n")
    p = boot_cli("--teacher", "sd21", "--prompts", tmp_path / "p.txt", "--dry-run", cwd=tmp_path)
    cfg = json.loads(p.stdout)
    assert cfg["delta"] == 0.01 and cfg["weighting"] == "lambda" and cfg["out"] == "runs/boot-sd21"  # Table 3
    assert not (tmp_path / "runs").exists()


# --- smoke runs ---------------------------------------------------------------------------------
def test_gmm_smoke_and_one_step_sampling(tmp_path, capsys):
    run = tmp_path / "gmm"
    boot_cli("--teacher", "gmm", *TINY, "--out", run)
    info = assert_finished(run, 3)
    assert info["student"] == "small" and info["output"] == "sample"
    rc, out = boot_main("sample", run, "--label", "3", "--n", "4", "--out", tmp_path / "s.png", capsys=capsys)
    assert rc == 0 and (tmp_path / "s.png").is_file() and "4 one-step samples" in out.out
    rc, out = boot_main("sample", run, "--label", "12", capsys=capsys)
    assert rc == 2 and out.err.startswith("error: --label must lie in 0..9")


def test_eval_every_logs_the_proxy_at_its_steps(tmp_path):
    """--eval-every K: the proxy FD / KID of the EMA student in the records of steps K, 2K, ..., labelled,
    its time in ms_eval; the other records carry none."""
    run = tmp_path / "gmm"
    assert boot_main("--teacher", "gmm", *TINY, "--iters", "4", "--eval-every", "2", "--out", run) == 0
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "proxy_fd" in r] == [2, 4]
    for r in records[1::2]:
        assert (
            r["proxy_fd"] > 0 and r["ms_eval"] > 0 and r["proxy"].startswith("proxy: n=256 against 256 other samples")
        )


def test_digits_smoke_generator_loads(tmp_path):
    run = tmp_path / "digits"
    assert boot_main(*TINY, "--w", "2", "--w-max", "3", "--out", run) == 0
    info = assert_finished(run, 3)
    assert info["student"] == "copy" and info["guided"] and info["default_w"] == 2.0
    gen = students.ExportedStudent(run)
    x = gen.generate(torch.randn(5, 1, 8, 8), gen.label_cond(torch.arange(5)), 2.5)
    assert x.shape == (5, 1, 8, 8) and torch.isfinite(x).all() and gen.nfe == 1
    assert (
        boot_main(
            *TINY,
            "--student",
            "small",
            "--solver",
            "euler",
            "--weighting",
            "lambda",
            "--time-sampling",
            "progressive",
            "--loss",
            "huber",
            "--out",
            tmp_path / "small",
        )
        == 0
    )
    assert assert_finished(tmp_path / "small", 3)["output"] == "sample"


def test_lpips_loss_trains_offline(tmp_path, monkeypatch):
    """--loss lpips end to end on a pixel teacher, with a random AlexNet trunk standing in for the
    ImageNet weights (the lpips package ships its linear heads)."""
    import lpips

    net = lpips.LPIPS(net="alex", pnet_rand=True, verbose=False).eval().requires_grad_(False)
    monkeypatch.setattr(boot, "lpips_network", lambda device: net)
    assert boot_main("--teacher", "gmm", *TINY, "--loss", "lpips", "--out", tmp_path / "run") == 0
    assert assert_finished(tmp_path / "run", 3)["output"] == "sample"
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert all(r["loss"] > 0 for r in records)


def test_tiny_sd_latent_smoke(tiny_sd_dir, tmp_path, capsys):
    (tmp_path / "p.txt").write_text("a red cube\na blue ball\n\na green cone\n")
    run = tmp_path / "sd"
    assert boot_main("--teacher", tiny_sd_dir, "--prompts", tmp_path / "p.txt", *TINY, "--w", "3", "--out", run) == 0
    info = assert_finished(run, 3)
    assert info["latent"] and info["text"] and info["time_cond_dim"]
    rc, out = boot_main("sample", run, "--prompt", "a red cube", "--n", "2", capsys=capsys)
    assert rc == 0 and "2 one-step samples" in out.out and (run / "samples.png").is_file()
    assert boot_main("sample", run) == 2  # a text student needs --prompt


def test_tiny_if_both_stages(tiny_if_dirs, tmp_path, capsys):
    stage1, stage2 = tiny_if_dirs
    (tmp_path / "p.txt").write_text("a red cube\na blue ball\n")
    prompts = ["--prompts", tmp_path / "p.txt"]
    assert boot_main("--teacher", stage1, *prompts, *TINY, "--out", tmp_path / "if1") == 0
    assert_finished(tmp_path / "if1", 3)
    # a stage-II pipeline passed as stage I is refused, before anything is written
    assert boot_main("--teacher", stage2, *prompts, *TINY, "--out", tmp_path / "x") == 2
    assert not (tmp_path / "x").exists()
    assert (
        boot_main(
            "--teacher",
            stage2,
            "--stage",
            "2",
            "--stage1-run",
            tmp_path / "if1",
            *prompts,
            *TINY,
            "--out",
            tmp_path / "if2",
        )
        == 0
    )
    info = assert_finished(tmp_path / "if2", 3)
    assert info["stage"] == 2 and info["noise_level"] == 250 and info["sample_shape"] == [3, 16, 16]
    rc, out = boot_main("sample", tmp_path / "if2", "--prompt", "a red cube", "--n", "2", capsys=capsys)
    assert rc == 0 and "2 one-step samples" in out.out


def test_unet2dmodel_teacher_copy(tmp_path):
    """An unconditional UNet2DModel teacher (the ddpm-cifar10 family): the target time enters a new,
    zeroed timestep-type class embedding, so the copy equals the teacher at t_max at init."""

    tiny_ddpm_dir(tmp_path / "ddpm")
    teacher = teachers.load_teacher(str(tmp_path / "ddpm"), clip="none")
    cfg = boot.resolve(boot.BootConfig(teacher=str(tmp_path / "ddpm")))
    model, student = boot.make_student(teacher, cfg, None)
    eps = torch.randn(3, 3, 8, 8)
    y = boot.y_theta(model, student, eps, torch.tensor([0.0, 0.4, 0.9]))
    assert torch.allclose(y, teacher.x0(eps, torch.full((3,), cfg.t_max)), atol=1e-5)
    assert boot_main("--teacher", tmp_path / "ddpm", *TINY, "--loss", "l2", "--out", tmp_path / "run") == 0  # offline
    assert_finished(tmp_path / "run", 3)
    assert (
        boot_main(
            "--teacher", tmp_path / "ddpm", *TINY, "--loss", "l2", "--student", "small", "--out", tmp_path / "small"
        )
        == 0
    )
    assert assert_finished(tmp_path / "small", 3)["class_name"] == "UNet2DConditionModel"


# --- resume and torchrun --------------------------------------------------------------------------
def test_killed_run_rerun_reproduces_the_uninterrupted_run(tmp_path):
    args = ["--teacher", "gmm", "--iters", "60", "--batch", "8", "--ckpt-every", "5", "--preview", "0", "--check", "0"]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in the subprocesses (OMP_NUM_THREADS=1): bitwise-equal arithmetic
    try:
        assert boot_main(*args, "--out", tmp_path / "a") == 0
    finally:
        torch.set_num_threads(threads)
    cmd = [sys.executable, str(ROOT / "boot.py"), *args, "--out", str(tmp_path / "b")]
    p = subprocess.Popen(cmd, env=env(), cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ckpt = tmp_path / "b" / "checkpoints" / "latest.pt"
    deadline = time.time() + 120
    while not ckpt.exists() and p.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    p.send_signal(signal.SIGKILL)
    assert p.wait() == -signal.SIGKILL, "the run finished before it could be killed"
    killed_at = runkit.load_checkpoint(ckpt)["step"]
    assert killed_at < 60
    out = boot_cli(*args, "--out", tmp_path / "b").stdout
    assert f"resuming {tmp_path / 'b'} at step {killed_at}" in out
    for key in ("model", "ema"):
        a, b = weights(tmp_path / "a", key), weights(tmp_path / "b", key)
        assert all(torch.equal(a[k], b[k]) for k in a), key
    steps = [json.loads(x)["step"] for x in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()]
    assert steps == sorted(set(steps))  # no record twice after the resume

    def clockless(run):
        records = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
        return [{k: v for k, v in r.items() if not k.startswith(("ms_", "elapsed"))} for r in records]

    assert clockless(tmp_path / "a") == clockless(tmp_path / "b")  # the open window was resumed, not restarted


@pytest.mark.slow
def test_torchrun_two_processes_equal_one_process(tmp_path):
    args = [
        "--teacher",
        "gmm",
        "--iters",
        "4",
        "--batch",
        "8",
        "--preview",
        "0",
        "--check",
        "0",
        "--boundary-every",
        "2",
    ]
    boot_cli(*args, "--out", tmp_path / "one")
    torchrun = Path(sys.executable).parent / "torchrun"
    p = subprocess.run(
        [
            str(torchrun),
            "--standalone",
            "--nproc_per_node=2",
            str(ROOT / "boot.py"),
            *args,
            "--out",
            str(tmp_path / "two"),
        ],
        capture_output=True,
        text=True,
        env=env(),
        cwd=ROOT,
        timeout=300,
    )
    assert p.returncode == 0, p.stderr[-3000:]
    one, two = weights(tmp_path / "one"), weights(tmp_path / "two")
    init, _ = boot.make_student(teachers.load_teacher("gmm"), boot.resolve(boot.BootConfig(teacher="gmm")), None)
    init = init.state_dict()
    norm = lambda d: sum((v.double() ** 2).sum() for v in d.values()).sqrt().item()  # noqa: E731
    rel = norm({k: one[k] - two[k] for k in one}) / norm({k: one[k] - init[k] for k in one})
    off = sum(((one[k] - two[k]).abs() > 1e-5).sum().item() for k in one) / sum(v.numel() for v in one.values())
    # Adam turns float-rounding noise on near-zero gradients into steps of ~lr on a few weights:
    # compare the whole update, |one - two| / |one - init|, and count the weights that differ
    print(f"1 vs 2 processes: relative difference of the updates {rel:.1e}, weights off by > 1e-5: {off:.1e}")
    assert rel < 1e-3 and off < 1e-4
    rec1 = json.loads((tmp_path / "one" / "metrics.jsonl").read_text().splitlines()[-1])
    rec2 = json.loads((tmp_path / "two" / "metrics.jsonl").read_text().splitlines()[-1])
    assert abs(rec1["loss"] - rec2["loss"]) < 1e-4 * max(1.0, abs(rec1["loss"]))


@pytest.mark.slow
def test_gmm_default_run_learns_within_a_minute(tmp_path):
    """`python boot.py --teacher gmm`: the one-step student lands on the teacher's ODE output
    (DDIM-50) from the same noise: mean squared distance < 0.01, under a tenth of DDIM-1's."""
    t0 = time.time()
    p = boot_cli("--teacher", "gmm", "--out", tmp_path / "gmm", timeout=600)
    d = json.loads((tmp_path / "gmm" / "distance.json").read_text())
    print(p.stdout.strip().splitlines()[-2], f"({time.time() - t0:.0f} s)")
    assert d["n"] == 256 and d["student"] < 0.01 and d["student"] < 0.1 * d["DDIM-1"]


def test_logged_boundary_loss_is_its_mean_over_the_iterations_that_compute_it(tmp_path, monkeypatch):
    """BOOT's boundary term (Eq. 8) is computed on every --boundary-every-th iteration only: metrics.jsonl's bc is
    the mean over those (here 2 of each 4-iteration window), not over the window; loss and bs over all of it."""
    seen, real = [], boot.boot_step
    monkeypatch.setattr(
        boot, "boot_step", lambda *a, **k: seen.append(real(*a, **k)) or seen[-1]
    )  # (loss, {"bs", "bc"}) of every iteration, in order
    monkeypatch.setenv("TQDM_DISABLE", "1")
    run = tmp_path / "run"
    args = ["--teacher", "gmm", "--iters", "8", "--batch", "4", "--boundary-every", "2", "--log-every", "4"]
    assert boot.main([*args, "--preview", "0", "--check", "0", "--out", str(run)]) == 0
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [4, 8] and len(seen) == 8
    for r, window in zip(records, (seen[:4], seen[4:])):
        bc = [parts["bc"].item() for _, parts in window[::2]]  # iterations 0, 2 (4, 6): the boundary ones
        assert all(v > 0 for v in bc) and all(parts["bc"].item() == 0 for _, parts in window[1::2])
        assert r["bc"] == pytest.approx(sum(bc) / 2, rel=1e-12)
        assert r["loss"] == pytest.approx(sum(loss.item() for loss, _ in window) / 4, rel=1e-12)
