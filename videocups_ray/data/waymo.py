"""Waymo Open Dataset v2 (Parquet) panoramic video panoptic segmentation (PVPS) reader.

The v2 release stores each component as one Parquet file per segment,
``DIR/<component>/<segment_context_name>.parquet``. Two components are read, joined on their
key columns ``key.segment_context_name``, ``key.frame_timestamp_micros``, ``key.camera_name``:

- ``camera_image``: ``[CameraImageComponent].image`` (JPEG bytes);
- ``camera_segmentation``: ``[CameraSegmentationLabelComponent].panoptic_label`` (uint16 PNG
  bytes, ``class * panoptic_label_divisor + local instance``),
  ``.panoptic_label_divisor`` (int32), ``.sequence_id`` (string) and
  ``.instance_id_to_global_id_mapping.{local_instance_ids, global_instance_ids, is_tracked}``
  (lists, one entry per local instance of the frame).

Videos: each camera (1 FRONT, 2 FRONT_LEFT, 3 FRONT_RIGHT, 4 SIDE_LEFT, 5 SIDE_RIGHT) of each
labelled sequence is one video, ``<segment>_<sequence_id>_<CAMERA>``. Labels exist for a
subset of the 10 Hz timestamps; like the benchmark, only the labelled frames are evaluated,
and ``frame_index`` is the frame's position among all of that camera's images, so the
subsampling is visible. Without ``camera_segmentation`` every image is read (video per
segment and camera).

Instances: a local ID is mapped to its global ID (consistent over time and cameras within a
sequence); instances with ``is_tracked`` false become instance 0 (scored for SQ, not AQ).
Global IDs are renumbered 1..n per video, in increasing order, so they fit any divisor.

Classes: the 28 Waymo classes are mapped to the 19 Cityscapes train IDs the evaluation uses
(:data:`WAYMO_TO_CITYSCAPES`; ``class_map="native"`` keeps Waymo's IDs with 0 as void).

Reading goes through ``pyarrow.fs`` (local paths, ``s3://``, ``gs://``) with column
projection: indexing reads only the key and mapping columns (row group by row group), and
frames stream the one column they need in small record batches (:class:`_ColumnReader`).
"""

from __future__ import annotations

import posixpath
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from videocups_ray.data.encodings import decode_png
from videocups_ray.data.sources import FrameSource
from videocups_ray.data.types import DataError, Frame

KEY_SEGMENT = "key.segment_context_name"
KEY_TIMESTAMP = "key.frame_timestamp_micros"
KEY_CAMERA = "key.camera_name"
KEYS = (KEY_SEGMENT, KEY_TIMESTAMP, KEY_CAMERA)
IMAGE = "[CameraImageComponent].image"
_SEG = "[CameraSegmentationLabelComponent]"
PANOPTIC = f"{_SEG}.panoptic_label"
DIVISOR = f"{_SEG}.panoptic_label_divisor"
SEQUENCE = f"{_SEG}.sequence_id"
LOCAL_IDS = f"{_SEG}.instance_id_to_global_id_mapping.local_instance_ids"
GLOBAL_IDS = f"{_SEG}.instance_id_to_global_id_mapping.global_instance_ids"
IS_TRACKED = f"{_SEG}.instance_id_to_global_id_mapping.is_tracked"
CAMERA_NAMES = {1: "FRONT", 2: "FRONT_LEFT", 3: "FRONT_RIGHT", 4: "SIDE_LEFT", 5: "SIDE_RIGHT"}

