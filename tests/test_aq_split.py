"""AQ split into static and moving ground-truth tracks (issue 14): hand-computed values, and
evaluate() reporting it when the ground truth carries a motion mask."""

from __future__ import annotations

import numpy as np
import pytest

from videocups_ray.config import EvalConfig
from videocups_ray.data.types import DataError, Frame
from videocups_ray.metrics import STQ
from videocups_ray.metrics.aq_split import TrackMotion, aq_split
from videocups_ray.pipelines.evaluate import evaluate, format_report

DIV = 1000
# One 1x8 frame, thing class 1. GT: track A (1001) on pixels 0-3, track B (1002) on 4-7.
GT = np.array([[1001] * 4 + [1002] * 4], np.int64)
# A predicted perfectly; B split into two predicted tracks of 2 pixels each.
PRED = np.array([[1001] * 4 + [1005] * 2 + [1006] * 2], np.int64)
# Track A: TPA 4, |gt| 4, |pred| 4 -> 4*4/4/4 = 1.0.
# Track B: two pairs, each TPA 2, |pred| 2: 2*2/(4+2-2)/4 = 0.25 -> 0.5. AQ = 0.75.
MOTION = np.array([[0, 0, 0, 1, 1, 1, 1, 1]], bool)  # A: 1/4 on the mask, B: 4/4


def scored() -> STQ:
    stq = STQ(num_classes=3, things=(1,), ignore_label=255, label_divisor=DIV)
    stq.update(GT, PRED, "s")
    return stq


def test_split_by_hand():
    stq = scored()
    assert stq.result()["AQ"] == pytest.approx(0.75)
    assert stq.track_scores() == {"s": pytest.approx({1001: 1.0, 1002: 0.5})}
    tm = TrackMotion(0.5)
    tm.update(GT, MOTION, "s")
    assert not tm.is_moving("s", 1001) and tm.is_moving("s", 1002)
    split = aq_split(stq, tm.is_moving)
    assert split == {"static": {"AQ": pytest.approx(1.0), "num_tracks": 1},
                     "moving": {"AQ": pytest.approx(0.5), "num_tracks": 1}}


def test_fraction_is_pooled_over_frames_and_threshold_applies():
    tm = TrackMotion(0.5)
    tm.update(GT, MOTION, "s")
    tm.update(GT, np.zeros_like(MOTION), "s")  # B now 4/8 on the mask: still moving (>= 0.5)
    assert tm.is_moving("s", 1002) and not tm.is_moving("s", 1001)
    tm.update(GT, np.zeros_like(MOTION), "s")  # B 4/12: static
    assert not tm.is_moving("s", 1002)
    low = TrackMotion(0.25)
    low.update(GT, MOTION, "s")  # A 1/4 >= 0.25: moving too
    split = aq_split(scored(), low.is_moving)
    assert split["static"] == {"AQ": None, "num_tracks": 0}
    assert split["moving"] == {"AQ": pytest.approx(0.75), "num_tracks": 2}


def test_bad_input_names_the_frame():
    tm = TrackMotion()
    with pytest.raises(DataError, match="frame 3: motion mask shape"):
        tm.update(GT, MOTION[:, :4], "s", frame_index=3)
    with pytest.raises(DataError, match="no motion mask"):
        tm.is_moving("other", 1001)
    with pytest.raises(ValueError):
        TrackMotion(0.0)


def frame(pan: np.ndarray, index: int, motion: np.ndarray | None) -> Frame:
    extra = {} if motion is None else {"motion": motion}
    return Frame("s", index, np.zeros((*pan.shape, 3), np.uint8), semantic=(pan // DIV).astype(np.uint8),
                 instance=(pan % DIV).astype(np.int32), extra=extra)


@pytest.mark.parametrize("unsupervised", [False, True])
def test_evaluate_reports_split_when_gt_has_motion(unsupervised):
    cfg = EvalConfig(num_classes=3, things=(1,), label_divisor=DIV, window_sizes=(1,))
    gt = [frame(GT, 0, MOTION)]
    r = evaluate(gt, [frame(PRED, 0, None)], cfg=cfg, unsupervised=unsupervised)
    assert r["AQ_split"]["static"]["AQ"] == pytest.approx(1.0)
    assert r["AQ_split"]["moving"]["AQ"] == pytest.approx(0.5)
    assert "AQ by ground-truth track motion" in format_report(r)
    r = evaluate([frame(GT, 0, None)], [frame(PRED, 0, None)], cfg=cfg, unsupervised=unsupervised)
    assert "AQ_split" not in r
