"""The format registry and the readers of the paper's other datasets, on small files built in
each dataset's own format: Cityscapes-DVPS (16-bit PNGs with void 32, _depth.png),
ViP-DeepLab RGB prediction PNGs, KITTI-MOTS / MOTSChallenge (text with real COCO RLE
strings, and PNG), Waymo Open Dataset v2 (Parquet with the official column names and
types). Every writable prediction format reads back identical."""

from __future__ import annotations

import cv2
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from pycocotools import mask as coco_mask

from videocups_ray.config import DatasetsConfig
from videocups_ray.data.encodings import encode_png, write_png
from videocups_ray.data.formats import FORMATS, detect_format, open_source, writable_formats, write_prediction
from videocups_ray.data.types import DataError, UnknownFormatError
from videocups_ray.data.waymo import WaymoSource

H, W = 12, 16


# --------------------------------------------------------------------------- Cityscapes-DVPS
def test_cityscapes_dvps_void_32_depth_and_naming(tmp_path):
    rng = np.random.default_rng(0)
    truth = {}
    for frame in range(3):
        stem = f"000007_{frame:06d}_munster_000105_{frame + 4:06d}"
        label = np.full((H, W), 0, np.uint16)  # road: 0 * 1000
        label[:, 4:8] = 13 * 1000 + 2  # car 2
        label[:, 8:10] = 8 * 1000  # vegetation
        label[:3] = 32000  # DVPS void: class 32
        depth = (rng.uniform(1, 80, (H, W)) * 256).astype(np.uint16)
        depth[0, 0] = 0  # invalid
        write_png(tmp_path / f"{stem}_leftImg8bit.png", rng.integers(0, 256, (H, W, 3), dtype=np.uint8))
        write_png(tmp_path / f"{stem}_gtFine_instanceTrainIds.png", label)
        write_png(tmp_path / f"{stem}_depth.png", depth)
        truth[frame] = depth
    assert detect_format(tmp_path) == "cityscapes-vps"
    src = open_source(tmp_path)
    assert src.videos() == ["000007"] and src.num_frames("000007") == 3
    for f in src:
        assert (f.semantic[:3] == 255).all() and (f.instance[:3] == 0).all()
        assert f.semantic[5, 5] == 13 and f.instance[5, 5] == 2 and f.semantic[5, 0] == 0
        assert f.semantic[5, 8] == 8 and f.instance[5, 8] == 0
        np.testing.assert_array_equal(f.depth, truth[f.frame_index] / np.float32(256))


# --------------------------------------------------------------------------- ViP-DeepLab
def test_vip_deeplab_prediction_pngs_as_its_eval_reads_them(tmp_path):
    rgb = np.zeros((H, W, 3), np.uint8)
    rgb[..., 0] = 13
    rgb[..., 1] = 7  # G = instance
    rgb[:, :4, 0], rgb[:, :4, 1] = 0, 0
    # written with OpenCV directly (BGR order on disk), as any tool would
    (tmp_path / "panoptic").mkdir()
    cv2.imwrite(str(tmp_path / "panoptic" / "000003_000002_munster_000105_000004_leftImg8bit.png"), rgb[..., ::-1])
    depth = np.full((H, W), 10 * 256, np.uint16)
    (tmp_path / "depth").mkdir()
    cv2.imwrite(str(tmp_path / "depth" / "000003_000002_munster_000105_000004_leftImg8bit.png"), depth)
    assert detect_format(tmp_path) == "vip-deeplab"
    (f,) = list(open_source(tmp_path))
    assert (f.video_id, f.frame_index) == ("000003", 2)
    assert f.semantic[0, 8] == 13 and f.instance[0, 8] == 7 and f.semantic[0, 0] == 0
    np.testing.assert_array_equal(f.depth, np.full((H, W), 10.0, np.float32))
    with pytest.raises(DataError, match="instance IDs must lie in \\[0, 255\\]"):
        write_prediction("vip-deeplab", tmp_path / "o", "v", 0, f.semantic, f.instance + 300)
    with pytest.raises(DataError, match="'12_34'.*read back"):
        write_prediction("vip-deeplab", tmp_path / "o", "12_34", 0, f.semantic, f.instance)


# --------------------------------------------------------------------------- MOTS
def _rle(mask: np.ndarray) -> str:
    return coco_mask.encode(np.asfortranarray(mask.astype(np.uint8)))["counts"].decode("ascii")


