"""evaluate.py: metrics against closed forms and toy sets with known answers, the shipped
classifier, CLIP score on a tiny random CLIP, bad input, and end-to-end runs (offline, CPU)."""

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import evaluate as E
import teachers
from pipelines import students
from teachers import UserError


ROOT = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------------------------------------
# Frechet distance against the closed form
# ---------------------------------------------------------------------------------------------
def _psd_sqrt(S):
    vals, vecs = np.linalg.eigh(np.atleast_2d(S))
    return (vecs * np.sqrt(np.clip(vals, 0, None))) @ vecs.T


def _exact_gaussian_set(mu, S, n, rng):
    """n points whose sample mean is exactly mu and unbiased sample covariance exactly S."""
    z = rng.standard_normal((n, len(mu)))
    z -= z.mean(0)
    z = z @ np.linalg.inv(_psd_sqrt(np.cov(z, rowvar=False)))  # whitened: cov(z) = I
    return mu + z @ _psd_sqrt(S)


def _frechet_closed_form(mu1, S1, mu2, S2):
    """W2^2 between N(mu1, S1) and N(mu2, S2): |mu1 - mu2|^2 + tr(S1 + S2 - 2 (S1^1/2 S2 S1^1/2)^1/2)."""
    r = _psd_sqrt(S1)
    return float(((mu1 - mu2) ** 2).sum() + np.trace(S1 + S2 - 2 * _psd_sqrt(r @ S2 @ r)))


def test_frechet_distance_matches_closed_form():
    rng = np.random.default_rng(0)
    d = 6
    A, B = rng.standard_normal((d, d)), rng.standard_normal((d, d))
    S1, S2 = A @ A.T + 0.1 * np.eye(d), B @ B.T + 0.1 * np.eye(d)  # do not commute
    mu1, mu2 = rng.standard_normal(d), rng.standard_normal(d)
    a, b = _exact_gaussian_set(mu1, S1, 500, rng), _exact_gaussian_set(mu2, S2, 300, rng)
    assert E.frechet_distance_features(a, b) == pytest.approx(_frechet_closed_form(mu1, S1, mu2, S2), rel=1e-6)
    # commuting (diagonal) case: N(0, I) vs N(m, diag(s^2)) is |m|^2 + sum (1 - s_i)^2
    a2 = _exact_gaussian_set(np.zeros(2), np.eye(2), 100, rng)
    b2 = _exact_gaussian_set(np.array([2.0, -1.0]), np.diag([9.0, 0.25]), 100, rng)
    assert E.frechet_distance_features(a2, b2) == pytest.approx(4 + 1 + (1 - 3) ** 2 + (1 - 0.5) ** 2, rel=1e-9)
    assert E.frechet_distance_features(a, a) == pytest.approx(0.0, abs=1e-6)


# ---------------------------------------------------------------------------------------------
# Precision / recall (Kynkaenniemi et al. 2019, k = 3) on toy sets
# ---------------------------------------------------------------------------------------------
def test_precision_recall_on_a_line():
    # real: 0..9. fake: 0..4 and 1000..1004. Radii are 3rd-neighbour distances within each set
    # (the point itself excluded): the far fakes lie outside every real ball -> precision 1/2;
    # fake balls 0±3, 1±2, 2±2, 3±2, 4±3 cover the reals 0..7 -> recall 8/10.
    real = np.arange(10.0)[:, None]
    fake = np.concatenate([np.arange(5.0), 1000 + np.arange(5.0)])[:, None]
    assert E.precision_recall(real, fake, k=3) == pytest.approx((0.5, 0.8))
    assert E.precision_recall(fake, real, k=3) == pytest.approx((0.8, 0.5))  # the roles swap
    assert E.precision_recall(real, real) == (1.0, 1.0)


def test_precision_recall_two_clusters():
    # fakes cover only one of two far-apart real modes: all fakes are realistic, half the reals missed
    rng = np.random.default_rng(0)
    mode_a, mode_b = rng.standard_normal((50, 2)), rng.standard_normal((50, 2)) + 100
    precision, recall = E.precision_recall(np.concatenate([mode_a, mode_b]), mode_a)
    assert (precision, recall) == (1.0, 0.5)
    precision, recall = E.precision_recall(mode_a, mode_b)
    assert (precision, recall) == (0.0, 0.0)


