"""The run report (issue 17, part 4): matched-colour pseudo-labels beside the raw view, plots,
one animated clip per sequence, `videocups report` for any run folder, and a real browser
(headless Chromium) showing every image with no console error."""

from __future__ import annotations

import os

import numpy as np
import pytest
from PIL import Image

from browser import find_chromium, inspect_page
from videocups_ray.cli import main
from videocups_ray.pipelines.report import matched_semantic
from videocups_ray.viz import plots


def test_demo_report_has_plots_clips_and_matched_colours(quick_demo):
    report = quick_demo / "report"
    html = (report / "index.html").read_text()
    for needle in ("pseudo-label (matched classes)", "pseudo-label (pseudo-classes)", "training losses",
                   "per-class IoU", "STQ / AQ / SQ per sequence", "time per stage", "Cue errors",
                   "flow EPE (px)", "depth AbsRel", "motion IoU", "Clips per sequence"):
        assert needle in html, needle
    clips = sorted((report / "clips").glob("*.webp"))
    assert len(clips) == 2, clips  # the training sequence and the held-out one
    for clip in clips:
        with Image.open(clip) as im:
            assert im.is_animated and im.n_frames >= 2
        assert f"clips/{clip.name}" in html


def test_matched_semantic_maps_and_voids_unmatched():
    sem = np.array([[0, 1], [2, 3]], np.int32)
    got = matched_semantic(sem, {"pseudo_to_gt": {"0": 13, "1": 0, "3": None}})
    np.testing.assert_array_equal(got, [[13, 0], [255, 255]])


def test_report_command_on_a_shard_folder(quick_demo, capsys):
    shards = quick_demo / "shards_pseudo"
    assert main(["report", str(shards), "--gt", str(quick_demo / "synth")]) == 0
    html = (shards / "report" / "index.html").read_text()
    assert "pseudo-label (matched classes)" in html and "clips/" in html
    assert list((shards / "report" / "clips").glob("*.webp"))


def test_report_command_on_an_empty_folder_is_one_line(tmp_path, capsys):
    assert main(["report", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert "no run found" in err[-1] and str(tmp_path) in err[-1]


def test_plots_refuse_empty_input():
    with pytest.raises(ValueError, match="loss"):
        plots.loss_curves([{"step": 1}])
    with pytest.raises(ValueError, match="stage"):
        plots.stage_times({})


def test_report_renders_in_chromium(quick_demo):
    if find_chromium() is None:
        reason = "Chromium not installed (`make test` installs it as root: apt-get install chromium)"
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(reason)
        pytest.skip(reason)
    page = inspect_page(quick_demo / "report" / "index.html")
    assert page["title"] == "videocups-ray demo"
    assert len(page["images"]) >= 10
    broken = [i["src"] for i in page["images"] if not (i["complete"] and i["width"] > 0)]
    assert not broken, f"images that did not load: {broken}"
    assert any(i["src"].endswith(".webp") for i in page["images"])
    assert all(v["ready"] >= 2 and not v["error"] for v in page["videos"]), page["videos"]
    assert not page["errors"], page["errors"]