def _mots_objects():
    car = np.zeros((H, W), bool)
    car[2:6, 1:5] = True
    ped = np.zeros((H, W), bool)
    ped[6:11, 10:13] = True
    ignore = np.zeros((H, W), bool)
    ignore[0:2, 12:16] = True
    return car, ped, ignore


def test_kitti_mots_txt_with_real_rle_and_png(tmp_path):
    car, ped, ignore = _mots_objects()
    lines = [f"0 1005 1 {H} {W} {_rle(car)}", f"0 2001 2 {H} {W} {_rle(ped)}",
             f"0 10000 10 {H} {W} {_rle(ignore)}", f"2 1005 1 {H} {W} {_rle(car)}"]
    (tmp_path / "txt" / "instances_txt").mkdir(parents=True)
    (tmp_path / "txt" / "instances_txt" / "0002.txt").write_text("\n".join(lines) + "\n")
    for i in range(3):
        write_png(tmp_path / "txt" / "image_02" / "0002" / f"{i:06d}.png", np.zeros((H, W, 3), np.uint8))
    assert detect_format(tmp_path / "txt") == "mots"
    frames = list(open_source(tmp_path / "txt"))
    assert [f.frame_index for f in frames] == [0, 1, 2]
    f0 = frames[0]
    assert (f0.semantic[car] == 13).all() and (f0.instance[car] == 5).all()
    assert (f0.semantic[ped] == 11).all() and (f0.instance[ped] == 1).all()
    assert (f0.semantic[~(car | ped)] == 255).all() and (f0.instance[~(car | ped)] == 0).all()
    assert (frames[1].semantic == 255).all()  # no object: everything void
    # PNG format, same ids: 0 background, 10000 ignore
    png = np.zeros((H, W), np.uint16)
    png[car], png[ped], png[ignore] = 1005, 2001, 10000
    write_png(tmp_path / "png" / "instances" / "0002" / "000000.png", png)
    (g,) = list(open_source(tmp_path / "png", "mots"))
    np.testing.assert_array_equal(g.semantic, f0.semantic)
    np.testing.assert_array_equal(g.instance, f0.instance)


def test_motschallenge_layout_and_bad_lines(tmp_path):
    car, ped, _ = _mots_objects()
    seq = tmp_path / "MOTS20-02"
    (seq / "gt").mkdir(parents=True)
    (seq / "gt" / "gt.txt").write_text(f"1 2003 2 {H} {W} {_rle(ped)}\n2 2003 2 {H} {W} {_rle(ped)}\n")
    (seq / "img1").mkdir()
    for i in (1, 2):
        cv2.imwrite(str(seq / "img1" / f"{i:06d}.jpg"), np.zeros((H, W, 3), np.uint8))
    src = open_source(tmp_path)
    assert src.videos() == ["MOTS20-02"] and [f.frame_index for f in src] == [1, 2]
    (seq / "gt" / "gt.txt").write_text(f"1 1003 2 {H} {W} {_rle(ped)}\n")
    with pytest.raises(DataError, match="gt.txt:1: id 1003 does not encode class 2"):
        open_source(tmp_path)
    both = car | ped
    (seq / "gt" / "gt.txt").write_text(f"1 2003 2 {H} {W} {_rle(ped)}\n1 2004 2 {H} {W} {_rle(both)}\n")
    with pytest.raises(DataError, match="gt.txt:2: mask of id 2004 overlaps"):
        list(open_source(tmp_path))


# --------------------------------------------------------------------------- Waymo v2
SEG = "[CameraSegmentationLabelComponent]"
KEY_TYPES = {"key.segment_context_name": pa.string(), "key.frame_timestamp_micros": pa.int64(),
             "key.camera_name": pa.int8()}


