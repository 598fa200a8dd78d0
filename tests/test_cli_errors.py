"""Bad input to the CLI, tried as a new user would: one-line errors naming the file/key, no
traceback, nothing left behind (issue 17, found-#6), and the checkpoint module's errors."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from videocups_ray.cli import main
from videocups_ray.data.checkpoints import CheckpointError, read_torch_file
from videocups_ray.data.types import DataError

ROOT = Path(__file__).resolve().parents[1]


def _one_line_error(capsys, *needles: str) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert err, "no error printed"
    assert not any("Traceback" in line for line in err), "\n".join(err)
    last = err[-1]
    assert "error:" in last, last
    for needle in needles:
        assert needle in last, f"{needle!r} not in {last!r}"
    return last


@pytest.fixture(scope="module")
def tiny_gt(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("gt") / "synth"
    assert main(["synth", "--out", str(out), "--sequences", "1", "--frames", "3", "--height", "32",
                 "--width", "64", "--seed", "1", "--quiet"]) == 0
    return out


def _bad_checkpoints(tmp_path: Path) -> dict[str, Path]:
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"this is not a torch file" * 10)
    state = tmp_path / "train_state.pt"
    torch.save({"step": 3, "epoch": 0, "world_size": 1, "strategy": "ddp"}, state)
    folder = tmp_path / "a_folder"
    folder.mkdir()
    return {"garbage": garbage, "missing": tmp_path / "missing.pt", "directory": folder, "training state": state}


def test_out_is_an_existing_file(tmp_path, capsys):
    f = tmp_path / "taken"
    f.write_text("x")
    assert main(["synth", "--out", str(f), "--sequences", "1", "--frames", "2", "--quiet"]) == 2
    _one_line_error(capsys, str(f), "not a folder")
    assert main(["synth", "--out", str(f / "sub"), "--sequences", "1", "--frames", "2", "--quiet"]) == 2
    _one_line_error(capsys, str(f), "is a file")


def test_out_in_a_read_only_folder(tmp_path, capsys, monkeypatch):
    ro = tmp_path / "ro"
    ro.mkdir()
    if os.geteuid() == 0:  # root ignores permission bits: the OS's answer, given by os.mkdir
        real_mkdir = os.mkdir

        def refuse(path, *args, **kwargs):
            if str(path).startswith(str(ro)):
                raise PermissionError(13, "Permission denied", str(path))
            return real_mkdir(path, *args, **kwargs)
        monkeypatch.setattr(os, "mkdir", refuse)
    else:
        ro.chmod(0o555)
    try:
        assert main(["synth", "--out", str(ro / "x"), "--sequences", "1", "--frames", "2",
                     "--height", "32", "--width", "64", "--quiet"]) == 2
    finally:
        ro.chmod(0o755)
    _one_line_error(capsys, "Permission denied", str(ro / "x"))


def test_eval_json_errors_and_things(tiny_gt, tmp_path, capsys):
    args = ["eval", "--gt", str(tiny_gt), "--pred", str(tiny_gt)]
    assert main([*args, "--json", str(tmp_path)]) == 2  # a folder: refused before scoring
    _one_line_error(capsys, str(tmp_path), "is a folder")
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert main([*args, "--json", str(blocker / "scores.json")]) == 2  # unwritable: after the scores
    captured = capsys.readouterr()
    assert "STQ" in captured.out and "Traceback" not in captured.err
    assert "cannot write the scores" in captured.err.strip().splitlines()[-1]
    assert main([*args, "--things", "abc"]) == 2
    _one_line_error(capsys, "--things", "abc")


@pytest.mark.parametrize("kind", ["garbage", "missing", "directory", "training state"])
def test_infer_and_finetune_with_a_bad_checkpoint(kind, tiny_gt, tmp_path, capsys):
    ckpt = _bad_checkpoints(tmp_path)[kind]
    out = tmp_path / "out_infer"
    assert main(["infer", "--checkpoint", str(ckpt), "--input", str(tiny_gt), "--out", str(out)]) == 2
    _one_line_error(capsys, str(ckpt))
    assert not out.exists(), "a failed infer left its --out behind"
    out = tmp_path / "out_ft"
    assert main(["finetune", "--checkpoint", str(ckpt), "--gt", str(tiny_gt), "--fraction", "0.5",
                 "--out", str(out)]) == 2
    _one_line_error(capsys, str(ckpt))
    assert not out.exists(), "a failed finetune left its --out behind"


def test_training_state_file_gets_a_hint(tmp_path):
    state = _bad_checkpoints(tmp_path)["training state"]
    from videocups_ray.model import load_checkpoint

    with pytest.raises(CheckpointError, match="training-state file"):
        load_checkpoint(state)


def test_finetune_fraction_out_of_range(tiny_gt, tmp_path, capsys):
    assert main(["finetune", "--checkpoint", str(tmp_path / "m.pt"), "--gt", str(tiny_gt), "--fraction", "1.5",
                 "--out", str(tmp_path / "ft")]) == 2
    _one_line_error(capsys, "--fraction 1.5")


def test_checkpoint_error_is_a_data_error_with_one_line(tmp_path):
    bad = _bad_checkpoints(tmp_path)["garbage"]
    with pytest.raises(DataError) as info:
        read_torch_file(bad, "model checkpoint")
    assert isinstance(info.value, CheckpointError) and "\n" not in str(info.value) and str(bad) in str(info.value)


def test_one_torch_load_in_the_package():
    """Every checkpoint is read by data/checkpoints.py (weights_only=True); no other torch.load."""
    sites = [str(p.relative_to(ROOT)) for p in (ROOT / "videocups_ray").rglob("*.py")
             if "torch.load(" in p.read_text()]
    assert sites == ["videocups_ray/data/checkpoints.py"], sites
    assert "weights_only=True" in (ROOT / "videocups_ray/data/checkpoints.py").read_text()


def test_sigint_prints_one_line(tmp_path):
    out = tmp_path / "big"
    env = dict(os.environ, PYTHONPATH=str(ROOT), PYTHONUNBUFFERED="1")
    proc = subprocess.Popen([sys.executable, "-m", "videocups_ray.cli", "synth", "--out", str(out), "--sequences",
                             "50", "--frames", "50", "--height", "64", "--width", "128", "--quiet"],
                            stderr=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
    try:
        deadline = time.monotonic() + 120
        while not any(out.rglob("*.png")) and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.2)
        assert proc.poll() is None, "synth ended before it could be interrupted"
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err
    assert "Traceback" not in err, err
    assert err.strip().splitlines()[-1] == "videocups synth: interrupted; rerun the same command to resume"
