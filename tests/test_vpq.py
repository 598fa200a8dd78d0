"""VPQ: hand-computed corner cases of the official evaluation (mcahny/vps tools/eval_vpq.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from videocups_ray.data.encodings import decode_kitti_panoptic, read_png
from videocups_ray.data.types import DataError
from videocups_ray.metrics import VPQ

DIV = 1 << 16
V = 255  # void / ignore class


def pan(semantic, instance=0) -> np.ndarray:
    return np.asarray(semantic, np.int64) * DIV + np.asarray(instance, np.int64)


def vpq(windows=(1,), **kw) -> VPQ:
    """3 classes: 0 stuff, 1 and 2 things."""
    return VPQ(kw.get("num_classes", 3), kw.get("things", [1, 2]), kw.get("ignore", 255), DIV, window_sizes=windows)


def one_frame(gt, pred, **kw) -> dict:
    m = vpq(**kw)
    m.update(np.asarray(gt), np.asarray(pred), "s")
    return m.result()["per_window"][1]


def test_perfect_prediction_is_one_and_stuff_instance_is_dropped():
    gt = pan([[0, 0, 2, 2, 1, 1]], [[0, 0, 4, 4, 9, 9]])
    pred = pan([[0, 0, 2, 2, 1, 1]], [[3, 3, 8, 8, 1, 1]])  # stuff instance 3 is irrelevant
    w = one_frame(gt, pred)
    assert (w["PQ"], w["PQ_thing"], w["PQ_stuff"], w["SQ"], w["RQ"]) == (1.0, 1.0, 1.0, 1.0, 1.0)


def test_tube_iou_over_a_window_must_exceed_one_half():
    # Frames: 4 px of stuff 0 + 4 px of thing track 1. The prediction tracks the thing with
    # ID 7 in frame 0 and ID 8 in frame 1. Window 1: both frames match (PQ 1).
    # Window 2: the 8-px GT tube vs 4-px predicted tubes: IoU 4/8 = 0.5, not > 0.5, so
    # class 2 gets FN 1 + FP 2 (PQ 0); stuff is one perfect tube (PQ 1): PQ = 0.5.
    gt = pan([[0, 0, 0, 0, 2, 2, 2, 2]], [[0, 0, 0, 0, 1, 1, 1, 1]])
    m = vpq(windows=(1, 2))
    m.update(gt, pan([[0, 0, 0, 0, 2, 2, 2, 2]], [[0, 0, 0, 0, 7, 7, 7, 7]]), "s")
    m.update(gt, pan([[0, 0, 0, 0, 2, 2, 2, 2]], [[0, 0, 0, 0, 8, 8, 8, 8]]), "s")
    r = m.result()
    assert r["per_window"][1]["PQ"] == pytest.approx(1.0)
    w2 = r["per_window"][2]
    assert (w2["PQ"], w2["PQ_thing"], w2["PQ_stuff"]) == pytest.approx((0.5, 0.0, 1.0))
    assert w2["per_class"][2] == {"PQ": 0.0, "TP": 0, "FP": 2, "FN": 1}
    assert r["VPQ"] == pytest.approx(0.75)
    assert (r["per_window"][1]["num_windows"], w2["num_windows"]) == (2, 1)


def test_void_is_excluded_from_the_union():
    # GT: 2 void + 2 px of track 1; prediction: one 4-px segment of class 2.
    # union = 4 + 2 - 2 - 2 (void) = 2 -> IoU 1 (0.5 without the void rule).
    w = one_frame(pan([[V, V, 2, 2]], [[0, 0, 1, 1]]), pan([[2, 2, 2, 2]], 5))
    assert w["PQ"] == pytest.approx(1.0)


def test_unmatched_prediction_mostly_on_void_is_no_false_positive():
    # Thing prediction 3/4 on void: not an FP. Stuff 0: GT 3 px, pred 2 px -> IoU 2/3, TP.
    w = one_frame(pan([[V, V, V, 0, 0, 0]]), pan([[2, 2, 2, 2, 0, 0]], [[5, 5, 5, 5, 0, 0]]))
    assert w["PQ"] == pytest.approx(2 / 3)
    assert 2 not in w["per_class"]
    # Exactly half on void is an FP: class 2 PQ 0; stuff GT 6 px, pred 4 px -> IoU 4/6.
    w = one_frame(pan([[V, V, 0, 0, 0, 0, 0, 0]]), pan([[2, 2, 2, 2, 0, 0, 0, 0]], [[5, 5, 5, 5, 0, 0, 0, 0]]))
    assert w["per_class"][2] == {"PQ": 0.0, "TP": 0, "FP": 1, "FN": 0}
    assert w["PQ"] == pytest.approx((2 / 3 + 0.0) / 2)


def test_crowd_is_never_matched_nor_a_false_negative():
    # GT: crowd of class 2 (3 px) + track 1 (3 px). A class-2 prediction lying on the crowd
    # is ignored (same category), the track matches: PQ 1.
    gt = pan([[2, 2, 2, 2, 2, 2]], [[0, 0, 0, 1, 1, 1]])
    w = one_frame(gt, pan([[2, 2, 2, 2, 2, 2]], [[5, 5, 5, 1, 1, 1]]))
    assert w["PQ"] == pytest.approx(1.0)
    assert w["per_class"][2]["FP"] == 0
    # A predicted class-2 segment with instance 0 (same ID value as the crowd) is no match,
    # no FP (on the crowd), and the crowd is no FN: class 2 has nothing -> PQ undefined.
    w = one_frame(pan([[2, 2, 2]], 0), pan([[2, 2, 2]], 0))
    assert w["PQ"] is None and w["per_class"] == {}


def test_crowd_of_another_category_does_not_excuse_a_false_positive():
    # GT crowd of class 1; prediction of class 2 on it: an FP of class 2 (and class 1 has no
    # stats, crowd is no FN) -> PQ 0.
    w = one_frame(pan([[1, 1, 1, 1]], 0), pan([[2, 2, 2, 2]], 3))
    assert w["per_class"] == {2: {"PQ": 0.0, "TP": 0, "FP": 1, "FN": 0}}
    assert w["PQ"] == 0.0


def test_void_plus_own_crowd_together_excuse_a_false_positive():
    # Predicted class-2 segment of 4 px: 1 on void + 2 on class-2 crowd = 3/4 > 0.5 -> no FP.
    w = one_frame(pan([[V, 2, 2, 0]]), pan([[2, 2, 2, 2]], 4))
    assert w["per_class"] == {0: {"PQ": 0.0, "TP": 0, "FP": 0, "FN": 1}}


def test_predicted_ignore_pixels_belong_to_no_segment():
    # GT track 4 px, prediction 3 px + 1 px of the ignore label: IoU 3/4, TP.
    w = one_frame(pan([[2, 2, 2, 2]], 1), pan([[2, 2, 2, V]], [[6, 6, 6, 0]]))
    assert w["PQ"] == pytest.approx(0.75)
    assert w["SQ"] == pytest.approx(0.75) and w["RQ"] == pytest.approx(1.0)


def test_classes_are_pooled_over_sequences_before_averaging():
    # Sequence A: stuff 0 perfect, track of class 2 missed (FN). Sequence B: class 2 perfect.
    # Pooled: class 0 PQ 1; class 2: TP 1 (IoU 1), FN 1 -> 1 / 1.5. PQ = (1 + 2/3) / 2 = 5/6
    # (the mean of per-sequence PQs would be (0.5 + 1) / 2 = 0.75).
    m = vpq()
    m.update(pan([[0, 0, 2, 2]], [[0, 0, 1, 1]]), pan([[0, 0, V, V]]), "A")
    m.update(pan([[2, 2, 2, 2]], 1), pan([[2, 2, 2, 2]], 9), "B")
    assert m.result()["per_window"][1]["PQ"] == pytest.approx(5 / 6)


def test_windows_per_sequence_and_interleaving():
    m = vpq(windows=(1, 2, 3, 4))
    frame = pan([[0, 2]], [[0, 1]])
    for t in range(3):  # sequence "long" (3 frames) interleaved with "short" (1 frame)
        m.update(frame, frame, "long", frame_index=t)
        if t == 0:
            m.update(frame, frame, "short", frame_index=0)
    r = m.result()
    counts = {n: r["per_window"][n]["num_windows"] for n in (1, 2, 3, 4)}
    assert counts == {1: 4, 2: 2, 3: 1, 4: 0}
    assert r["per_window"][4]["PQ"] is None
    assert r["VPQ"] == pytest.approx(1.0)  # mean over the window sizes that have windows
    # Only the last max(window) frames' tables are kept.
    assert all(len(h) <= 4 for h in m._history.values())


def test_tubes_keep_identity_across_a_longer_window():
    # 4 frames; the prediction switches track ID at frame 2. Windows of 3 frames (2 of them)
    # each see 6 px of GT tube, with 4 + 2 px (IoU 4/6, TP + FP of the 2-px tube) or
    # 2 + 4 px (IoU 4/6 again). Class 2 per window: TP 1 (IoU 2/3), FP 1 -> PQ per class
    # over both windows = (4/3) / (2 + 1) = 4/9.
    gt = pan([[2, 2]], [[1, 1]])
    m = vpq(windows=(3,))
    for t, pid in enumerate([5, 5, 6, 6]):
        m.update(gt, pan([[2, 2]], pid), "s")
    w = m.result()["per_window"][3]
    assert w["per_class"][2] == {"PQ": pytest.approx(4 / 9), "TP": 2, "FP": 2, "FN": 0}


def test_perfect_prediction_on_real_kitti_frames(kitti_sample):
    files = sorted((kitti_sample / "panoptic").glob("*.png"))
    assert files, f"no panoptic PNGs in {kitti_sample}"
    m = VPQ(19, [11, 13], 255, DIV, window_sizes=(1, 2, 3, 4))
    for t, f in enumerate(files):
        sem, inst = decode_kitti_panoptic(read_png(f), str(f))
        m.update(pan(sem, inst), pan(sem, inst), "0001", frame_index=t)
    r = m.result()
    assert r["VPQ"] == pytest.approx(1.0)
    assert r["per_window"][4]["num_windows"] == len(files) - 3


def test_bad_input_names_sequence_and_frame():
    m = vpq()
    ok = pan([[0, 2]], [[0, 1]])
    m.update(ok, ok, "s", frame_index=5)
    with pytest.raises(DataError, match=r"'s' frame 5.*temporal order"):
        m.update(ok, ok, "s", frame_index=5)
    with pytest.raises(DataError, match=r"'s' frame 6.*shape"):
        m.update(ok, ok[:, :1], "s", frame_index=6)
    with pytest.raises(DataError, match=r"ground truth has class 3"):
        m.update(pan([[3, 0]]), ok, "s", frame_index=6)
    with pytest.raises(DataError, match="negative"):
        m.update(ok, -ok, "s", frame_index=6)
    with pytest.raises(ValueError, match="window_sizes"):
        vpq(windows=(0, 1))
    m.update(ok, ok, "s", frame_index=6)  # the failed calls left no trace
    assert m.result()["per_window"][1]["num_windows"] == 2