def _waymo(root, segment="seg1", stamps=(100, 200, 300), labelled=(100, 300)):
    """camera_image for 5 cameras x 3 timestamps, camera_segmentation for 2 of them."""
    img_rows, seg_rows = [], []
    truth = {}
    for t in stamps:
        for cam in range(1, 6):
            image = np.full((H, W, 3), cam * 20 + t // 100, np.uint8)
            jpg = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 100])[1].tobytes()  # JPEG, as released
            img_rows.append({"key.segment_context_name": segment, "key.frame_timestamp_micros": t,
                             "key.camera_name": cam, "[CameraImageComponent].image": jpg})
            if t in labelled:
                sem = np.full((H, W), 20, np.int64)  # ROAD
                sem[:, :5] = 2  # CAR, local instance 1 (tracked, global 9001)
                sem[:, 5:8] = 9  # PEDESTRIAN, local 2 (not tracked)
                sem[:2] = 25  # SKY
                local = np.zeros((H, W), np.int64)
                local[2:, :5], local[2:, 5:8] = 1, 2
                label = (sem * 1000 + local).astype(np.uint16)
                seg_rows.append({
                    "key.segment_context_name": segment, "key.frame_timestamp_micros": t, "key.camera_name": cam,
                    f"{SEG}.panoptic_label_divisor": 1000, f"{SEG}.panoptic_label": encode_png(label),
                    f"{SEG}.instance_id_to_global_id_mapping.local_instance_ids": [1, 2],
                    f"{SEG}.instance_id_to_global_id_mapping.global_instance_ids": [9001, 9002],
                    f"{SEG}.instance_id_to_global_id_mapping.is_tracked": [True, False],
                    f"{SEG}.sequence_id": "777", f"{SEG}.num_cameras_covered": b"",
                })
                truth[cam, t] = image
    img_schema = pa.schema([*KEY_TYPES.items(), ("[CameraImageComponent].image", pa.binary())])
    seg_schema = pa.schema([*KEY_TYPES.items(),
                            (f"{SEG}.panoptic_label_divisor", pa.int32()), (f"{SEG}.panoptic_label", pa.binary()),
                            (f"{SEG}.instance_id_to_global_id_mapping.local_instance_ids", pa.list_(pa.int32())),
                            (f"{SEG}.instance_id_to_global_id_mapping.global_instance_ids", pa.list_(pa.int32())),
                            (f"{SEG}.instance_id_to_global_id_mapping.is_tracked", pa.list_(pa.bool_())),
                            (f"{SEG}.sequence_id", pa.string()), (f"{SEG}.num_cameras_covered", pa.binary())])
    (root / "camera_image").mkdir(parents=True)
    (root / "camera_segmentation").mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(img_rows, img_schema), root / "camera_image" / f"{segment}.parquet",
                   row_group_size=5)
    pq.write_table(pa.Table.from_pylist(seg_rows, seg_schema), root / "camera_segmentation" / f"{segment}.parquet",
                   row_group_size=5)
    return truth


def test_waymo_v2_parquet_five_cameras_tracked_instances_and_class_map(tmp_path, monkeypatch):
    truth = _waymo(tmp_path)
    assert detect_format(tmp_path) == "waymo"
    reads, streamed = [], []
    orig_read, orig_iter = pq.ParquetFile.read_row_group, pq.ParquetFile.iter_batches
    monkeypatch.setattr(pq.ParquetFile, "read_row_group",
                        lambda self, i, columns=None, **kw: reads.append(tuple(columns)) or orig_read(self, i, columns=columns, **kw))
    monkeypatch.setattr(pq.ParquetFile, "iter_batches",
                        lambda self, **kw: streamed.append((kw["batch_size"], tuple(kw["columns"]))) or orig_iter(self, **kw))
    src = open_source(f"file://{tmp_path}")  # pyarrow.fs URI, as s3:// and gs:// are opened
    assert src.videos() == [f"seg1_777_{c}" for c in sorted(["FRONT", "FRONT_LEFT", "FRONT_RIGHT", "SIDE_LEFT", "SIDE_RIGHT"])]
    # indexing reads key and mapping columns only, never an image or a label
    assert reads and not any(c in cols for cols in reads for c in ("[CameraImageComponent].image", f"{SEG}.panoptic_label"))
    reads.clear()
    frames = list(src.frames("seg1_777_FRONT"))
    assert [f.frame_index for f in frames] == [0, 2]  # labelled frames only, 10 Hz positions kept
    assert not reads  # frames stream single columns in small batches
    assert {cols for _, cols in streamed} == {("[CameraImageComponent].image",), (f"{SEG}.panoptic_label",),
                                               (f"{SEG}.panoptic_label_divisor",)}
    assert all(size <= 8 for size, _ in streamed)
    f = frames[1]
    np.testing.assert_allclose(f.image, truth[1, 300], atol=2)  # JPEG
    assert f.semantic[5, 0] == 13 and f.instance[5, 0] == 1  # car, global 9001 renumbered 1
    assert f.semantic[5, 6] == 11 and f.instance[5, 6] == 0  # untracked pedestrian: no track
    assert f.semantic[0, 0] == 10 and f.semantic[5, 10] == 0  # sky, road
    native = open_source(tmp_path, "waymo", DatasetsConfig(waymo_cameras=(2,), waymo_class_map="native"))
    (g, _) = list(native)
    assert g.video_id == "seg1_777_FRONT_LEFT" and g.semantic[5, 0] == 2 and g.semantic[5, 10] == 20


