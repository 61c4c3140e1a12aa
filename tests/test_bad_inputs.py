"""Bad input across the four command lines: every case exits with code 2 and exactly one line on
stderr that names the problem, and leaves every directory listing (its cwd and the shared fixtures)
unchanged. Table-driven, in-process (no interpreter start-up per case), on the gmm / digits teachers."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import boot
import dkdm
import evaluate
import teachers


ROOT = Path(__file__).resolve().parents[1]
MAINS = {"boot": boot.main, "dkdm": dkdm.main, "evaluate": evaluate.main}
GMM = "--teacher gmm"
BT = "--teacher gmm --iters 2 --batch 4 --preview 0 --check 0"  # a boot command that would run in seconds
DT = "--teacher gmm --method iterative --iters 2 --batch 4"  # the same for dkdm
ET = "--teacher gmm --n 8 --nfe 1"  # and for evaluate

# (script, arguments ({name} = a fixture path), a piece of the expected one-line message)
CASES = [
    # --- boot.py: numbers (finite, in range; one rule with dkdm: --iters >= 1, --minutes > 0 or unset)
    ("boot", f"{BT} --lr nan", "--lr must be a finite number"),
    ("boot", f"{BT} --lr inf", "--lr must be a finite number"),
    ("boot", f"{BT} --lr 0", "--lr must be positive"),
    ("boot", f"{BT} --lr -1", "--lr must be positive"),
    ("boot", f"{BT} --w nan", "--w must be a finite number"),
    ("boot", f"{BT} --w 1 --w-max nan", "--w-max must be a finite number"),
    ("boot", f"{BT} --beta nan", "--beta must be a finite number"),
    ("boot", f"{BT} --beta -1", "beta >= 0"),
    ("boot", f"{BT} --minutes -1", "--minutes must be positive"),
    ("boot", f"{BT} --minutes 0", "--minutes must be positive"),
    ("boot", f"{BT} --minutes nan", "--minutes must be a finite number"),
    ("boot", f"{BT} --minutes inf", "--minutes must be a finite number"),
    ("boot", f"{GMM} --iters 0", "--iters must be at least 1"),
    ("boot", f"{GMM} --iters -5", "--iters must be at least 1"),
    ("boot", f"{GMM} --iters abc", "invalid int value: 'abc'"),
    ("boot", f"{BT} --batch 0", "global batch 0"),
    ("boot", f"{GMM} --batch abc", "invalid int value"),
    ("boot", f"{BT} --t-max 1.0", "t_max < 1"),
    ("boot", f"{BT} --t-min 0.9 --t-max 0.5", "t_min < t_max"),
    ("boot", f"{BT} --t-min -0.1", "0 <= t_min"),
    ("boot", f"{BT} --t-max nan", "--t-max must be a finite number"),
    ("boot", f"{BT} --delta 0", "0 < delta"),
    ("boot", f"{BT} --delta -0.1", "0 < delta"),
    ("boot", f"{BT} --delta 2", "delta <= t_max - t_min"),
    ("boot", f"{BT} --ema 1", "--ema must lie in [0, 1)"),
    ("boot", f"{BT} --ema nan", "--ema must be a finite number"),
    ("boot", f"{BT} --solver rk4", "unknown solver 'rk4'"),
    ("boot", f"{BT} --weighting foo", "unknown weighting 'foo'"),
    ("boot", f"{BT} --time-sampling foo", "unknown time-sampling 'foo'"),
    ("boot", f"{BT} --clip foo", "unknown clip 'foo'"),
    ("boot", f"{BT} --student foo", "unknown student 'foo'"),
    ("boot", f"{BT} --boundary-every -1", "boundary-every >= 0"),
    ("boot", f"{BT} --log-every 0", "--log-every must be at least 1"),
    ("boot", f"{BT} --ckpt-every 0", "--ckpt-every must be at least 1"),
    ("boot", f"{BT} --preview -1", "preview >= 0"),
    ("boot", f"{BT} --check -1", "check >= 0"),
    ("boot", f"{BT} --time-cond-dim 1", "time-cond-dim >= 2"),
    ("boot", f"{BT} --w-max 3", "--w-max needs --w"),
    ("boot", f"{BT} --w 5 --w-max 3", "--w-max needs --w"),
    ("boot", f"{BT} --noise-level 5000", "--noise-level must lie in 0..999"),
    ("boot", f"{BT} --half", "--half needs a GPU"),
    ("boot", f"{BT} --no-such-flag", "unrecognized arguments"),
    # --- boot.py: inputs
    ("boot", f"{BT} --stage 3", "--stage must be 1 or 2"),
    ("boot", "--teacher if --stage 2", "--stage 2 needs --stage1-run"),
    ("boot", "--teacher if --stage 2 --stage1-run nope", "is not a finished stage-1 run"),
    ("boot", "--teacher if --stage 2 --stage1-run {boot_badgen}", "is not valid JSON"),
    ("boot", f"{BT} --prompts missing.txt", "prompts file 'missing.txt' does not exist"),
    ("boot", f"{BT} --prompts {{empty_txt}}", "is empty"),
    ("boot", f"{BT} --prompts {{prompts}}", "is not text-conditioned"),
    ("boot", "--teacher no-such-teacher", "unknown teacher 'no-such-teacher'"),
    ("boot", "--teacher ./missing/dir", "does not exist"),
    ("boot", "--teacher {t_trunc}", "is truncated or corrupt"),
    ("boot", "--teacher {t_garbage}", "is truncated or corrupt"),
    ("boot", "--teacher {t_nounet}", "has no unet/ folder"),
    ("boot", "--teacher {t_badindex}", "is not valid JSON"),
    ("boot", "--teacher {t_badunetcfg}", "is not valid JSON"),
    ("boot", "--teacher {t_badsched}", "is not valid JSON"),
    ("boot", "--teacher {t_empty}", "holds neither model_index.json nor config.json"),
    ("boot", "--teacher {afile}", "is a file, not a diffusers directory"),
    ("boot", "--teacher digits --model-id {t_trunc}", "is truncated or corrupt"),
    ("boot", f"{BT} --student copy", "has no network to copy"),
    # --- boot.py: the run directory
    ("boot", f"{BT} --out {{afile}}", "is a file, not a directory"),
    ("boot", f"{BT} --out {{afile}}/sub", "lies under the file"),
    ("boot", f"{BT} --out /proc/boot-run", "is not writable"),
    ("boot", f"{BT} --out {{boot_badcfg}}", "is not valid JSON"),
    ("boot", f"{BT} --out {{boot_trunc}}", "cannot be read"),
    ("boot", f"{BT} --out {{boot_locked}}", "is in use by process"),
    ("boot", f"{BT} --lr 5e-4 --out {{boot_run}}", "differs in lr"),
    # --- boot.py sample
    ("boot", "sample {boot_run} --n abc", "invalid int value: 'abc'"),
    ("boot", "sample {boot_run} --n 0", "--n must be at least 1"),
    ("boot", "sample {boot_run} --w nan", "--w must be a finite number"),
    ("boot", "sample nope", "run directory 'nope' does not exist: it is not a finished boot run"),
    ("boot", "sample {boot_badgen}", "is not valid JSON"),
    ("boot", "sample {boot_truncunet}", "is truncated or corrupt"),
    ("boot", "sample {boot_run} --out {adir}", "is a directory, not a file"),
    ("boot", "sample {boot_run} --out /proc/x.png", "is not writable"),
    ("boot", "sample {boot_run} --out missing/x.png", "directory of 'missing/x.png' does not exist"),
    ("boot", "sample {boot_run} --label 99", "--label must lie in 0..9"),
    ("boot", "sample {boot_run} --bogus", "unrecognized arguments"),
    # --- dkdm.py: numbers
    ("dkdm", f"{DT} --lr nan", "--lr must be a finite number"),
    ("dkdm", f"{DT} --lr inf", "--lr must be a finite number"),
    ("dkdm", f"{DT} --lr 0", "--lr must be positive"),
    ("dkdm", f"{DT} --rho 0", "--rho must be positive"),
    ("dkdm", f"{DT} --rho nan", "--rho must be a finite number"),
    ("dkdm", f"{DT} --lam -1", "--lam must be non-negative"),
    ("dkdm", f"{DT} --lam inf", "--lam must be a finite number"),
    ("dkdm", f"{DT} --ema 1", "--ema must lie in [0, 1)"),
    ("dkdm", f"{DT} --p-uncond 1", "--p-uncond must lie in [0, 1)"),
    ("dkdm", f"{DT} --p-uncond nan", "--p-uncond must be a finite number"),
    ("dkdm", f"{GMM} --iters 0", "--iters must be at least 1"),
    ("dkdm", f"{DT} --minutes 0", "--minutes must be positive"),
    ("dkdm", f"{DT} --minutes -1", "--minutes must be positive"),
    ("dkdm", f"{DT} --minutes nan", "--minutes must be a finite number"),
    ("dkdm", f"{DT} --batch 0", "--batch must be at least 1"),
    ("dkdm", f"{DT} --warmup -1", "--warmup must be non-negative"),
    ("dkdm", f"{DT} --chains 0", "--chains must be at least 1"),
    ("dkdm", f"{DT} --init-batch 0", "--init-batch must be at least 1"),
    ("dkdm", f"{DT} --synth-steps 0", "--synth-steps must be at least 1"),
    ("dkdm", f"{DT} --synth-n 0", "--synth-n must be at least 1"),
    ("dkdm", f"{DT} --log-every 0", "--log-every must be at least 1"),
    ("dkdm", f"{DT} --width 0", "--width must be at least 1"),
    ("dkdm", f"{GMM} --iters abc", "invalid int value: 'abc'"),
    ("dkdm", f"{DT} --method nope", "invalid choice: 'nope'"),
    ("dkdm", f"{DT} --pool-init nope", "invalid choice: 'nope'"),
    ("dkdm", f"{DT} --pool-init shuffle", "--method iterative starts every sample at T-1"),
    ("dkdm", "--teacher gmm --iters 2 --batch 8 --rho 0.4 --chains 3", "--chains 3 is below"),
    ("dkdm", f"{DT.replace('iterative', 'data')}", "--method data needs the embedded digits teacher"),
    # --- dkdm.py: inputs and the run directory
    ("dkdm", f"{DT} --student resnet", "unknown student 'resnet'"),
    ("dkdm", f"{DT} --student {{student_badcfg}}", "is not valid JSON"),
    ("dkdm", f"{DT} --student {{student_misfit}}", "takes 3x8x8 inputs"),
    ("dkdm", f"{DT} --student {{student_noclass}}", "config without _class_name"),
    ("dkdm", "--teacher {t_trunc} --iters 2", "is truncated or corrupt"),
    ("dkdm", "--teacher {t_nounet} --iters 2", "has no unet/ folder"),
    ("dkdm", "--teacher {t_badindex} --iters 2", "is not valid JSON"),
    ("dkdm", "--teacher no-such-teacher --iters 2", "unknown teacher 'no-such-teacher'"),
    ("dkdm", "--teacher sd21 --iters 2", "DKDM distils unconditional and class-conditional teachers"),
    ("dkdm", "--teacher if --iters 2 --dry-run", "'if' is text-to-image: boot.py distils it"),
    ("dkdm", f"{DT} --out {{afile}}", "is a file, not a directory"),
    ("dkdm", f"{DT} --out /proc/dkdm-run", "is not writable"),
    ("dkdm", f"{DT} --out {{dkdm_badcfg}}", "is not valid JSON"),
    ("dkdm", f"{DT} --out {{dkdm_trunc}}", "cannot be read"),
    ("dkdm", f"{DT} --out {{dkdm_locked}}", "is in use by process"),
    ("dkdm", f"{DT} --lr 5e-4 --out {{dkdm_run}}", "differs in lr"),
    ("dkdm", f"{DT} --out {{dkdm_truncpool}}", "knowledge-stream checkpoint"),
    ("dkdm", f"{DT} --out {{dkdm_nopool}}", "knowledge-stream checkpoint"),
    # --- dkdm.py sample
    ("dkdm", "sample nope", "run directory 'nope' does not exist: it is not a finished dkdm run"),
    ("dkdm", "sample {boot_run}", "is not a dkdm run"),
    ("dkdm", "sample {dkdm_run} --steps 0", "--steps and --n must be at least 1"),
    ("dkdm", "sample {dkdm_run} --n 0", "--steps and --n must be at least 1"),
    ("dkdm", "sample {dkdm_badgen}", "is not valid JSON"),
    ("dkdm", "sample {dkdm_truncunet}", "is truncated or corrupt"),
    ("dkdm", "sample {dkdm_run} --sampler foo", "invalid choice: 'foo'"),
    # --- evaluate.py
    ("evaluate", "--n 8", "give exactly one of --teacher NAME or --run DIR"),
    ("evaluate", f"{ET} --run {{boot_run}}", "give exactly one of --teacher NAME or --run DIR"),
    ("evaluate", f"{GMM} --n 3", "--n must be at least 4"),
    ("evaluate", f"{ET} --batch 0", "--batch and every --nfe must be at least 1"),
    ("evaluate", f"{GMM} --n 8 --nfe 0", "--batch and every --nfe must be at least 1"),
    ("evaluate", f"{GMM} --n 8 --nfe 2000", "steps must lie in 1..1000"),
    ("evaluate", f"{ET} --features foo", "unknown feature space 'foo'"),
    ("evaluate", f"{ET} --w nan", "--w must be a finite number"),
    ("evaluate", f"{ET} --n abc", "invalid int value: 'abc'"),
    ("evaluate", f"{ET} --sampler foo", "invalid choice: 'foo'"),
    ("evaluate", f"{ET} --json {{adir}}", "--json '{adir}' is a directory"),
    ("evaluate", f"{ET} --json /proc/x.json", "is not writable"),
    ("evaluate", f"{ET} --json missing/x.json", "does not exist"),
    ("evaluate", f"{ET} --grid {{adir}}", "--grid '{adir}' is a directory"),
    ("evaluate", f"{ET} --grid /proc/g.png", "is not writable"),
    ("evaluate", f"{ET} --grid missing/g.png", "does not exist"),
    ("evaluate", f"{ET} --ref {{ref_corrupt}}", "is not a readable image"),
    ("evaluate", f"{ET} --ref missing", "image folder 'missing' does not exist"),
    ("evaluate", f"{ET} --ref {{ref_empty}}", "is empty"),
    ("evaluate", f"{ET} --ref {{ref_mixed}}", "differ in size"),
    ("evaluate", f"{ET} --ref {{ref_rgb}}", "image sizes differ"),
    ("evaluate", "--run nope --n 8", "run directory 'nope' does not exist"),
    ("evaluate", "--run {afile} --n 8", "does not exist"),
    ("evaluate", "--run {adir} --n 8", "is empty"),
    ("evaluate", "--run {student_badcfg} --n 8", "has no student/generator.json"),
    ("evaluate", "--run {boot_badgen} --n 8", "is not valid JSON"),
    ("evaluate", "--run {boot_truncunet} --n 8", "is truncated or corrupt"),
    ("evaluate", "--run {dkdm_truncunet} --n 8", "is truncated or corrupt"),
    ("evaluate", "--teacher {t_trunc} --n 8", "is truncated or corrupt"),
    ("evaluate", "--teacher {t_nounet} --n 8", "has no unet/ folder"),
    ("evaluate", "--teacher no-such-teacher --n 8", "unknown teacher 'no-such-teacher'"),
    ("evaluate", f"{ET} --prompts missing.txt", "prompts file 'missing.txt' does not exist"),
    ("evaluate", f"{ET} --prompts {{prompts}}", "takes no prompts"),
    ("evaluate", f"{GMM} --n 1500 --nfe 1", "leaves too few"),
    # --- new flags, and rules without a case before
    ("boot", f"{BT} --loss l3", "unknown loss 'l3'"),
    ("boot", f"{BT} --eval-every -1", "--eval-every must be non-negative"),
    ("boot", f"{BT} --eval-every 7", "--eval-every 7 is not a multiple of --log-every 50"),
    ("boot", f"{BT} --keep 0", "--keep must be at least 1"),
    ("boot", f"{BT} --export-every -1", "--export-every must be non-negative"),
    ("dkdm", f"{DT} --lr-decay 5 2", "--lr-decay START END needs 0 <= START <= END"),
    ("dkdm", f"{DT} --eval-every -1", "--eval-every must be non-negative"),
    ("dkdm", f"{DT} --eval-every 150", "--eval-every 150 is not a multiple of --log-every 100"),
    ("dkdm", f"{DT} --ckpt-every 0", "--ckpt-every must be at least 1"),
    ("dkdm", f"{DT} --half", "--half needs a GPU"),
    ("dkdm", f"{DT} --clip-grad -1", "--clip-grad must be non-negative"),
    ("evaluate", f"{ET} --dkdm-sampler ddim", "--dkdm-sampler applies to the student of a DKDM run"),
    ("evaluate", f"{ET} --dkdm-steps 0", "--dkdm-steps must be at least 1"),
    ("evaluate", f"{ET} --dkdm-steps 10", "--dkdm-steps applies to the student of a DKDM run"),
    ("evaluate", f"{ET} --save-images {{afile}}", "--save-images '{afile}' is a file"),
    ("evaluate", f"{ET} --protocol foo", "invalid choice: 'foo'"),
    ("evaluate", f"{ET} --captions {{prompts}}", "--captions applies to --protocol coco2014-30k"),
    ("evaluate", f"{ET} --protocol cifar10-50k", "--protocol cifar10-50k needs --ref DIR"),
    ("evaluate", f"{ET} --protocol cifar10-50k --ref {{ref_rgb}} --features pixels", "scores Inception features only"),
    ("evaluate", f"{ET} --protocol cifar10-50k --ref {{ref_rgb}} --prompts {{prompts}}", "takes no --prompts"),
    ("evaluate", f"{ET} --protocol cifar10-50k --ref {{ref_rgb}} --captions {{prompts}}", "takes no --captions"),
    ("evaluate", f"{ET} --protocol cifar10-50k --ref {{ref_mixed}} --ref-stats {{adir}}", "0.png' 9x9"),
    ("evaluate", f"{ET} --protocol cifar10-50k --ref {{ref_corrupt}}", "is not a readable image"),
    ("evaluate", f"{ET} --protocol cifar10-50k --ref {{ref_rgb}} --ref-stats {{afile}}", "is a file, not a directory"),
    ("evaluate", f"{ET} --protocol coco2014-30k --ref {{ref_rgb}}", "--protocol coco2014-30k needs --captions FILE"),
    ("evaluate", f"{ET} --protocol coco2014-30k --ref {{ref_rgb}} --captions nope.json", "'nope.json' does not exist"),
    ("evaluate", f"{ET} --protocol coco2014-30k --ref {{ref_rgb}} --captions {{empty_txt}}", "holds no captions"),
    (
        "evaluate",
        f"{ET} --protocol coco2014-30k --ref {{ref_rgb}} --captions {{student_badcfg}}/config.json",
        "not valid JSON",
    ),
]


def _png(path, size=(8, 8), mode="L"):
    from PIL import Image

    Image.new(mode, size, 128).save(path)


HOLD = """
import fcntl, json, os, socket, sys, time
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT)
fcntl.flock(fd, fcntl.LOCK_EX)
os.write(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname()}).encode())
print("held", flush=True)
time.sleep(3600)
"""


def hold_lock(path):
    """A process holding the run directory's lock, as a running writer does (until killed)."""
    p = subprocess.Popen([sys.executable, "-c", HOLD, str(path)], stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "held"
    return p


@pytest.fixture(scope="module")
def fx(tmp_path_factory):
    """Shared inputs: broken teacher directories, finished runs and broken copies of them."""
    d, holders = tmp_path_factory.mktemp("bad-inputs"), []
    (d / "prompts.txt").write_text("a cat\n")
    (d / "empty.txt").write_text("\n")
    (d / "afile").write_text("not a directory\n")
    (d / "adir").mkdir()
    digits = ROOT / "assets" / "digits-teacher"
    weights = Path("unet") / "diffusion_pytorch_model.safetensors"
    for name in ("t_trunc", "t_garbage", "t_nounet", "t_badindex", "t_badunetcfg", "t_badsched"):
        shutil.copytree(digits, d / name)
    w = (d / "t_trunc" / weights).read_bytes()
    (d / "t_trunc" / weights).write_bytes(w[: len(w) // 2])
    (d / "t_garbage" / weights).write_bytes(b"\x00garbage" * 64)
    shutil.rmtree(d / "t_nounet" / "unet")
    (d / "t_badindex" / "model_index.json").write_text('{"_class_name": "DDPMPipeline", ')
    (d / "t_badunetcfg" / "unet" / "config.json").write_text("{not json")
    (d / "t_badsched" / "scheduler" / "scheduler_config.json").write_text("")
    (d / "t_empty").mkdir()
    # students for dkdm --student DIR
    for name, conf in (
        ("student_badcfg", None),
        ("student_noclass", {"sample_size": 8}),
        (
            "student_misfit",
            dict(
                _class_name="UNet2DModel",
                sample_size=8,
                in_channels=3,
                out_channels=1,
                layers_per_block=1,
                block_out_channels=[16, 32],
                down_block_types=["DownBlock2D"] * 2,
                up_block_types=["UpBlock2D"] * 2,
                norm_num_groups=8,
                num_class_embeds=11,
            ),
        ),
    ):
        (d / name).mkdir()
        (d / name / "config.json").write_text("[1, 2" if conf is None else json.dumps(conf))
    # reference image folders
    for name in ("ref_corrupt", "ref_empty", "ref_mixed", "ref_rgb"):
        (d / name).mkdir()
    for k in range(6):
        _png(d / "ref_corrupt" / f"{k}.png")
        _png(d / "ref_mixed" / f"{k}.png", size=(8, 8) if k else (9, 9))
        _png(d / "ref_rgb" / f"{k}.png", size=(16, 16), mode="RGB")
    (d / "ref_corrupt" / "9.png").write_bytes(b"\x89PNG broken")
    # finished runs (seconds each) and broken copies
    assert boot.main([*BT.split(), "--out", str(d / "boot_run")]) == 0
    assert dkdm.main([*DT.split(), "--out", str(d / "dkdm_run")]) == 0
    for v in ("truncpool", "nopool"):
        shutil.copytree(d / "dkdm_run", d / f"dkdm_{v}")
    pool = d / "dkdm_truncpool" / "checkpoints" / "stream-rank0-step2.pt"
    pool.write_bytes(pool.read_bytes()[:50])
    (d / "dkdm_nopool" / "checkpoints" / "stream-rank0-step2.pt").unlink()
    for m in ("boot", "dkdm"):
        run = d / f"{m}_run"
        for v in ("badcfg", "trunc", "locked", "badgen", "truncunet"):
            shutil.copytree(run, d / f"{m}_{v}")
        (d / f"{m}_badcfg" / "config.json").write_text('{"teacher": ')
        ck = (d / f"{m}_trunc" / "checkpoints" / "latest.pt").read_bytes()
        (d / f"{m}_trunc" / "checkpoints" / "latest.pt").write_bytes(ck[: len(ck) // 3])
        holders.append(hold_lock(d / f"{m}_locked" / "run.lock"))  # a live writer that is not us
        (d / f"{m}_badgen" / "student" / "generator.json").write_text("{")
        unet = d / f"{m}_truncunet" / "student" / "unet" / "diffusion_pytorch_model.safetensors"
        unet.write_bytes(unet.read_bytes()[:100])
    yield d
    for p in holders:
        p.kill()
        p.wait()


def listing(*dirs):
    """Every path under dirs with (size, mtime) of files: what a bad input must leave alone."""
    out = {}
    for root in dirs:
        for dirpath, dirnames, filenames in os.walk(root):
            for n in dirnames:
                out[os.path.join(dirpath, n)] = None
            for n in filenames:
                st = os.stat(os.path.join(dirpath, n))
                out[os.path.join(dirpath, n)] = (st.st_size, st.st_mtime_ns)
    return out


def run_case(script, argv, capsys):
    try:
        rc = MAINS[script](argv)
    except SystemExit as e:  # argparse exits on its own
        rc = e.code
    cap = capsys.readouterr()
    return rc, [ln for ln in cap.err.splitlines() if ln.strip()]


@pytest.mark.parametrize("script,args,expect", CASES, ids=[f"{c[0]}: {c[1]}" for c in CASES])
def test_bad_input_is_one_line_exit_2_nothing_written(script, args, expect, fx, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TQDM_DISABLE", "1")
    names = {p.name: str(p) for p in fx.iterdir()} | {
        "empty_txt": str(fx / "empty.txt"),
        "prompts": str(fx / "prompts.txt"),
    }
    argv = [a.format(**names) for a in args.split()]
    before = listing(tmp_path, fx)
    rc, err = run_case(script, argv, capsys)
    assert rc == 2, err
    assert len(err) == 1, err
    assert expect.format(**names) in err[0], err
    assert listing(tmp_path, fx) == before


def test_battery_size():
    assert len(CASES) >= 112 and len({(c[0], c[1]) for c in CASES}) == len(CASES)


def test_a_truncated_component_names_its_real_error(fx):
    """load_teacher without the preflight: the component's own error, not a fallback's 'no config.json'."""
    with pytest.raises(teachers.UserError, match=r"cannot load unet from '.*t_trunc/unet': .*") as e:
        teachers.load_teacher(str(fx / "t_trunc"))
    assert "config.json" not in str(e.value) and "\n" not in str(e.value)
