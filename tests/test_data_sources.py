"""Frame sources: KITTI-STEP (real sample + SynthDrive-style extras), Cityscapes-VPS, video
files, image folders, prediction writers, and every kind of bad input."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from videocups_ray.data.cityscapes_vps import CityscapesVpsSource
from videocups_ray.data.encodings import (
    encode_cityscapes_panoptic,
    encode_kitti_depth,
    encode_kitti_flow,
    encode_kitti_panoptic,
    write_png,
)
from videocups_ray.data.kitti_step import KittiStepSource
from videocups_ray.data.predictions import (
    CityscapesVpsPredictions,
    KittiStepPredictions,
    write_cityscapes_vps_prediction,
    write_kitti_step_prediction,
)
from videocups_ray.data.formats import FORMATS, detect_format, open_source
from videocups_ray.data.types import DataError, UnknownFormatError
from videocups_ray.data.video import ImageFolderSource, VideoFileSource

H, W = 24, 40


def _rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


def _labels(rng: np.random.Generator, h: int = H, w: int = W) -> tuple[np.ndarray, np.ndarray]:
    semantic = rng.choice(np.array([0, 2, 8, 11, 13, 255], np.uint8), size=(h, w))
    instance = np.where(np.isin(semantic, (11, 13)), rng.integers(1, 40, size=(h, w)), 0).astype(np.int32)
    return semantic, instance


def _write_kitti(root: Path, seqs: dict[str, int], *, extras: bool = False, seed: int = 0) -> dict:
    """A multi-sequence KITTI-STEP folder; returns the arrays written, keyed by (seq, frame)."""
    rng = _rng(seed)
    truth = {}
    for seq, n in seqs.items():
        poses = []
        for i in range(n):
            image = rng.integers(0, 256, size=(H, W, 3), dtype=np.uint8)
            sem, inst = _labels(rng)
            write_png(root / "images" / seq / f"{i:06d}.png", image)
            write_png(root / "panoptic" / seq / f"{i:06d}.png", encode_kitti_panoptic(sem, inst))
            item = {"image": image, "semantic": sem, "instance": inst}
            if extras:
                depth = rng.uniform(1, 80, size=(H, W)).astype(np.float32)
                motion = rng.random((H, W)) > 0.8
                write_png(root / "depth" / seq / f"{i:06d}.png", encode_kitti_depth(depth))
                write_png(root / "motion" / seq / f"{i:06d}.png", motion.astype(np.uint8) * 255)
                item.update(depth=depth, motion=motion)
                if i < n - 1:
                    flow = rng.normal(0, 5, size=(H, W, 2)).astype(np.float32)
                    valid = rng.random((H, W)) > 0.1
                    write_png(root / "flow" / seq / f"{i:06d}.png", encode_kitti_flow(flow, valid))
                    item.update(flow=flow, flow_valid=valid)
                poses.append((np.eye(4) + i * 0.1).tolist())
            truth[seq, i] = item
        if extras:
            (root / "calib").mkdir(parents=True, exist_ok=True)
            K = [[30.0, 0, W / 2], [0, 30.0, H / 2], [0, 0, 1]]
            (root / "calib" / f"{seq}.json").write_text(json.dumps({"K": K, "poses": poses}))
    return truth


# --------------------------------------------------------------------------- KITTI-STEP
def test_kitti_step_sample_reads_with_persistent_car_tracks(kitti_sample):
    src = open_source(kitti_sample)
    assert isinstance(src, KittiStepSource) and src.has_labels
    assert src.videos() == ["kitti_step_0001"]
    assert src.num_frames("kitti_step_0001") == 10
    frames = list(src)
    assert [f.frame_index for f in frames] == list(range(10))
    for f in frames:
        assert f.image.shape == (375, 1242, 3) and f.image.dtype == np.uint8
        assert f.semantic.shape == f.instance.shape == (375, 1242)
        cars = set(np.unique(f.instance[f.semantic == 13]).tolist())
        assert {2, 3, 4, 5, 6, 7} <= cars, f"frame {f.frame_index}: car tracks {sorted(cars)}"
        assert not (f.instance[f.semantic == 10] > 0).any()  # sky is stuff: no instance IDs
    part = list(src.frames("kitti_step_0001", start=3, stop=5))
    assert [f.frame_index for f in part] == [3, 4]
    np.testing.assert_array_equal(part[0].instance, frames[3].instance)


def test_kitti_step_multi_sequence_with_synthdrive_extras(tmp_path):
    truth = _write_kitti(tmp_path, {"0000": 3, "0001": 2}, extras=True)
    (tmp_path / "synthdrive.json").write_text(json.dumps({"seed": 7}))
    assert detect_format(str(tmp_path)) == "synthdrive"
    src = open_source(tmp_path)
    assert src.videos() == ["0000", "0001"] and len(src) == 5 and src.meta == {"seed": 7}
    for f in src:
        t = truth[f.video_id, f.frame_index]
        np.testing.assert_array_equal(f.image, t["image"])
        np.testing.assert_array_equal(f.semantic, t["semantic"])
        np.testing.assert_array_equal(f.instance, t["instance"])
        np.testing.assert_allclose(f.depth, t["depth"], atol=1 / 256)
        np.testing.assert_array_equal(f.extra["motion"], t["motion"])
        assert f.extra["K"].shape == (3, 3) and f.extra["pose"][0, 0] == pytest.approx(1 + 0.1 * f.frame_index)
        last = f.frame_index == src.num_frames(f.video_id) - 1
        assert (f.flow is None) == last
        if not last:
            np.testing.assert_array_equal(f.flow_valid, t["flow_valid"])
            np.testing.assert_allclose(f.flow[t["flow_valid"]], t["flow"][t["flow_valid"]], atol=1 / 64)


def test_kitti_step_prediction_round_trip(tmp_path):
    rng = _rng(1)
    written = {}
    for i in range(3):
        sem, inst = _labels(rng)
        inst[0, 0] = 60000  # needs the G byte
        write_kitti_step_prediction(tmp_path, "seq_a", i, sem, inst)
        written["seq_a", i] = (sem, inst)
    preds = KittiStepPredictions(tmp_path)
    assert preds.videos() == ["seq_a"] and [f.frame_index for f in preds] == [0, 1, 2]
    for f in preds:
        np.testing.assert_array_equal(f.semantic, written[f.video_id, f.frame_index][0])
        np.testing.assert_array_equal(f.instance, written[f.video_id, f.frame_index][1])
    assert not list(tmp_path.rglob("*.tmp*"))
    with pytest.raises(DataError, match="seq_a.*frame 9"):
        write_kitti_step_prediction(tmp_path, "seq_a", 9, sem, inst + 70000)


# --------------------------------------------------------------------------- Cityscapes-VPS
def test_cityscapes_vps_reads_train_id_and_label_id_files(tmp_path):
    rng = _rng(2)
    img_dir, lab_dir = tmp_path / "img", tmp_path / "panoptic_inst"
    truth = {}
    for frame in (0, 5, 10):
        stem = f"0003_{frame:04d}_frankfurt_000000_{1000 + frame:06d}"
        image = rng.integers(0, 256, size=(H, W, 3), dtype=np.uint8)
        sem, inst = _labels(rng)
        write_png(img_dir / f"{stem}_leftImg8bit.png", image)
        write_png(lab_dir / f"{stem}_gtFine_instanceTrainIds.png", encode_cityscapes_panoptic(sem, inst))
        truth[frame] = (image, sem, inst)
    # a second video in the VPS label-ID encoding: 26 = car (train 13), 7 = road (train 0), 4 = static (void)
    final = np.full((H, W), 7, np.uint16)
    final[:5] = 4
    final[10:, 10:20] = 26 * 1000 + 3
    final[10:, 25:] = 26  # a crowd region: class without instance
    write_png(img_dir / "0004_0000_frankfurt_000001_000000_leftImg8bit.png", np.zeros((H, W, 3), np.uint8))
    write_png(lab_dir / "0004_0000_frankfurt_000001_000000_final_mask.png", final)

    assert detect_format(str(tmp_path)) == "cityscapes-vps"
    src = open_source(tmp_path)
    assert isinstance(src, CityscapesVpsSource) and src.has_labels
    assert src.videos() == ["0003", "0004"] and src.num_frames("0003") == 3
    for f in src.frames("0003"):
        image, sem, inst = truth[f.frame_index]
        np.testing.assert_array_equal(f.image, image)
        np.testing.assert_array_equal(f.semantic, sem)
        np.testing.assert_array_equal(f.instance, inst)
    (f,) = src.frames("0004")
    assert f.semantic[0, 0] == 255 and f.semantic[20, 0] == 0
    assert f.semantic[20, 15] == 13 and f.instance[20, 15] == 3
    assert f.semantic[20, 30] == 13 and f.instance[20, 30] == 0


def test_cityscapes_vps_prediction_round_trip(tmp_path):
    rng = _rng(3)
    sem, inst = _labels(rng)
    inst[0, 0] = 999
    write_cityscapes_vps_prediction(tmp_path, "0005", 25, sem, inst)
    preds = CityscapesVpsPredictions(tmp_path)
    assert [f.frame_index for f in preds] == [25]
    (got,) = preds.frames("0005")
    np.testing.assert_array_equal(got.semantic, sem)
    np.testing.assert_array_equal(got.instance, inst)
    with pytest.raises(DataError, match="0005.*frame 26.*999"):
        write_cityscapes_vps_prediction(tmp_path, "0005", 26, sem, inst + 1000)


# --------------------------------------------------------------------------- video, images
@pytest.mark.parametrize(("ext", "fourcc"), [("avi", "MJPG"), ("mp4", "mp4v")])
def test_video_file_reads_every_frame(tmp_path, ext, fourcc):
    path = tmp_path / f"clip.{ext}"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), 10, (96, 64))
    written = []
    for i in range(9):
        image = np.full((64, 96, 3), 40, np.uint8)
        image[:, i * 8: i * 8 + 24] = (220, 60, 30)  # a red bar moving right
        written.append(image)
        writer.write(np.ascontiguousarray(image[..., ::-1]))
    writer.release()
    src = open_source(path)
    assert isinstance(src, VideoFileSource) and src.videos() == ["clip"] and src.num_frames("clip") == 9
    frames = list(src)
    assert [f.frame_index for f in frames] == list(range(9))
    for f, image in zip(frames, written):
        assert np.abs(f.image.astype(int) - image).mean() < 8  # lossy codec, but RGB order kept
    assert [f.frame_index for f in src.frames("clip", 4, 6)] == [4, 5]
    np.testing.assert_array_equal(next(src.frames("clip", 4, 5)).image, frames[4].image)


def test_image_folder_glob_and_list(tmp_path):
    rng = _rng(4)
    for seq in ("a", "b"):
        for i in range(3):
            write_png(tmp_path / seq / f"img_{i:03d}.png", rng.integers(0, 256, (H, W, 3), dtype=np.uint8))
    src = open_source(tmp_path / "a")
    assert isinstance(src, ImageFolderSource) and src.videos() == ["a"] and src.num_frames("a") == 3
    globbed = open_source(str(tmp_path / "*" / "*.png"))
    assert globbed.videos() == ["a", "b"] and len(globbed) == 6
    listing = tmp_path / "list.txt"
    listing.write_text("# frames\nb/img_002.png\nb/img_000.png\n\n")
    listed = open_source(listing)
    assert listed.videos() == ["b"]
    assert [Path(f.extra["path"]).name for f in listed] == ["img_000.png", "img_002.png"]
    write_png(tmp_path / "a" / "img_003.png", np.zeros((H + 1, W, 3), np.uint8))
    with pytest.raises(DataError, match="img_003.png.*differs"):
        list(open_source(tmp_path / "a"))


# --------------------------------------------------------------------------- bad input
def test_unknown_format_names_it_and_lists_known():
    with pytest.raises(UnknownFormatError, match="'nuscenes'") as err:
        open_source("/anything", format="nuscenes")
    for name in FORMATS:
        assert name in str(err.value)


def test_missing_inputs_are_errors(tmp_path):
    with pytest.raises(DataError, match="no such file or folder"):
        open_source(tmp_path / "nope")
    with pytest.raises(DataError, match="folder not found"):
        KittiStepSource(tmp_path / "nope")
    with pytest.raises(DataError, match="synthdrive.json"):
        open_source(tmp_path, format="synthdrive")
    with pytest.raises(DataError, match="no images"):
        open_source(tmp_path, format="images")


def test_truncated_and_corrupt_png_name_the_file(tmp_path):
    _write_kitti(tmp_path, {"0000": 2})
    target = tmp_path / "images" / "0000" / "000001.png"
    data = target.read_bytes()
    target.write_bytes(data[: len(data) // 2])
    src = open_source(tmp_path)
    first = next(src.frames("0000", 0, 1))  # frames before the bad one still read
    assert first.frame_index == 0
    with pytest.raises(DataError, match=r"000001\.png: truncated PNG"):
        list(src)
    target.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 64 + data[-12:])
    with pytest.raises(DataError, match=r"000001\.png: corrupt PNG"):
        list(open_source(tmp_path))


def test_label_size_mismatch_and_missing_label(tmp_path):
    _write_kitti(tmp_path, {"0000": 2})
    sem, inst = _labels(_rng(5), H, W + 2)
    write_png(tmp_path / "panoptic" / "0000" / "000001.png", encode_kitti_panoptic(sem, inst))
    with pytest.raises(DataError, match=r"000001\.png: label size 42x24 differs from image"):
        list(open_source(tmp_path))
    (tmp_path / "panoptic" / "0000" / "000001.png").unlink()
    with pytest.raises(DataError, match=r"000001\.png: label file missing for image"):
        open_source(tmp_path)


def test_cityscapes_missing_label_and_coco_panoptic_refused(tmp_path):
    write_png(tmp_path / "0001_0000_x_000000_000000_leftImg8bit.png", np.zeros((H, W, 3), np.uint8))
    write_png(tmp_path / "0001_0001_x_000000_000001_leftImg8bit.png", np.zeros((H, W, 3), np.uint8))
    write_png(tmp_path / "0001_0000_x_000000_000000_gtFine_panoptic.png", np.zeros((H, W, 3), np.uint8))
    with pytest.raises(DataError, match="0001_0001_x_000000_000001_leftImg8bit.png: no label file"):
        CityscapesVpsSource(tmp_path)
    (tmp_path / "0001_0001_x_000000_000001_leftImg8bit.png").unlink()
    with pytest.raises(DataError, match="gtFine_panoptic.png: 3-channel panoptic PNG is COCO"):
        list(CityscapesVpsSource(tmp_path))


def test_undecodable_and_truncated_video(tmp_path):
    fake = tmp_path / "fake.mp4"
    fake.write_bytes(b"this is not a video" * 100)
    with pytest.raises(DataError, match="fake.mp4: cannot open video"):
        open_source(fake)
    path = tmp_path / "cut.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10, (64, 48))
    rng = _rng(6)
    for _ in range(10):
        writer.write(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8))
    writer.release()
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * 0.6)])
    src = VideoFileSource(path)
    assert src.num_frames("cut") == 10  # the header still claims 10
    with pytest.raises(DataError, match=r"cut.avi: cannot decode frame \d of 10"):
        list(src)