def test_waymo_bad_inputs(tmp_path):
    _waymo(tmp_path)
    table = pq.read_table(tmp_path / "camera_segmentation" / "seg1.parquet")
    pq.write_table(table.drop_columns([f"{SEG}.sequence_id"]), tmp_path / "camera_segmentation" / "seg1.parquet")
    with pytest.raises(DataError, match="seg1.parquet: missing column .*sequence_id"):
        open_source(tmp_path)
    with pytest.raises(DataError, match="unknown Waymo camera 7"):
        WaymoSource(str(tmp_path), cameras=(7,))


# --------------------------------------------------------------------------- registry
def test_unknown_format_and_unmatched_folder_list_what_was_looked_for(tmp_path):
    with pytest.raises(UnknownFormatError, match="'nuscenes'.*waymo, mots, vip-deeplab, kitti-step, cityscapes-vps"):
        open_source(tmp_path, "nuscenes")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="matches no known format. Looked for:") as err:
        open_source(tmp_path / "empty")
    for fmt in FORMATS.values():
        assert f"{fmt.name}: {fmt.looks_for}" in str(err.value)
    with pytest.raises(UnknownFormatError, match="read-only.*kitti-step"):
        write_prediction("waymo", tmp_path, "v", 0, np.zeros((2, 2), np.uint8), np.zeros((2, 2), np.int32))


@pytest.mark.parametrize("fmt", writable_formats())
def test_every_writable_prediction_format_reads_back_identical(tmp_path, fmt):
    rng = np.random.default_rng(3)
    written = {}
    for video in ("0001", "0002"):
        for t in (0, 1, 5):
            if fmt == "mots":  # MOTS holds car, person and void only
                sem = rng.choice(np.array([11, 13, 255], np.uint8), (H, W))
            else:
                sem = rng.choice(np.array([1, 8, 11, 13, 255], np.uint8), (H, W))
            inst = np.where(np.isin(sem, (11, 13)), rng.integers(0, 200, (H, W)), 0).astype(np.int32)
            depth = rng.uniform(1, 80, (H, W)).astype(np.float32) if fmt == "vip-deeplab" else None
            write_prediction(fmt, tmp_path, video, t, sem, inst, depth=depth)
            written[video, t] = (sem, inst, depth)
    assert detect_format(tmp_path) == fmt
    frames = list(open_source(tmp_path, fmt))
    assert [(f.video_id, f.frame_index) for f in frames] == sorted(written)
    for f in frames:
        sem, inst, depth = written[f.video_id, f.frame_index]
        np.testing.assert_array_equal(f.semantic, sem)
        np.testing.assert_array_equal(f.instance, inst)
        if depth is not None:
            np.testing.assert_allclose(f.depth, depth, atol=0.5 / 256)


# --------------------------------------------------------------------------- list files
def test_list_file_entries_are_typed_by_content(tmp_path):
    # A list holding one valid video (here named .dat: the bytes decide) is a video source,
    # not an image list (it used to fail later with "centroid fit: no frames were sampled").
    clip = tmp_path / "clip.mp4"
    writer = cv2.VideoWriter(str(clip), cv2.VideoWriter_fourcc(*"mp4v"), 10, (32, 24))
    for i in range(4):
        writer.write(np.full((24, 32, 3), 40 * i, np.uint8))
    writer.release()
    listing = tmp_path / "list.txt"
    listing.write_text("clip.mp4\n")
    src = open_source(listing)
    assert src.videos() == ["clip"] and len(list(src)) == 4
    write_png(tmp_path / "a.png", np.zeros((24, 32, 3), np.uint8))
    listing.write_text("clip.mp4\na.png\n")
    with pytest.raises(DataError, match="list.txt: mixes videos .*clip.mp4.* and images .*a.png"):
        open_source(listing)
