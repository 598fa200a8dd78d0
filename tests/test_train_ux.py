"""Training UX (issue 14 item 3): the progress bar fed from metrics.jsonl, the loss-curve PNG and
the evaluation command ``videocups train`` prints. Tiny and fast: no Ray, no model."""

from __future__ import annotations

import io
import json
import shlex

import pytest

from videocups_ray.pipelines.train import _ProgressTail, evaluation_command
from videocups_ray.viz.plots import save_loss_curves


def record(step: int, loss: float, **extra) -> dict:
    return {"step": step, "epoch": 0, "loss": loss, "loss_mask": loss / 2, "images_per_s": 3.5,
            "steps_per_s": 1.0, "resumed_from": 0, **extra}


def append(path, *records) -> None:
    with open(path, "a") as f:
        for r in records:
            f.write(json.dumps(r) + "\n")


def test_progress_bar_follows_metrics_file(tmp_path):
    path = tmp_path / "metrics.jsonl"
    out = io.StringIO()
    with _ProgressTail(path, total=10, interval=60, file=out) as tail:
        append(path, record(2, 1.25), record(4, 0.75))
        with open(path, "a") as f:
            f.write('{"step": 6')  # a line still being written is not read yet
        tail._poll()
        assert tail.bar.n == 4 and tail.bar.total == 10
        assert tail.bar.postfix is not None and "loss=0.7500" in tail.bar.postfix
        assert "img_s=3.50" in tail.bar.postfix
        with open(path, "a") as f:
            f.write(', "epoch": 0}\n')  # completes it: a record without a loss only moves the bar
    assert tail.bar.n == 6
    text = out.getvalue()
    assert "6/10" in text and "loss=0.7500" in text


def test_resumed_run_bar_starts_at_the_last_step(tmp_path):
    path = tmp_path / "metrics.jsonl"
    append(path, record(2, 1.0), record(4, 0.5))
    tail = _ProgressTail(path, total=8, interval=60, file=io.StringIO())
    assert tail.bar.n == 4  # old records are not replayed, the bar starts at step 4
    append(path, record(6, 0.4, resumed_from=4))
    tail._poll()
    assert tail.bar.n == 6
    tail.bar.close()


def test_loss_curves_png(tmp_path):
    path = save_loss_curves([record(1, 2.0), record(2, 1.0), {"step": 3, "epoch": 0}], tmp_path / "loss.png")
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 2000
    with pytest.raises(ValueError, match="no training record"):
        save_loss_curves([{"step": 1}], tmp_path / "none.png")


def test_evaluation_command_scores_the_model(tmp_path):
    model = tmp_path / "my run" / "model.pt"
    cmd = evaluation_command(model, "/data/held out", ["configs/a.yaml"])
    infer, evaluate = cmd.split(" && ")
    a, b = shlex.split(infer), shlex.split(evaluate)
    assert a[:2] == ["videocups", "infer"] and a[a.index("--checkpoint") + 1] == str(model)
    pred = a[a.index("--out") + 1]
    assert pred == str(model.parent / "pred") and a[a.index("--input") + 1] == "/data/held out"
    assert b[:2] == ["videocups", "eval"] and b[b.index("--pred") + 1] == pred
    assert b[b.index("--gt") + 1] == "/data/held out" and "--unsupervised" in b
    assert a[a.index("--config") + 1] == b[b.index("--config") + 1] == "configs/a.yaml"
    assert "HELDOUT" in evaluation_command(model)


def test_demo_result_summary_keys():
    from videocups_ray.pipelines.demo import result_summary

    split = {"static": {"AQ": None, "num_tracks": 0}, "moving": {"AQ": 0.25, "num_tracks": 3}}
    pseudo = {"STQ": 0.2, "AQ": 0.1, "SQ": 0.4, "VPQ": 0.3, "AQ_split": split}
    model = {"STQ": 0.3, "AQ": 0.2, "SQ": 0.45, "per_sequence": {}}
    r = result_summary(pseudo, model, {"train": 12.345, "total": 60})
    assert r == {"pseudo": {"STQ": 0.2, "AQ": 0.1, "SQ": 0.4, "AQ_static": None, "AQ_moving": 0.25},
                 "model": {"STQ": 0.3, "AQ": 0.2, "SQ": 0.45}, "seconds": {"train": 12.35, "total": 60.0}}
    json.dumps(r)