#: Waymo camera_segmentation class -> Cityscapes train ID (255 = void).
#: | Waymo | name | Cityscapes | | Waymo | name | Cityscapes |
#: |---|---|---|---|---|---|---|
#: | 0 | UNDEFINED | void | | 15 | POLE | 5 pole |
#: | 1 | EGO_VEHICLE | void | | 16 | PEDESTRIAN_OBJECT | void |
#: | 2 | CAR | 13 car | | 17 | SIGN | 7 traffic sign |
#: | 3 | TRUCK | 14 truck | | 18 | TRAFFIC_LIGHT | 6 traffic light |
#: | 4 | BUS | 15 bus | | 19 | BUILDING | 2 building |
#: | 5 | OTHER_LARGE_VEHICLE | 14 truck | | 20 | ROAD | 0 road |
#: | 6 | BICYCLE | 18 bicycle | | 21 | LANE_MARKER | 0 road |
#: | 7 | MOTORCYCLE | 17 motorcycle | | 22 | ROAD_MARKER | 0 road |
#: | 8 | TRAILER | void (Cityscapes: void) | | 23 | SIDEWALK | 1 sidewalk |
#: | 9 | PEDESTRIAN | 11 person | | 24 | VEGETATION | 8 vegetation |
#: | 10 | CYCLIST | 12 rider | | 25 | SKY | 10 sky |
#: | 11 | MOTORCYCLIST | 12 rider | | 26 | GROUND | 9 terrain |
#: | 12 | BIRD | void | | 27 | DYNAMIC | void |
#: | 13 | GROUND_ANIMAL | void | | 28 | STATIC | void |
#: | 14 | CONSTRUCTION_CONE_POLE | void | | | | |
WAYMO_TO_CITYSCAPES = {
    0: 255, 1: 255, 2: 13, 3: 14, 4: 15, 5: 14, 6: 18, 7: 17, 8: 255, 9: 11, 10: 12, 11: 12,
    12: 255, 13: 255, 14: 255, 15: 5, 16: 255, 17: 7, 18: 6, 19: 2, 20: 0, 21: 0, 22: 0,
    23: 1, 24: 8, 25: 10, 26: 9, 27: 255, 28: 255,
}
_CITYSCAPES_THINGS = frozenset(range(11, 19))
_NUM_WAYMO_CLASSES = 29


def _lut(class_map: str) -> tuple[np.ndarray, np.ndarray]:
    """(class LUT over Waymo IDs, keeps-instance flag per Waymo ID)."""
    lut = np.full(_NUM_WAYMO_CLASSES, 255, np.uint8)
    keep = np.zeros(_NUM_WAYMO_CLASSES, bool)
    for w, c in WAYMO_TO_CITYSCAPES.items():
        if class_map == "cityscapes":
            lut[w], keep[w] = c, c in _CITYSCAPES_THINGS
        else:
            lut[w], keep[w] = (255 if w == 0 else w), c in _CITYSCAPES_THINGS or w in (12, 13, 16)
    return lut, keep


def _filesystem(root: str) -> tuple[pafs.FileSystem, str]:
    if "://" in root:
        try:
            return pafs.FileSystem.from_uri(root)
        except (ValueError, OSError) as exc:  # ArrowInvalid is a ValueError
            raise DataError(f"{root}: cannot open this URI with pyarrow.fs ({type(exc).__name__}: {exc})") from None
    return pafs.LocalFileSystem(), root


def _parquet_files(fs: pafs.FileSystem, folder: str) -> dict[str, str]:
    """``segment -> path`` of ``folder/*.parquet``; empty when the folder does not exist."""
    info = fs.get_file_info(folder)
    if info.type != pafs.FileType.Directory:
        return {}
    files = fs.get_file_info(pafs.FileSelector(folder))
    return {posixpath.basename(f.path)[: -len(".parquet")]: f.path
            for f in files if f.type == pafs.FileType.File and f.path.endswith(".parquet")}


def looks_like_waymo(spec: str) -> bool:
    """A folder whose ``camera_image/`` holds Parquet files (checked without reading them)."""
    try:
        fs, root = _filesystem(spec)
        return bool(_parquet_files(fs, posixpath.join(root, "camera_image")))
    except (DataError, OSError):
        return False


@dataclass(frozen=True)
class _Row:
    path: str
    row_group: int
    row: int


@dataclass
class _WaymoFrame:
    frame_index: int
    image: _Row
    label: _Row | None
    local_ids: np.ndarray | None = None
    global_ids: np.ndarray | None = None
    tracked: np.ndarray | None = None