def test_inception_score_bounds():
    confident = np.eye(10)[np.arange(100) % 10]  # sure and uniform over 10 classes
    assert E.inception_score(confident) == pytest.approx(10.0, rel=1e-6)
    assert E.inception_score(np.full((100, 10), 0.1)) == pytest.approx(1.0)


# ---------------------------------------------------------------------------------------------
# The shipped digits classifier and the offline feature spaces
# ---------------------------------------------------------------------------------------------
def test_shipped_classifier_accuracy_and_size():
    model, cfg = E.load_classifier()
    x, y = teachers.load_digits_tensor()
    held = torch.randperm(len(x), generator=torch.Generator().manual_seed(cfg["seed"]))[: cfg["held_out"]]
    with torch.no_grad():
        acc = (model(x[held]).argmax(1) == y[held]).float().mean().item()
    assert acc == pytest.approx(cfg["held_out_accuracy"], abs=1e-3) and acc > 0.95
    assert sum(p.numel() for p in model.parameters()) < 100_000
    assert (E.CLASSIFIER_DIR / "model.safetensors").stat().st_size < 1_000_000


@pytest.fixture(scope="module")
def real_digits():
    x, _ = teachers.load_digits_tensor()
    return (x + 1) / 2


@pytest.mark.parametrize("space", ["digits", "pixels"])
def test_real_split_far_closer_than_noise(real_digits, space):
    held, ref = E.split_real(len(real_digits), 900)
    assert len(set(held.tolist()) | set(ref.tolist())) == len(real_digits) == len(held) + len(ref)
    with pytest.raises(E.UserError, match="too few"):
        E.split_real(len(real_digits), 1500)
    f_held, f_ref = E.features(real_digits[held], space), E.features(real_digits[ref], space)
    f_noise = E.features(torch.rand(len(held), 1, 8, 8, generator=torch.Generator().manual_seed(0)), space)
    fd_real, fd_noise = E.frechet_distance_features(f_held, f_ref), E.frechet_distance_features(f_noise, f_ref)
    assert fd_real * 20 < fd_noise
    precision, recall = E.precision_recall(f_ref, f_held)
    assert precision > 0.8 and recall > 0.8
    assert E.precision_recall(f_ref, f_noise)[0] < 0.1
    if space == "digits":
        assert E.inception_score(E.digits_probs(real_digits)) > 9.0


