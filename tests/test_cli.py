"""The `videocups` command end to end: synth layout, errors, eval, and the demo report."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from videocups_ray.cli import main


def test_synth_writes_the_kitti_layout(tmp_path, capsys):
    out = tmp_path / "synth"
    assert main(["synth", "--out", str(out), "--sequences", "2", "--frames", "3",
                 "--height", "64", "--width", "128", "--seed", "5", "--quiet"]) == 0
    for seq in ("0000", "0001"):
        for kind in ("images", "panoptic", "depth", "motion"):
            assert sorted(p.name for p in (out / kind / seq).iterdir()) == [
                "000000.png", "000001.png", "000002.png"]
        # Forward flow exists for every frame but the last.
        assert sorted(p.name for p in (out / "flow" / seq).iterdir()) == ["000000.png", "000001.png"]
        calib = json.loads((out / "calib" / f"{seq}.json").read_text())
        assert len(calib["K"]) == 3 and len(calib["poses"]) == 3 and len(calib["poses"][0]) == 4
    assert json.loads(capsys.readouterr().out)["frames"] == 6


def test_bad_override_is_a_clear_error(tmp_path, capsys):
    assert main(["synth", "--out", str(tmp_path), "--set", "synth.nope=1"]) == 2
    assert "synth.nope" in capsys.readouterr().err


def test_eval_of_ground_truth_against_itself(kitti_sample, tmp_path, capsys):
    js = tmp_path / "r.json"
    assert main(["eval", "--gt", str(kitti_sample), "--pred", str(kitti_sample),
                 "--format", "kitti-step", "--json", str(js)]) == 0
    r = json.loads(js.read_text())
    assert r["STQ"] == pytest.approx(1.0) and r["VPQ"] == pytest.approx(1.0)
    assert "STQ" in capsys.readouterr().out


def test_eval_missing_folder_names_it(kitti_sample, tmp_path, capsys):
    assert main(["eval", "--gt", str(tmp_path / "nope"), "--pred", str(kitti_sample), "--format", "kitti-step"]) == 2
    assert "nope" in capsys.readouterr().err


def test_demo_quick_writes_a_report(quick_demo):
    run = quick_demo
    html = (run / "report" / "index.html").read_text()
    assert "SynthDrive ground truth" in html and "Pseudo-labels" in html
    assert "VPS model on the held-out sequence" in html and "model, held-out" in html
    assert (run / "train" / "model.pt").is_file()
    assert list((run / "pred_val" / "panoptic").rglob("*.png"))
    assert not (run / "shards_gt").exists(), "the demo writes ground-truth shards nothing reads"
    imgs = list((run / "report" / "img").glob("*.png"))
    assert len(imgs) >= 8
    assert "img/0000.png" in html
    result = json.loads((run / "summary.json").read_text())  # the demo's result for scripts (issue 14)
    for side in ("pseudo", "model"):
        assert set(result[side]) >= {"STQ", "AQ", "SQ", "AQ_static", "AQ_moving"}
        assert all(0 <= result[side][k] <= 1 for k in ("STQ", "AQ", "SQ"))
    assert result["seconds"]["train"] > 0 and result["seconds"]["total"] >= result["seconds"]["train"]