class _ColumnReader:
    """Values of single cells, streamed: a column of one row group is read in record batches
    of ``batch_rows`` rows, and a read at a later row of the same row group continues the
    stream, so reading one camera's frames in order holds at most one small batch in memory
    and never materialises a whole file or row group."""

    def __init__(self, fs: pafs.FileSystem, batch_rows: int = 8):
        self.fs = fs
        self.batch_rows = batch_rows
        self._files: dict[str, pq.ParquetFile] = {}
        # (file, column) -> [row group, batch iterator, first row of batch, batch values]
        self._cursors: dict[tuple[str, str], list] = {}

    def file(self, path: str) -> pq.ParquetFile:
        if path not in self._files:
            try:
                self._files[path] = pq.ParquetFile(self.fs.open_input_file(path))
            except (OSError, ValueError) as exc:
                raise DataError(f"{path}: cannot read Parquet ({exc})") from None
        return self._files[path]

    def value(self, row: _Row, column: str):
        key = (row.path, column)
        cur = self._cursors.get(key)
        if cur is None or cur[0] != row.row_group or row.row < cur[2]:
            batches = self.file(row.path).iter_batches(batch_size=self.batch_rows, row_groups=[row.row_group],
                                                       columns=[column])
            cur = [row.row_group, batches, 0, []]
            self._cursors[key] = cur
        while row.row >= cur[2] + len(cur[3]):
            cur[2] += len(cur[3])
            batch = next(cur[1], None)
            if batch is None:
                raise DataError(f"{row.path}: row group {row.row_group} has no row {row.row}")
            cur[3] = batch.column(0).to_pylist()
        return cur[3][row.row - cur[2]]