# ---------------------------------------------------------------------------------------------
# CLIP score on a tiny random CLIP built from a config (no download)
# ---------------------------------------------------------------------------------------------
def test_clip_score_on_tiny_clip(tiny_clip_dir):
    from transformers import CLIPModel, CLIPTokenizer

    images = torch.rand(3, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    prompts = ["a red square", "a digit seven", "noise"]
    score = E.clip_score(images, prompts, str(tiny_clip_dir), batch=2)
    # by hand: CLIP's preprocessing (bicubic resize of the short side to 16, centre crop, CLIP's mean and
    # std) and the cosine of the projected embeddings
    model, tok = CLIPModel.from_pretrained(tiny_clip_dir).eval(), CLIPTokenizer.from_pretrained(tiny_clip_dir)
    x = torch.nn.functional.interpolate(images, size=(16, 16), mode="bicubic", align_corners=False, antialias=True)
    mean, std = torch.tensor([0.48145466, 0.4578275, 0.40821073]), torch.tensor([0.26862954, 0.26130258, 0.27577711])
    x = (x.clamp(0, 1) - mean.view(1, 3, 1, 1)) / std.view(1, 3, 1, 1)
    with torch.no_grad():
        img = model.get_image_features(pixel_values=x)
        txt = model.get_text_features(**tok(prompts, padding=True, return_tensors="pt"))
    img, txt = (e if torch.is_tensor(e) else e.pooler_output for e in (img, txt))
    cos = torch.nn.functional.cosine_similarity(img, txt, dim=-1).mean().item()
    assert score == pytest.approx(cos, abs=2e-2)
    with pytest.raises(UserError, match="3 images but 2 prompts"):
        E.clip_score(images, prompts[:2], str(tiny_clip_dir))


# ---------------------------------------------------------------------------------------------
# Per-image seeds: the same images whatever the batch or the split over processes
# ---------------------------------------------------------------------------------------------
def keep_images(images, seeds):
    """A score function that keeps the images themselves (the tests' view of what generate hands on)."""
    return {"images": images.numpy()}


def test_per_image_seeds_independent_of_batch_and_sharding():
    t = teachers.load_teacher("gmm")
    sample = E.teacher_sampler(t, "ddim", 3)
    seeds = list(range(5, 25))
    values, ips, grid = E.generate(sample, keep_images, seeds, batch=7, keep=4)
    full = values["images"]
    assert ips > 0 and full.shape == (20, 1, 8, 8) and grid.shape == (4, 1, 8, 8)
    np.testing.assert_allclose(E.generate(sample, keep_images, seeds, batch=20)[0]["images"], full, atol=1e-6)
    torch.testing.assert_close(grid, torch.from_numpy(full[:4]))  # the grid: the first seeds' own images
    # rank r of 2 makes seeds[r::2]: interleaving the two shards rebuilds the single-process set
    shards = [E.generate(sample, keep_images, seeds[r::2], batch=4)[0]["images"] for r in range(2)]
    np.testing.assert_allclose(np.stack(shards, 1).reshape(full.shape), full, atol=1e-6)


def test_gather_reassembles_ranks_in_seed_order(monkeypatch):
    """Rank 0 of a 2-process run: the other rank's values (odd positions), its time and its share of the grid's
    images arrive by all_gather_object."""
    sample = lambda seeds: torch.tensor(seeds, dtype=torch.float32).view(-1, 1, 1, 1)  # noqa: E731
    seeds = list(range(100, 111))

    def all_gather_object(parts, mine):
        other = seeds[1::2]
        parts[0], parts[1] = mine, (keep_images(sample(other), other), 2.0, {s: sample([s])[0] for s in other[:2]})

    monkeypatch.setattr(torch.distributed, "all_gather_object", all_gather_object)
    values, ips, grid = E.generate(sample, keep_images, seeds, batch=4, dist=(0, 2), keep=4)
    assert values["images"].flatten().tolist() == seeds and ips == pytest.approx(len(seeds) / 2.0)
    assert grid.flatten().tolist() == seeds[:4]


# ---------------------------------------------------------------------------------------------
# CLI: bad input -> one line on stderr, exit code 2, nothing written
# ---------------------------------------------------------------------------------------------
def _one_line_error(capsys, argv):
    try:
        code = E.main(argv)
    except SystemExit as e:  # argparse errors
        code = e.code
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1, err
    return err


def _write_pngs(folder, sizes):
    folder.mkdir()
    for i, size in enumerate(sizes):
        Image.fromarray(np.full((size, size), 128, np.uint8)).save(folder / f"{i}.png")
    return folder


def test_bad_input_one_line_errors(tmp_path, capsys):
    out = tmp_path / "out.json"
    (tmp_path / "empty").mkdir()
    assert "is empty" in _one_line_error(capsys, ["--run", str(tmp_path / "empty"), "--json", str(out)])
    mixed = _write_pngs(tmp_path / "mixed", [8, 16])
    assert "differ in size" in _one_line_error(capsys, ["--teacher", "gmm", "--ref", str(mixed), "--json", str(out)])
    big = _write_pngs(tmp_path / "big", [16, 16])
    assert "image sizes differ" in _one_line_error(
        capsys, ["--teacher", "gmm", "--ref", str(big), "--features", "pixels", "--json", str(out)]
    )
    assert "unknown feature space 'foo'" in _one_line_error(capsys, ["--teacher", "gmm", "--features", "foo"])
    assert "exactly one of" in _one_line_error(capsys, ["--teacher", "gmm", "--run", str(tmp_path)])
    assert "--n must be" in _one_line_error(capsys, ["--teacher", "gmm", "--n", "2"])
    assert "invalid choice" in _one_line_error(capsys, ["--teacher", "gmm", "--sampler", "euler"])
    assert "does not exist" in _one_line_error(capsys, ["--teacher", "gmm", "--grid", str(tmp_path / "no" / "g.png")])
    assert not out.exists()


def test_bad_input_in_the_functions(tmp_path):
    with pytest.raises(UserError, match="unknown feature space 'foo'"):
        E.features(torch.rand(4, 1, 8, 8), "foo")
    with pytest.raises(UserError, match="needs 1x8x8 images, got 1x16x16"):
        E.features(torch.rand(4, 1, 16, 16), "digits")
    with pytest.raises(UserError, match="at least 2 feature dimensions"):
        E.frechet_distance_features(np.zeros((5, 1)), np.zeros((5, 1)))
    with pytest.raises(UserError, match="equal D"):
        E.frechet_distance_features(np.zeros((5, 64)), np.zeros((5, 256)))
    with pytest.raises(UserError, match="needs 1 or 3 channels"):
        E.check_space("inception", (2, 8, 8))
    with pytest.raises(UserError, match="is empty"):
        E.load_image_folder(_write_pngs(tmp_path / "none", []))


def test_cli_subprocess_error_and_help():
    r = subprocess.run(
        [sys.executable, str(ROOT / "evaluate.py"), "--features", "inception", "pixels", "bogus", "--teacher", "gmm"],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert r.returncode == 2 and r.stderr.strip().splitlines() == [
        "evaluate.py: error: unknown feature space 'bogus' (known: digits, pixels, inception)"
    ]
    assert r.stdout == ""


# ---------------------------------------------------------------------------------------------
# End to end: the analytic gmm teacher (fast), a fake student run, the digits teacher (slow)
# ---------------------------------------------------------------------------------------------
KEYS = {"name", "sampler", "nfe", "features", "fid", "precision", "recall", "images_per_s", "n"}


def test_gmm_teacher_end_to_end(tmp_path, capsys):
    argv = [
        "--teacher",
        "gmm",
        "--nfe",
        "1",
        "5",
        "--n",
        "100",
        "--seed",
        "3",
        "--json",
        str(tmp_path / "a.json"),
        "--grid",
        str(tmp_path / "g.png"),
    ]
    assert E.main(argv) == 0
    table = capsys.readouterr().out
    assert "| FD (digits) |" in table and "| FD (pixels) |" in table and "speed-up vs DDIM-5" in table
    records = json.loads((tmp_path / "a.json").read_text())
    assert all(KEYS <= set(r) for r in records)
    assert [(r["name"], r["nfe"], r["features"]) for r in records] == [
        ("real", None, "digits"),
        ("real", None, "pixels"),
        ("gmm", 5, "digits"),
        ("gmm", 5, "pixels"),
        ("gmm", 1, "digits"),
        ("gmm", 1, "pixels"),
    ]
    assert records[0]["n"] == records[2]["n"] == 100 and records[0]["n_ref"] == records[2]["n_ref"] == 1697
    assert Image.open(tmp_path / "g.png").size == (2 + 16 * 34, 2 + 2 * 34)  # 32-px tiles, 2-px padding
    # same seed, same numbers (throughput aside)
    assert E.main(argv[:-4] + ["--json", str(tmp_path / "b.json")]) == 0
    again = json.loads((tmp_path / "b.json").read_text())
    strip = lambda rs: [{k: v for k, v in r.items() if k not in ("images_per_s", "speedup")} for r in rs]  # noqa: E731
    assert strip(again) == strip(records)


def test_text_teacher_with_clip_score(tiny_sd_dir, tiny_clip_dir, tmp_path, capsys):
    """A tiny SD-like latent teacher: prompts per seed, pixel FD against a folder, CLIP score."""
    ref = tmp_path / "ref"
    ref.mkdir()
    rng = np.random.default_rng(0)
    for i in range(12):
        Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(ref / f"{i:02d}.png")
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a photo of a cat\na red car\n")
    assert (
        E.main(
            [
                "--teacher",
                str(tiny_sd_dir),
                "--prompts",
                str(prompts),
                "--ref",
                str(ref),
                "--features",
                "pixels",
                "--clip-model",
                str(tiny_clip_dir),
                "--nfe",
                "1",
                "--n",
                "6",
                "--json",
                str(tmp_path / "t.json"),
            ]
        )
        == 0
    )
    assert "CLIP score" in capsys.readouterr().out
    records = json.loads((tmp_path / "t.json").read_text())
    assert records[0]["name"] == "real" and records[0]["n"] == 6 and records[0]["clip_score"] is None
    assert -1 <= records[1]["clip_score"] <= 1 and records[1]["n_ref"] == 12 - 6 == records[0]["n_ref"]
    assert "takes no prompts" in _one_line_error(capsys, ["--teacher", "gmm", "--prompts", str(prompts)])


class FakeStudent:
    """The contract of students.ExportedStudent: .generate(noise, cond, w) -> x0, .nfe, .teacher_name, .info."""

    nfe, teacher_name, info = 1, "gmm", {"method": "boot"}

    def __init__(self):
        self.teacher = teachers.load_teacher("gmm")

    def generate(self, noise, cond, w=None):
        return self.teacher.x0(noise, torch.ones(len(noise)), cond, w)


def test_run_directory_with_a_student(tmp_path, monkeypatch, capsys):
    run = tmp_path / "boot-gmm"
    (run / "student").mkdir(parents=True)
    monkeypatch.setattr(students, "ExportedStudent", lambda d, device="cpu": FakeStudent())
    monkeypatch.setattr(E, "check_run", lambda d, *a: None)  # the fake run has no files to check
    assert (
        E.main(
            [
                "--run",
                str(run),
                "--nfe",
                "1",
                "2",
                "--n",
                "50",
                "--features",
                "pixels",
                "--json",
                str(tmp_path / "r.json"),
                "--grid",
                str(tmp_path / "g.png"),
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "| boot-gmm | student | 1 |" in out and "grid (rows, top to bottom: ddim-2, ddim-1, student-1)" in out
    records = json.loads((tmp_path / "r.json").read_text())
    student = records[-1]
    assert student["sampler"] == "student" and student["nfe"] == 1 and student["speedup"] > 0
    assert Image.open(tmp_path / "g.png").size[1] == 2 + 3 * 34
    monkeypatch.undo()  # the real checks: a directory without student/ is one line
    assert "has no student/" in _one_line_error(capsys, ["--run", str(tmp_path)])


def test_dkdm_sampler_rescores_a_dkdm_student(tmp_path, capsys):
    """--dkdm-sampler scores a DKDM student with another sampler (the paper's IDDPM on the embedded
    teacher, whose runs export DDIM): auto is the exported one, ancestral gives other samples."""
    import dkdm

    run = tmp_path / "dkdm-gmm"
    assert (
        dkdm.main(
            ["--teacher", "gmm", "--rho", "0.01", "--batch", "4", "--chains", "16", "--iters", "2", "--out", str(run)]
        )
        == 0
    )
    fd, nfe = {}, {}
    variants = {s: ["--dkdm-sampler", s] for s in ("auto", "ddim", "ancestral")} | {"steps": ["--dkdm-steps", "3"]}
    for name, flags in variants.items():
        out = tmp_path / f"{name}.json"
        argv = ["--run", str(run), "--nfe", "2", "--n", "16", "--features", "pixels", *flags, "--json", str(out)]
        assert E.main(argv) == 0
        fd[name], nfe[name] = (json.loads(out.read_text())[-1][k] for k in ("fid", "nfe"))
    capsys.readouterr()
    assert fd["auto"] == fd["ddim"] != fd["ancestral"]
    assert nfe["auto"] == 50 and nfe["steps"] == 3 and fd["steps"] != fd["auto"]  # --dkdm-steps: the student's steps
    boot_run = tmp_path / "boot-run"
    (boot_run / "student").mkdir(parents=True)
    (boot_run / "student" / "generator.json").write_text(json.dumps({"method": "boot", "teacher": "gmm"}))
    assert "applies to a DKDM run" in _one_line_error(capsys, ["--run", str(boot_run), "--dkdm-sampler", "ddim"])
    assert "--dkdm-steps applies to a DKDM run" in _one_line_error(
        capsys, ["--run", str(boot_run), "--dkdm-steps", "4"]
    )
    for flags in (["--dkdm-sampler", "ancestral"], ["--dkdm-steps", "4"]):
        assert f"{flags[0]} applies to the student of a DKDM run" in _one_line_error(
            capsys, ["--teacher", "gmm", *flags]
        )
    assert "steps must lie in 1..1000" in _one_line_error(capsys, ["--run", str(run), "--dkdm-steps", "5000"])


@pytest.mark.slow
@pytest.mark.skipif(
    not (teachers.DIGITS_DIR / "model_index.json").exists(),
    reason="assets/digits-teacher not trained yet (python assets/train.py digits)",
)
def test_digits_teacher_table(tmp_path):
    """The issue's check: offline on CPU, DDIM-1 far worse than DDIM-50, DDIM-50 near real-vs-real."""
    out = tmp_path / "eval.json"
    r = subprocess.run(
        [
            sys.executable,
            str(ROOT / "evaluate.py"),
            "--teacher",
            "digits",
            "--nfe",
            "1",
            "10",
            "50",
            "--json",
            str(out),
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=600,
    )
    assert r.returncode == 0, r.stderr
    records = {(rec["name"], rec["nfe"], rec["features"]): rec for rec in json.loads(out.read_text())}
    for space in ("digits", "pixels"):
        real, d1, d50 = (records[k, n, space]["fid"] for k, n in (("real", None), ("digits", 1), ("digits", 50)))
        assert d1 > 10 * d50, (space, d1, d50)
        assert d50 < 2 * real, (space, d50, real)


def test_kid_is_the_unbiased_polynomial_mmd_and_reports_its_spread():
    """KID = the unbiased MMD^2 with k(x, y) = (x.y / d + 1)^3 (Binkowski et al. 2018): on two sets of
    equal size every subset is the whole set, so the mean is the full-set estimate and the spread 0."""
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(50, 8)), rng.normal(0.5, 1.0, size=(50, 8))
    k = lambda x, y: (x @ y.T / 8 + 1) ** 3  # noqa: E731
    off = lambda m: (m.sum() - np.trace(m)) / (50 * 49)  # noqa: E731 - the mean over i != j
    mean, std = E.kernel_distance(a, b)
    assert mean == pytest.approx(off(k(a, a)) + off(k(b, b)) - 2 * k(a, b).mean(), rel=1e-9) and std < 1e-12
    mean, std = E.kernel_distance(a, np.concatenate([b, b]))  # subsets of 50 of 100: a spread
    assert std > 0


def test_probe_scores_the_teacher_at_its_floor_and_a_worse_sampler_above_it():
    """--eval-every's proxy: the teacher's own DDIM-50 scores the floor its label states (n samples against
    n others); its DDIM-1 is further off. (KID at n = 64 in digits features is mostly noise: finite only.)"""
    t = teachers.load_teacher("gmm")
    probe = E.Probe(t, t.label_cond(torch.arange(64) % 10), n=64)
    same, worse = (probe(lambda noise, cond, k=k: t.decode(teachers.ddim(t, noise, k, cond))) for k in (50, 1))
    assert f"FD {same['proxy_fd']:.3g}, KID {same['proxy_kid']:.2g})" in same["proxy"]
    assert 0 < same["proxy_fd"] < worse["proxy_fd"] and math.isfinite(same["proxy_kid"] + worse["proxy_kid"])
    assert same["proxy"].startswith("proxy: n=64 against 64 other samples of the teacher's DDIM-50, digits features")
