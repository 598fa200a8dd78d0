"""``videocups eval`` across formats: --gt-format / --pred-format, DVPQ on Cityscapes-DVPS
ground truth against ViP-DeepLab predictions, the --protocol option, and the hint towards
--unsupervised when predictions hold pseudo-classes."""

from __future__ import annotations

import json

import numpy as np
import pytest
from pycocotools import mask as coco_mask

from videocups_ray import cli
from videocups_ray.config import EvalConfig
from videocups_ray.data.encodings import encode_kitti_panoptic, write_png
from videocups_ray.data.formats import write_prediction
from videocups_ray.data.types import DataError
from videocups_ray.pipelines.evaluate import evaluate_paths

H, W = 10, 12


def _dvps(root, n=3):
    """Cityscapes-DVPS ground truth: road, a car (13, id 1), void 32 on the top row, depth."""
    truth = []
    for t in range(n):
        stem = f"000001_{t:06d}_munster_000105_{t:06d}"
        label = np.zeros((H, W), np.uint16)
        label[3:8, 2:6] = 13 * 1000 + 1
        label[3:8, 8:11] = 10 * 1000  # sky
        label[0] = 32000
        depth = np.full((H, W), 20.0, np.float32)
        depth[3:8, 2:6] = 8.0
        write_png(root / f"{stem}_leftImg8bit.png", np.zeros((H, W, 3), np.uint8))
        write_png(root / f"{stem}_gtFine_instanceTrainIds.png", label)
        write_png(root / f"{stem}_depth.png", (depth * 256).astype(np.uint16))
        sem = np.where(label >= 1000, label // 1000, label).astype(np.uint8)
        sem[0] = 255
        truth.append((sem, np.where(label >= 1000, label % 1000, 0).astype(np.int32), depth))
    return truth


def test_cli_dvpq_dvps_ground_truth_against_vip_deeplab_predictions(tmp_path, capsys):
    truth = _dvps(tmp_path / "gt")
    for t, (sem, inst, depth) in enumerate(truth):
        write_prediction("vip-deeplab", tmp_path / "good", "000001", t, sem, inst, depth=depth)
        write_prediction("vip-deeplab", tmp_path / "far", "000001", t, sem, inst, depth=depth * 2)
    out = tmp_path / "r.json"
    rc = cli.main(["eval", "--gt", str(tmp_path / "gt"), "--pred", str(tmp_path / "good"),
                   "--gt-format", "cityscapes-vps", "--pred-format", "vip-deeplab",
                   "--protocol", "vip-deeplab", "--json", str(out)])
    assert rc == 0 and "DVPQ" in capsys.readouterr().out
    r = json.loads(out.read_text())
    assert r["config"]["protocol"] == "vip-deeplab" and r["VPQ"] == pytest.approx(1.0)
    assert r["DVPQ"]["DVPQ"] == pytest.approx(1.0) and r["DVPQ"]["depth"]["AbsRel"] == pytest.approx(0.0)
    # Depth off by 2x everywhere: relative error 1 > every threshold, so every predicted pixel
    # with ground-truth depth is rejected: no TP, DVPQ 0; AbsRel 1. Formats detected here.
    r = evaluate_paths(tmp_path / "gt", tmp_path / "far", cfg=EvalConfig(things=(11, 13)))
    assert r["VPQ"] == pytest.approx(1.0) and r["DVPQ"]["DVPQ"] == 0.0
    assert r["DVPQ"]["depth"]["AbsRel"] == pytest.approx(1.0)


def test_gt_and_pred_in_different_formats_mots(tmp_path):
    car = np.zeros((H, W), bool)
    car[2:6, 1:5] = True
    rle = coco_mask.encode(np.asfortranarray(car.astype(np.uint8)))["counts"].decode()
    (tmp_path / "gt" / "instances_txt").mkdir(parents=True)
    (tmp_path / "gt" / "instances_txt" / "0001.txt").write_text(
        "".join(f"{t} 1004 1 {H} {W} {rle}\n" for t in range(3)))
    for t in range(3):
        sem = np.where(car, 13, 255).astype(np.uint8)
        write_prediction("kitti-step", tmp_path / "pred", "0001", t, sem, np.where(car, 9, 0))
    r = evaluate_paths(tmp_path / "gt", tmp_path / "pred", gt_format="mots", pred_format="kitti-step",
                       cfg=EvalConfig(things=(11, 13)))
    assert r["STQ"] == pytest.approx(1.0) and r["num_frames"] == 3 and "DVPQ" not in r


def test_pseudo_classes_without_unsupervised_suggest_the_flag(tmp_path, capsys):
    # Before: "prediction has class 21 ... not in [0, 19)" with no word of --unsupervised.
    sem = np.full((H, W), 21, np.uint8)  # a pseudo-class of K = 27
    for t in range(2):
        write_png(tmp_path / "gt" / "panoptic" / "s" / f"{t:06d}.png", encode_kitti_panoptic(sem * 0, sem * 0))
        write_png(tmp_path / "pred" / "panoptic" / "s" / f"{t:06d}.png", encode_kitti_panoptic(sem, sem * 0))
    with pytest.raises(DataError, match="class 21 .*pass --unsupervised"):
        evaluate_paths(tmp_path / "gt", tmp_path / "pred", fmt="kitti-step", cfg=EvalConfig())
    assert cli.main(["eval", "--gt", str(tmp_path / "gt"), "--pred", str(tmp_path / "pred")]) == 2
    assert "--unsupervised" in capsys.readouterr().err
    r = evaluate_paths(tmp_path / "gt", tmp_path / "pred", cfg=EvalConfig(), unsupervised=True)
    assert r["mapping"]["pseudo_to_gt"] == {"21": 0} and r["SQ"] == pytest.approx(1.0)


def test_depth_cue_written_into_shards_is_scored_with_dvpq(tmp_path):
    """labeling.write_depth_cue puts the pseudo-labeler's depth into the shards' optional depth
    column; eval against SynthDrive (which has depth ground truth) then reports DVPQ."""
    from videocups_ray.config import Config, with_overrides
    from videocups_ray.data.shards import read_shards
    from videocups_ray.data.synthdrive import write_synth_dataset
    from videocups_ray.pipelines.pseudolabel import run_local

    cfg = with_overrides(
        Config(), synth={"sequences": 1, "frames": 6, "height": 64, "width": 128, "seed": 5},
        labeling={"num_clusters": 6, "kmeans_iters": 4, "kmeans_samples_per_frame": 64,
                  "kmeans_frames_per_video": 2, "clip_length": 3, "write_depth_cue": True},
        eval={"depth_thresholds": (1e9, 0.5, 0.1)})
    write_synth_dataset(cfg.synth, tmp_path / "synth", progress=False)
    run_local(cfg, tmp_path / "synth", tmp_path / "shards", progress=False)
    rows = list(read_shards(tmp_path / "shards"))
    assert len(rows) == 6 and all(f.depth is not None and f.depth.shape == (64, 128) for f in rows)
    assert all(np.isfinite(f.depth).all() and (f.depth > 0).any() for f in rows)
    r = evaluate_paths(tmp_path / "synth", tmp_path / "shards", cfg=cfg.eval, unsupervised=True)
    d = r["DVPQ"]
    assert set(d["per_threshold"]) == {"1000000000.0", "0.5", "0.1"} and 0.0 <= d["DVPQ"] <= 1.0
    # a threshold no depth error reaches rejects nothing: DVPQ is the plain VPQ
    assert d["per_threshold"]["1000000000.0"]["VPQ"] == pytest.approx(r["VPQ"], abs=1e-12)
    assert d["per_threshold"]["0.1"]["VPQ"] != pytest.approx(r["VPQ"])  # the cue is far from exact
    assert d["depth"]["AbsRel"] > 0 and d["depth"]["num_frames"] == 6