class WaymoSource(FrameSource):
    """Frames of a Waymo v2 split folder (see the module docstring)."""

    def __init__(self, root: str, *, cameras: tuple[int, ...] = (1, 2, 3, 4, 5), class_map: str = "cityscapes"):
        if class_map not in ("cityscapes", "native"):
            raise DataError(f"class_map must be 'cityscapes' or 'native', got {class_map!r}")
        bad = [c for c in cameras if c not in CAMERA_NAMES]
        if bad:
            raise DataError(f"unknown Waymo camera {bad[0]}; cameras are {CAMERA_NAMES}")
        self.root = root
        self.cameras = tuple(cameras)
        self._lut, self._keep_instance = _lut(class_map)
        self.fs, base = _filesystem(root)
        images = _parquet_files(self.fs, posixpath.join(base, "camera_image"))
        labels = _parquet_files(self.fs, posixpath.join(base, "camera_segmentation"))
        if not images:
            raise DataError(f"{root}: no camera_image/*.parquet files")
        self.has_labels = bool(labels)
        missing = sorted(set(labels) - set(images))
        if missing:
            raise DataError(f"{labels[missing[0]]}: segment has labels but no camera_image file")
        self._cache = _ColumnReader(self.fs)
        self._videos: dict[str, list[_WaymoFrame]] = {}
        for segment in sorted(labels or images):
            self._index_segment(segment, images[segment], labels.get(segment))

    def __repr__(self) -> str:
        return f"WaymoSource({self.root!r})"

    # ----------------------------------------------------------------- indexing
    def _scan(self, path: str, columns: list[str]) -> Iterator[tuple[_Row, dict]]:
        pf = self._cache.file(path)
        names = set(pf.schema_arrow.names)
        absent = [c for c in columns if c not in names]
        if absent:
            raise DataError(f"{path}: missing column {absent[0]!r} (not a Waymo v2 file of this component?)")
        for g in range(pf.num_row_groups):
            table = pf.read_row_group(g, columns=columns).to_pydict()
            for r in range(len(table[columns[0]])):
                yield _Row(path, g, r), {c: table[c][r] for c in columns}

    def _index_segment(self, segment: str, image_path: str, label_path: str | None) -> None:
        image_rows: dict[tuple[int, int], _Row] = {}
        for row, keys in self._scan(image_path, list(KEYS)):
            if keys[KEY_SEGMENT] != segment:
                raise DataError(f"{image_path}: row for segment {keys[KEY_SEGMENT]!r} in the file of {segment!r}")
            image_rows[keys[KEY_CAMERA], keys[KEY_TIMESTAMP]] = row
        position = {}
        for cam in self.cameras:
            stamps = sorted(t for c, t in image_rows if c == cam)
            position.update({(cam, t): i for i, t in enumerate(stamps)})
        if label_path is None:
            for cam in self.cameras:
                frames = [_WaymoFrame(position[cam, t], image_rows[cam, t], None)
                          for t in sorted(t for c, t in image_rows if c == cam)]
                if frames:
                    self._videos[f"{segment}_{CAMERA_NAMES[cam]}"] = frames
            return
        videos: dict[str, list[tuple[int, _WaymoFrame]]] = {}
        for row, v in self._scan(label_path, [*KEYS, SEQUENCE, LOCAL_IDS, GLOBAL_IDS, IS_TRACKED]):
            cam, stamp = v[KEY_CAMERA], v[KEY_TIMESTAMP]
            if cam not in self.cameras:
                continue
            if (cam, stamp) not in image_rows:
                raise DataError(f"{label_path}: label of camera {cam} at {stamp} us has no camera_image row")
            local, glob, tracked = (np.asarray(v[c] or [], dtype=d) for c, d in
                                    ((LOCAL_IDS, np.int64), (GLOBAL_IDS, np.int64), (IS_TRACKED, bool)))
            if not (local.size == glob.size == tracked.size):
                raise DataError(f"{label_path}: camera {cam} at {stamp} us: instance mapping lists differ in length")
            frame = _WaymoFrame(position[cam, stamp], image_rows[cam, stamp], row, local, glob, tracked)
            vid = f"{segment}_{v[SEQUENCE]}_{CAMERA_NAMES[cam]}"
            videos.setdefault(vid, []).append((stamp, frame))
        for vid, items in videos.items():
            items.sort(key=lambda t: t[0])
            frames = [f for _, f in items]
            tracked_ids = np.unique(np.concatenate([f.global_ids[f.tracked] for f in frames]))
            for f in frames:  # renumber global IDs 1..n per video, in increasing order
                f.global_ids = np.searchsorted(tracked_ids, f.global_ids) + 1
            self._videos[vid] = frames

    # ----------------------------------------------------------------- FrameSource
    def videos(self) -> list[str]:
        return sorted(self._videos)

    def num_frames(self, video_id: str) -> int:
        self._check_video(video_id, self._videos)
        return len(self._videos[video_id])

    def frames(self, video_id: str, start: int = 0, stop: int | None = None) -> Iterator[Frame]:
        self._check_video(video_id, self._videos)
        items = self._videos[video_id]
        for pos in self._range(len(items), start, stop, f"{self.root} video {video_id!r}"):
            yield self._read(video_id, items[pos])

    def _read(self, video_id: str, item: _WaymoFrame) -> Frame:
        import cv2

        where = f"{item.image.path} video {video_id!r} frame {item.frame_index}"
        data = self._cache.value(item.image, IMAGE)
        bgr = cv2.imdecode(np.frombuffer(data or b"", np.uint8), cv2.IMREAD_COLOR)
        if bgr is None:
            raise DataError(f"{where}: cannot decode the camera image")
        frame = Frame(video_id=video_id, frame_index=item.frame_index, image=np.ascontiguousarray(bgr[..., ::-1]))
        if item.label is not None:
            frame.semantic, frame.instance = self._panoptic(item, frame.image.shape)
        return frame

    def _panoptic(self, item: _WaymoFrame, shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
        where = f"{item.label.path} frame {item.frame_index}"
        png = decode_png(self._cache.value(item.label, PANOPTIC), where)
        divisor = int(self._cache.value(item.label, DIVISOR))
        if png.ndim != 2 or png.shape != tuple(shape[:2]):
            raise DataError(f"{where}: panoptic label shape {png.shape} does not match the image {shape[:2]}")
        if divisor < 1:
            raise DataError(f"{where}: panoptic_label_divisor {divisor} must be >= 1")
        v = png.astype(np.int64)
        cls, local = v // divisor, v % divisor
        if cls.max(initial=0) >= _NUM_WAYMO_CLASSES:
            raise DataError(f"{where}: class {int(cls.max())} is not a Waymo class (0..28)")
        table = np.zeros(int(max(local.max(initial=0), item.local_ids.max(initial=0))) + 1, np.int64)
        unknown = np.setdiff1d(np.unique(local[local > 0]), item.local_ids)
        if unknown.size:
            raise DataError(f"{where}: local instance {int(unknown[0])} has no instance_id_to_global_id_mapping entry")
        table[item.local_ids] = np.where(item.tracked, item.global_ids, 0)
        semantic = self._lut[cls]
        instance = np.where(self._keep_instance[cls], table[local], 0).astype(np.int32)
        return semantic, instance
