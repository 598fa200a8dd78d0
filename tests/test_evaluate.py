"""Evaluation pipeline: pairing, unsupervised permutation test on real KITTI-STEP frames,
label folders, report, bad input."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest

from videocups_ray.config import EvalConfig
from videocups_ray.data.encodings import encode_cityscapes_panoptic, encode_kitti_panoptic, write_png
from videocups_ray.data.types import DataError, Frame
from videocups_ray.pipelines.evaluate import evaluate, evaluate_paths, format_report, load_label_dir

CFG = EvalConfig()


@pytest.fixture(scope="module")
def kitti_frames(kitti_sample) -> list[Frame]:
    return list(load_label_dir(kitti_sample, "kitti-step"))


def renamed(frames: list[Frame], table: np.ndarray) -> list[Frame]:
    return [Frame(f.video_id, f.frame_index, f.image, semantic=table[f.semantic], instance=f.instance.copy())
            for f in frames]


def permutation_table(seed: int) -> tuple[np.ndarray, dict[int, int]]:
    """GT class -> arbitrary pseudo-class ID (void -> a pseudo-class of its own), plus the
    inverse of the real classes. 40 pseudo-IDs exist for 20 used ones."""
    rng = np.random.default_rng(seed)
    ids = rng.choice(np.arange(3, 250), size=40, replace=False)
    table = np.zeros(256, np.uint8)
    table[:19] = ids[:19]
    table[255] = ids[19]
    return table, {int(ids[c]): c for c in range(19)}


def test_kitti_loader_reads_ten_frames_in_order(kitti_frames):
    assert [f.frame_index for f in kitti_frames] == list(range(10))
    assert {f.video_id for f in kitti_frames} == {"kitti_step_0001"}
    assert kitti_frames[0].semantic.shape == (375, 1242)
    assert kitti_frames[0].shape == (375, 1242)


def test_ground_truth_against_itself_is_perfect(kitti_frames):
    r = evaluate(kitti_frames, kitti_frames, cfg=CFG, unsupervised=False)
    assert (r["STQ"], r["AQ"], r["SQ"], r["VPQ"]) == pytest.approx((1.0, 1.0, 1.0, 1.0))
    assert r["num_frames"] == 10 and "mapping" not in r
    json.dumps(r)  # JSON-able


@pytest.mark.parametrize("one_shot", [False, True], ids=["re-iterable", "one-shot-iterators"])
def test_permuted_pseudo_classes_score_perfectly_after_matching(kitti_frames, one_shot):
    table, inverse = permutation_table(seed=3)
    preds = renamed(kitti_frames, table)
    # Shuffle the prediction order: pairing is by (video_id, frame_index).
    order = np.random.default_rng(0).permutation(len(preds))
    preds = [preds[i] for i in order]
    gt_src, pred_src = (iter(kitti_frames), iter(preds)) if one_shot else (kitti_frames, lambda: iter(preds))
    r = evaluate(gt_src, pred_src, cfg=CFG, unsupervised=True)
    assert r["STQ"] == pytest.approx(1.0)
    assert r["VPQ"] == pytest.approx(1.0)
    mapping = {int(k): v for k, v in r["mapping"]["pseudo_to_gt"].items()}
    present = sorted({int(c) for f in kitti_frames for c in np.unique(f.semantic) if c != 255})
    for c in present:
        assert mapping[int(table[c])] == c
    assert mapping[int(table[255])] == 255  # void-only pseudo-class
    assert int(table[13]) in r["mapping"]["pseudo_things"]
    # Without the matching, the renamed prediction is not scorable as-is.
    with pytest.raises(DataError, match="class"):
        evaluate(kitti_frames, renamed(kitti_frames, table), cfg=CFG, unsupervised=False)


def test_unsupervised_matching_is_not_trivially_perfect(kitti_frames):
    # Merge cars into road: the thing track information is gone, AQ must drop.
    table, _ = permutation_table(seed=5)
    merged = table.copy()
    merged[13] = merged[0]
    preds = renamed(kitti_frames, merged)
    for f in preds:
        f.instance[:] = 0
    r = evaluate(kitti_frames, preds, cfg=CFG, unsupervised=True)
    assert r["AQ"] < 0.1
    assert r["per_class_iou"][13] == 0.0
    assert r["STQ"] < 0.5


def test_missing_prediction_and_shape_mismatch_are_named(kitti_frames):
    with pytest.raises(DataError, match=r"video 'kitti_step_0001' frame 9: no prediction"):
        evaluate(kitti_frames, kitti_frames[:9], cfg=CFG, unsupervised=False)
    bad = [Frame(f.video_id, f.frame_index, f.image, semantic=f.semantic, instance=f.instance)
           for f in kitti_frames]
    bad[4] = Frame(bad[4].video_id, 4, bad[4].image, semantic=bad[4].semantic[:, :-1], instance=bad[4].instance[:, :-1])
    with pytest.raises(DataError, match=r"'kitti_step_0001' frame 4.*shape"):
        evaluate(kitti_frames, bad, cfg=CFG, unsupervised=False)
    bad[4] = Frame(bad[4].video_id, 4, bad[4].image, semantic=kitti_frames[4].semantic,
                   instance=kitti_frames[4].instance + CFG.label_divisor)
    with pytest.raises(DataError, match=r"prediction video 'kitti_step_0001' frame 4: instance IDs"):
        evaluate(kitti_frames, bad, cfg=CFG, unsupervised=False)


def test_extra_predictions_are_reported(caplog):
    sem = np.zeros((4, 5), np.uint8)
    inst = np.zeros((4, 5), np.int32)
    img = np.zeros((4, 5, 3), np.uint8)
    gt = [Frame("a", 0, img, sem, inst)]
    pred = [Frame("a", 0, img, sem, inst), Frame("a", 1, img, sem, inst)]
    with caplog.at_level(logging.WARNING):
        r = evaluate(gt, pred, cfg=CFG)
    assert r["num_frames"] == 1
    assert "1 prediction frame(s) have no ground-truth" in caplog.text


def test_label_folders_and_report(tmp_path, kitti_sample):
    rng = np.random.default_rng(1)
    for seq in ("0002", "0007"):
        for t in range(3):
            sem = rng.choice(np.array([0, 8, 13, 255], np.uint8), size=(6, 9))
            inst = np.where(sem == 13, rng.integers(1, 3, sem.shape), 0).astype(np.int32)
            write_png(tmp_path / "gt" / "panoptic" / seq / f"{t:06d}.png", encode_kitti_panoptic(sem, inst))
            write_png(tmp_path / "cs" / seq / f"{t:06d}.png", encode_cityscapes_panoptic(sem, inst))
            # Prediction: pseudo-classes 100 + class (void left as void).
            psem = np.where(sem == 255, 255, sem + 100).astype(np.uint8)
            write_png(tmp_path / "pred" / "panoptic" / seq / f"{t:06d}.png", encode_kitti_panoptic(psem, inst))
    r = evaluate_paths(tmp_path / "gt", tmp_path / "pred", fmt="kitti-step", cfg=CFG, unsupervised=True)
    assert r["STQ"] == pytest.approx(1.0) and r["num_frames"] == 6
    assert set(r["per_sequence"]) == {"0002", "0007"}
    assert r["mapping"]["pseudo_to_gt"] == {"100": 0, "108": 8, "113": 13}
    frames = list(load_label_dir(tmp_path / "cs", "cityscapes-vps"))
    assert [(f.video_id, f.frame_index) for f in frames][:4] == [("0002", 0), ("0002", 1), ("0002", 2), ("0007", 0)]
    text = format_report(r)
    for needle in ("STQ", "VPQ per window", "0007", "13 car", "113->13H"):
        assert needle in text
    # A full dataset folder is read with the data layer's reader; predictions from label PNGs.
    pred_dir = tmp_path / "kpred" / "panoptic" / "kitti_step_0001"
    for f in sorted((kitti_sample / "panoptic").glob("*.png")):
        pred_dir.mkdir(parents=True, exist_ok=True)
        (pred_dir / f.name).write_bytes(f.read_bytes())
    rk = evaluate_paths(kitti_sample, tmp_path / "kpred", fmt="kitti-step", cfg=CFG)
    assert rk["STQ"] == pytest.approx(1.0) and rk["num_frames"] == 10
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no label PNGs"):
        list(load_label_dir(tmp_path / "empty", "kitti-step"))
    (tmp_path / "odd").mkdir()
    write_png(tmp_path / "odd" / "frame_a.png", encode_kitti_panoptic(sem, inst))
    with pytest.raises(DataError, match="frame_a.png: cannot read a frame index"):
        list(load_label_dir(tmp_path / "odd", "kitti-step"))
