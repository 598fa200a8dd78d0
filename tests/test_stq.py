"""STQ / AQ / SQ: reference values of deeplab2 and hand-computed corner cases."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from videocups_ray.data.encodings import decode_kitti_panoptic, read_png
from videocups_ray.data.types import DataError
from videocups_ray.metrics import STQ

SHIFT = 16
DIV = 1 << SHIFT


@pytest.fixture(scope="module")
def kitti_panoptic(kitti_sample) -> list[np.ndarray]:
    """The 10 real KITTI-STEP ground-truth frames as panoptic maps."""
    files = sorted((kitti_sample / "panoptic").glob("*.png"))
    assert files, f"no panoptic PNGs in {kitti_sample}"
    out = []
    for f in files:
        sem, inst = decode_kitti_panoptic(read_png(f), str(f))
        out.append(pan(sem, inst))
    return out


def pan(semantic, instance=0) -> np.ndarray:
    return (np.asarray(semantic, np.int64) << SHIFT) + np.asarray(instance, np.int64)


def run(metric: STQ, gt, pred, seq=1) -> dict:
    metric.reset()
    metric.update(np.asarray(gt), np.asarray(pred), seq)
    return metric.result()


def check(r: dict, stq: float, aq: float, sq: float) -> None:
    assert r["STQ"] == pytest.approx(stq, abs=1e-7)
    assert r["AQ"] == pytest.approx(aq, abs=1e-7)
    assert r["SQ"] == pytest.approx(sq, abs=1e-7)


# --------------------------------------------------------------------------- deeplab2 values
# Expected values from google-research/deeplab2,
# evaluation/numpy/segmentation_and_tracking_quality_test.py, test_basic_examples
# (2 classes, things = [0], ignore 255, bit shift 16): (STQ, AQ, IoU).
GT_A = [[1, 1, 1, 1, 1]]
GT_CROWD = [[0, 1, 1, 1, 1, 1]]
GT_SKY = pan([[1, 0, 0, 0, 0]], [[0, 1, 1, 1, 1]])
DEEPLAB2_BASIC = [
    ("example 0", GT_A, [[1, 1, 1, 1, 1]], (1.0, 1.0, 1.0)),
    ("example 1", GT_A, [[1, 1, 2, 2, 2]], (0.72111026, 0.52, 1.0)),
    ("example 2", GT_A, [[1, 2, 2, 2, 2]], (0.82462113, 0.68, 1.0)),
    ("example 3", GT_A, [[1, 2, 3, 4, 5]], (0.447213596, 0.2, 1.0)),
    ("example 4", GT_A, [[1, 2, 1, 2, 2]], (0.72111026, 0.52, 1.0)),
    ("example 5", GT_A, pan([[1, 0, 0, 0, 0]], [[0, 1, 1, 1, 1]]), (0.50596443, 0.64, 0.4)),
    ("example 6", GT_CROWD, [[1, 1, 1, 1, 1, 1]], (1.0, 1.0, 1.0)),
    ("example 7", GT_CROWD, [[2, 2, 2, 2, 1, 1]], (0.72111026, 0.52, 1.0)),
    ("example 8", GT_CROWD, pan([[0, 0, 1, 0, 0, 0]], [[2, 2, 0, 1, 1, 1]]), (0.40824829, 0.4, 5.0 / 12.0)),
    ("example 9", GT_SKY, [[1, 1, 1, 1, 1]], (0.56568542, 0.8, 0.4)),
    ("example 10", GT_SKY, [[2, 2, 2, 1, 1]], (0.42426407, 0.45, 0.4)),
    ("example 11", GT_SKY, pan([[0, 0, 1, 0, 0]], [[2, 2, 0, 1, 1]]), (0.3, 0.3, 0.3)),
]


@pytest.mark.parametrize("name,gt,pred,expected", DEEPLAB2_BASIC, ids=[c[0] for c in DEEPLAB2_BASIC])
def test_deeplab2_basic_examples(name, gt, pred, expected):
    r = run(STQ(2, [0], 255, DIV), gt, pred)
    check(r, *expected)
    check(r["per_sequence"][1], *expected)


def test_deeplab2_complex_example():
    # deeplab2 test_complex_example: 3 classes (sky, vegetation, cars), things = [2], 3 frames;
    # expected STQ 0.66841773352, AQ 0.55366581415, IoU 0.8069529580309542.
    gt_sem = np.array([
        [[0, 0, 0, 0, 0, 0, 0, 0], [0, 0, 0, 0, 0, 0, 0, 0], [0, 0, 0, 2, 0, 1, 1, 1], [0, 2, 2, 2, 2, 1, 1, 1],
         [2, 2, 2, 2, 2, 2, 1, 1], [2, 2, 2, 2, 2, 2, 2, 1], [2, 2, 2, 2, 2, 2, 2, 1], [2, 2, 2, 2, 2, 2, 1, 1]],
        [[0, 0, 0, 0, 0, 0, 0, 0], [0, 0, 0, 0, 0, 0, 0, 0], [0, 2, 0, 0, 1, 1, 0, 0], [2, 2, 2, 1, 1, 1, 1, 0],
         [2, 2, 2, 2, 1, 1, 1, 1], [2, 2, 2, 2, 2, 1, 1, 1], [2, 2, 2, 2, 2, 1, 1, 1], [2, 2, 2, 2, 1, 1, 1, 1]],
        [[0, 0, 0, 0, 0, 0, 0, 0], [0, 0, 0, 0, 0, 0, 0, 0], [0, 0, 0, 0, 0, 0, 0, 0], [2, 0, 1, 1, 1, 0, 0, 0],
         [2, 2, 1, 1, 1, 1, 0, 0], [2, 2, 2, 1, 1, 1, 1, 0], [2, 2, 2, 1, 1, 1, 1, 1], [2, 2, 2, 1, 1, 1, 1, 1]],
    ])
    gt_inst = np.where(gt_sem == 2, 2, 0)  # the single car track has ID 2 in all frames
    pred_sem = np.array([
        [[0, 0, 0, 0, 0, 0, 0, 0], [0, 0, 0, 0, 0, 0, 0, 0], [0, 0, 0, 0, 0, 1, 0, 0], [0, 0, 0, 2, 2, 1, 1, 1],
         [0, 2, 2, 2, 2, 2, 1, 1], [2, 2, 2, 2, 2, 2, 2, 1], [2, 2, 2, 2, 2, 2, 2, 1], [2, 2, 2, 2, 2, 2, 2, 1]],
        [[0, 0, 0, 0, 0, 0, 0, 0], [0, 0, 0, 0, 0, 0, 0, 0], [0, 0, 0, 0, 1, 1, 0, 0], [0, 2, 2, 2, 1, 1, 1, 1],
         [2, 2, 2, 2, 1, 1, 1, 1], [2, 2, 2, 2, 2, 1, 1, 1], [2, 2, 2, 2, 2, 2, 1, 1], [2, 2, 2, 2, 2, 1, 1, 1]],
        [[0, 0, 0, 0, 0, 0, 0, 0], [0, 0, 0, 0, 0, 0, 0, 0], [0, 0, 0, 0, 1, 0, 0, 0], [0, 0, 1, 1, 1, 1, 0, 0],
         [2, 2, 2, 1, 1, 1, 0, 0], [2, 2, 2, 1, 1, 1, 1, 1], [2, 2, 2, 2, 1, 1, 1, 1], [2, 2, 2, 2, 1, 1, 1, 1]],
    ])
    pred_inst = np.array([
        [[0, 0, 0, 0, 0, 0, 0, 0], [0, 0, 0, 0, 0, 0, 0, 0], [0, 0, 0, 0, 0, 0, 0, 0], [0, 0, 0, 2, 2, 0, 0, 0],
         [0, 2, 2, 2, 2, 1, 0, 0], [2, 2, 2, 2, 2, 1, 1, 0], [2, 2, 2, 2, 1, 1, 1, 0], [2, 2, 2, 2, 1, 1, 1, 0]],
        [[0, 0, 0, 0, 0, 0, 0, 0], [0, 0, 0, 0, 0, 0, 0, 0], [0, 0, 0, 0, 0, 0, 0, 0], [0, 2, 2, 2, 0, 0, 0, 0],
         [2, 2, 2, 2, 0, 0, 0, 0], [2, 2, 2, 2, 2, 0, 0, 0], [2, 2, 2, 2, 1, 1, 0, 0], [2, 2, 2, 2, 1, 0, 0, 0]],
        [[0, 0, 0, 0, 0, 0, 0, 0], [0, 0, 0, 0, 0, 0, 0, 0], [0, 0, 0, 0, 0, 0, 0, 0], [0, 0, 0, 0, 0, 0, 0, 0],
         [2, 2, 2, 0, 0, 0, 0, 0], [2, 2, 2, 0, 0, 0, 0, 0], [2, 2, 2, 2, 0, 0, 0, 0], [2, 2, 2, 2, 0, 0, 0, 0]],
    ])
    m = STQ(3, [2], 255, DIV)
    for t in range(3):
        m.update(pan(gt_sem[t], gt_inst[t]).astype(np.int32), pan(pred_sem[t], pred_inst[t]).astype(np.int32), 1)
    r = m.result()
    check(r, 0.66841773352, 0.55366581415, 0.8069529580309542)
    assert r["per_sequence"][1]["num_frames"] == 3


# --------------------------------------------------------------------------- own corner cases
def test_aq_pools_tracks_over_sequences_and_frames_may_interleave():
    # Sequence A: one 4-pixel track per frame, predicted exactly: track score 1.
    # Sequence B: three 2-pixel tracks, each split into two 1-pixel predictions: each track
    # scores 2 * 1 * (1/2) / 2 = 0.5. Pooled AQ = (1 + 3 * 0.5) / 4 = 0.625 (the mean of the
    # per-sequence AQs would be 0.75).
    m = STQ(2, [0], 255, DIV)
    a_gt, a_pred = np.array([[1, 1, 1, 1]]), np.array([[5, 5, 5, 5]])
    b_gt, b_pred = np.array([[1, 1, 2, 2, 3, 3]]), np.array([[1, 2, 3, 4, 5, 6]])
    m.update(a_gt[:, :2], a_pred[:, :2], "A")  # frame 0 of A
    m.update(b_gt, b_pred, "B")
    m.update(a_gt[:, 2:], a_pred[:, 2:], "A")  # frame 1 of A, after B
    r = m.result()
    assert r["AQ"] == pytest.approx(0.625)
    assert r["SQ"] == pytest.approx(1.0)
    assert r["STQ"] == pytest.approx(np.sqrt(0.625))
    assert r["per_sequence"]["A"]["AQ"] == pytest.approx(1.0)
    assert r["per_sequence"]["B"]["AQ"] == pytest.approx(0.5)
    assert r["per_sequence"]["A"]["num_frames"] == 2
    assert r["num_tracks"] == 4


def test_association_ignores_class_but_class_flip_is_new_track():
    m = STQ(2, [0, 1], 255, DIV)
    gt = pan([[0, 0, 0, 0]], 1)
    # Whole track predicted as class 1, instance 5: association is perfect, semantics wrong.
    r = run(m, gt, pan([[1, 1, 1, 1]], 5))
    assert r["AQ"] == pytest.approx(1.0)
    assert r["SQ"] == pytest.approx(0.0)
    # Same instance ID 1, but half the pixels flip to class 1: two predicted tracks of 2 px.
    # AQ = (2 * 2/4 + 2 * 2/4) / 4 = 0.5; IoU class 0 = 2/4, class 1 = 0/2 -> SQ 0.25.
    r = run(m, gt, pan([[0, 0, 1, 1]], 1))
    assert r["AQ"] == pytest.approx(0.5)
    assert r["SQ"] == pytest.approx(0.25)
    assert r["STQ"] == pytest.approx(np.sqrt(0.125))


def test_crowd_void_and_stuff_under_predicted_tracks():
    m = STQ(2, [0], 255, DIV)  # class 0 thing, class 1 stuff
    # Predicted track over GT crowd (class 0, instance 0) + a 3-pixel track: the crowd pixel
    # leaves the predicted area, so AQ = 1; the crowd pixel is still class 0 for the IoU.
    r = run(m, pan([[0, 0, 0, 0]], [[0, 1, 1, 1]]), pan([[0, 0, 0, 0]], 7))
    check(r, 1.0, 1.0, 1.0)
    # Over GT void: the void pixel is a false-positive association pixel: 3 * 3/4 / 3 = 0.75,
    # and void is no false positive for the IoU (SQ 1).
    r = run(m, pan([[255, 0, 0, 0]], [[0, 1, 1, 1]]), pan([[0, 0, 0, 0]], 7))
    check(r, np.sqrt(0.75), 0.75, 1.0)
    # Over GT stuff: AQ 0.75 again; IoU class 0 = 3/4, class 1 = 0 -> SQ 0.375.
    r = run(m, pan([[1, 0, 0, 0]], [[0, 1, 1, 1]]), pan([[0, 0, 0, 0]], 7))
    check(r, np.sqrt(0.75 * 0.375), 0.75, 0.375)


def test_predicted_thing_with_instance_zero_is_an_ordinary_track():
    m = STQ(2, [0], 255, DIV)
    gt = pan([[0, 0, 0, 0]], 3)
    check(run(m, gt, pan([[0, 0, 0, 0]], 0)), 1.0, 1.0, 1.0)
    # Instance 0 and instance 1 are two tracks: (2 * 2/4 + 2 * 2/4) / 4 = 0.5.
    check(run(m, gt, pan([[0, 0, 0, 0]], [[0, 0, 1, 1]])), np.sqrt(0.5), 0.5, 1.0)


def test_absent_classes_leave_the_iou_mean():
    m = STQ(19, [11, 13], 255, DIV)
    gt = pan([[0, 0, 8, 8]])
    pred = pan([[0, 0, 0, 8]])
    r = run(m, gt, pred)
    # class 0: 2 / 3, class 8: 1 / 2; the 17 absent classes do not count.
    assert r["SQ"] == pytest.approx((2 / 3 + 1 / 2) / 2)
    assert r["per_class_iou"][0] == pytest.approx(2 / 3)
    assert r["per_class_iou"][8] == pytest.approx(0.5)
    assert sum(v is None for v in r["per_class_iou"]) == 17


def test_sequence_without_gt_tracks_has_aq_zero_but_leaves_overall_aq():
    m = STQ(2, [0], 255, DIV)
    m.update(pan([[0, 0]], 1), pan([[0, 0]], 1), "tracks")
    m.update(pan([[1, 1]]), pan([[0, 1]], [[4, 0]]), "stuff-only")  # a predicted track, no GT track
    r = m.result()
    assert r["per_sequence"]["stuff-only"]["AQ"] == 0.0
    assert r["per_sequence"]["stuff-only"]["STQ"] == 0.0
    assert r["AQ"] == pytest.approx(1.0)
    assert r["num_tracks"] == 1


@pytest.mark.parametrize("num_classes,ignore", [(2, 255), (2, 2), (3, 2)], ids=["above", "equal", "inside"])
def test_ignore_prediction_on_valid_gt_counts_like_the_reference(num_classes, ignore):
    # GT: 4 stuff pixels of class 1. Prediction: 2 of class 1, 2 of the ignore label.
    # Class 1: IoU 2/4. The ignore column has union 2 and IoU 0 and, as in deeplab2, enters
    # the mean: SQ = (0.5 + 0) / 2 = 0.25, whatever the position of the ignore label.
    m = STQ(num_classes, [0], ignore, DIV)
    r = run(m, pan([[1, 1, 1, 1]]), pan([[1, 1, ignore, ignore]]))
    assert r["SQ"] == pytest.approx(0.25)
    assert r["per_class_iou"][1] == pytest.approx(0.5)
    assert r["per_class_iou"][0] is None
    if ignore < num_classes:
        assert r["per_class_iou"][ignore] is None
    # Void GT is never a false positive: prediction of class 1 on it keeps IoU 1.
    r = run(m, pan([[ignore, 1]]), pan([[1, 1]]))
    assert r["SQ"] == pytest.approx(1.0)


def test_perfect_prediction_on_real_kitti_frames(kitti_panoptic):
    m = STQ(19, [11, 13], 255, DIV)
    for t, frame in enumerate(kitti_panoptic):
        m.update(frame, frame.copy(), "0001")
    r = m.result()
    check(r, 1.0, 1.0, 1.0)
    assert r["num_tracks"] >= 7


# --------------------------------------------------------------------------- bad input
def test_bad_input_names_sequence_and_frame():
    m = STQ(19, [11, 13], 255, DIV)
    ok = pan([[0, 0], [1, 1]])
    m.update(ok, ok, "seq7")
    with pytest.raises(DataError, match=r"'seq7' frame #1.*shape"):
        m.update(ok, ok[:1], "seq7")
    with pytest.raises(DataError, match=r"'seq7' frame 12.*negative"):
        m.update(ok, ok - 1, "seq7", frame_index=12)
    with pytest.raises(DataError, match=r"prediction has class 19.*label_divisor"):
        m.update(ok, pan([[18, 0], [1, 1]], [[DIV + 3, 0], [0, 0]]), "seq7")
    with pytest.raises(DataError, match="integer"):
        m.update(ok, ok.astype(np.float32), "seq7")
    with pytest.raises(ValueError, match="thing class 19"):
        STQ(19, [19], 255, DIV)
    # Nothing of the failed frames was counted.
    assert m.result()["per_sequence"]["seq7"]["num_frames"] == 1


def test_non_power_of_two_divisor_matches_shift_encoding():
    rng = np.random.default_rng(0)
    sem = rng.integers(0, 4, (2, 6, 7))
    inst = np.where(sem >= 2, rng.integers(0, 3, sem.shape), 0)
    psem = np.where(rng.random(sem.shape) < 0.2, rng.integers(0, 4, sem.shape), sem)
    pinst = np.where(psem >= 2, rng.integers(0, 4, sem.shape), 0)
    results = []
    for div in (DIV, 1000):
        m = STQ(4, [2, 3], 255, div)
        for t in range(2):
            m.update(sem[t] * div + inst[t], psem[t] * div + pinst[t], 0)
        results.append(m.result())
    assert results[0]["STQ"] == pytest.approx(results[1]["STQ"])
    assert results[0]["AQ"] == pytest.approx(results[1]["AQ"])
    assert 0 < results[0]["STQ"] < 1
