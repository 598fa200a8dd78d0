"""Label-only folders: predictions (and ground truth without images) as frame sources, and
the prediction writers.

Two layouts, each with its own PNG encoding:

- ``panoptic``: ``DIR/panoptic/<video>/<frame:06d>.png`` (or one flat sequence
  ``DIR/panoptic/*.png``; ``DIR`` may itself be the ``panoptic`` folder). KITTI-STEP
  encoding (RGB, R = class, instance = G * 256 + B) or Cityscapes-VPS encoding (16-bit,
  ``trainId * 1000 + instance``). Flat Cityscapes-VPS files may be named
  ``<video>_<frame>_*.png``.
- ``vip-deeplab``: ViP-DeepLab's own output, as its ``cityscapes-dvps/eval_dvpq.py`` reads
  it: ``DIR/panoptic/<name>.png`` RGB with R = class and G = instance (B unused, 0), and
  optional ``DIR/depth/<name>.png`` 16-bit depth in metres * 256 (the ground truth's scale).
  ``<name>`` starts with ``<video>_<frame>`` (``eval_dvpq`` groups files by the text before
  the first ``_`` and orders them by name); we write ``<video>_<frame:06d>.png``.

The readers yield :class:`Frame` objects with a zero-size image (a broadcast view), so one
evaluator reads predictions and ground truth alike.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

from videocups_ray.data.encodings import (
    decode_cityscapes_panoptic,
    decode_kitti_depth,
    decode_kitti_panoptic,
    decode_vip_deeplab_panoptic,
    encode_cityscapes_panoptic,
    encode_kitti_depth,
    encode_kitti_panoptic,
    encode_vip_deeplab_panoptic,
    read_png,
    write_png,
)
from videocups_ray.data.sources import VideoListSource
from videocups_ray.data.types import DataError, Frame

#: (semantic, instance) -> PNG array; raises ValueError when the IDs do not fit the encoding.
PanopticEncoder = Callable[[np.ndarray, np.ndarray], np.ndarray]
#: (PNG array, path for error messages) -> (semantic, instance).
PanopticDecoder = Callable[[np.ndarray, str], tuple[np.ndarray, np.ndarray]]

LABEL_DIRS = ("panoptic", "panoptic_maps")
_VPS_NAME = re.compile(r"^(\d+)_(\d+)_")  # Cityscapes-(D)VPS: <video>_<frame>_<city>_...
_VIP_NAME = re.compile(r"^(.+)_(\d+)$")  # what we write: <video>_<frame>


def no_image(shape: tuple[int, ...]) -> np.ndarray:
    """A zero-cost HxWx3 placeholder image for label-only frames."""
    return np.broadcast_to(np.zeros((1, 1, 3), np.uint8), (*shape[:2], 3))


# --------------------------------------------------------------------------- writers
def panoptic_prediction_path(out_dir: str | os.PathLike, video_id: str, frame_index: int) -> Path:
    """``out_dir/panoptic/<video>/<frame:06d>.png`` (KITTI-STEP and Cityscapes-VPS layouts)."""
    return Path(out_dir) / "panoptic" / str(video_id) / f"{int(frame_index):06d}.png"


def _encode(path: Path, video_id: str, frame_index: int, encode: PanopticEncoder,
            semantic: np.ndarray, instance: np.ndarray) -> np.ndarray:
    try:
        return encode(np.asarray(semantic), np.asarray(instance))
    except ValueError as exc:
        raise DataError(f"{path}: cannot encode prediction for {video_id!r} frame {frame_index}: {exc}") from None


def write_panoptic_prediction(out_dir: str | os.PathLike, video_id: str, frame_index: int,
                              semantic: np.ndarray, instance: np.ndarray, encode: PanopticEncoder) -> Path:
    """Encode one predicted frame with ``encode`` and write it atomically; returns the path.

    An ID the encoding cannot hold raises DataError naming the file, video and frame.
    """
    path = panoptic_prediction_path(out_dir, video_id, frame_index)
    write_png(path, _encode(path, video_id, frame_index, encode, semantic, instance))
    return path


def vip_deeplab_prediction_name(video_id: str, frame_index: int) -> str:
    """``<video>_<frame:06d>.png``; refused when the name would read back as another frame."""
    name = f"{video_id}_{int(frame_index):06d}"
    if _vip_key(name) != (str(video_id), int(frame_index)):
        raise DataError(f"video ID {video_id!r}: a ViP-DeepLab file name {name}.png would read back as "
                        f"{_vip_key(name)}; rename the video (no leading '<digits>_<digits>_')")
    return name + ".png"


def write_vip_deeplab_prediction(out_dir: str | os.PathLike, video_id: str, frame_index: int,
                                 semantic: np.ndarray, instance: np.ndarray,
                                 depth: np.ndarray | None = None) -> Path:
    """``out_dir/panoptic/<video>_<frame>.png`` (R = class, G = instance) and, with ``depth``
    (metres), ``out_dir/depth/<video>_<frame>.png`` (uint16 metres * 256). Returns the
    panoptic path. Instance IDs must fit in 8 bit, as the format's G channel demands."""
    name = vip_deeplab_prediction_name(video_id, frame_index)
    path = Path(out_dir) / "panoptic" / name
    png = _encode(path, video_id, frame_index, encode_vip_deeplab_panoptic, semantic, instance)
    if depth is not None:
        depth = np.asarray(depth)
        if depth.shape != png.shape[:2]:
            raise DataError(f"{path}: depth shape {depth.shape} differs from the panoptic map {png.shape[:2]}")
        write_png(Path(out_dir) / "depth" / name, encode_kitti_depth(depth))
    write_png(path, png)
    return path


# --------------------------------------------------------------------------- readers
def _vip_key(stem: str) -> tuple[str, int] | None:
    m = _VPS_NAME.match(stem + "_") or _VIP_NAME.match(stem)
    return (m.group(1), int(m.group(2))) if m else None


def _frame_key(path: Path, video: str, vps_names: bool, nested: bool) -> tuple[str, int]:
    stem = path.stem
    if stem.isdigit():
        return video, int(stem)
    m = _VPS_NAME.match(stem) if vps_names else None
    if m:
        return (video if nested else m.group(1)), int(m.group(2))
    expected = "<frame>.png" + (" or <video>_<frame>_*.png" if vps_names else "")
    raise DataError(f"{path}: cannot read a frame index from the file name (expected {expected})")


def panoptic_label_files(root: str | os.PathLike, vps_names: bool = False) -> list[tuple[str, int, Path]]:
    """``(video, frame, path)`` of a ``panoptic`` layout folder, sorted; see the module docstring."""
    root = Path(root)
    label_dirs = [root / d for d in LABEL_DIRS if (root / d).is_dir()]
    base = label_dirs[0] if label_dirs else root
    if not base.is_dir():
        raise DataError(f"{root}: label folder not found")
    flat = sorted(base.glob("*.png"))
    subdirs = sorted(d for d in base.iterdir() if d.is_dir() and any(d.glob("*.png")))
    if flat and subdirs:
        raise DataError(f"{base}: holds both label PNGs and sequence folders; use one layout")
    if subdirs:
        files = [(*_frame_key(f, d.name, vps_names, True), f) for d in subdirs for f in sorted(d.glob("*.png"))]
    else:
        # Single-sequence layout: the video ID is the dataset folder's name, as the KITTI-STEP
        # reader names it, so predictions written under panoptic/<video_id>/ pair with it.
        name = root.parent.name if base == root and root.name in LABEL_DIRS else root.name
        files = [(*_frame_key(f, name, vps_names, False), f) for f in flat]
    if not files:
        raise DataError(f"{base}: no label PNGs found (expected panoptic/<seq>/<frame>.png or panoptic/*.png)")
    return _sorted_unique(files)


def vip_deeplab_files(root: str | os.PathLike) -> list[tuple[str, int, Path]]:
    """``(video, frame, path)`` of the panoptic PNGs of a ViP-DeepLab prediction folder."""
    root = Path(root)
    base = root / "panoptic" if (root / "panoptic").is_dir() else root
    if not base.is_dir():
        raise DataError(f"{root}: ViP-DeepLab prediction folder not found")
    files = []
    for f in sorted(base.glob("*.png")):
        key = _vip_key(f.stem)
        if key is None:
            raise DataError(f"{f}: ViP-DeepLab file names start with <video>_<frame>")
        files.append((*key, f))
    if not files:
        raise DataError(f"{base}: no ViP-DeepLab panoptic PNGs (<video>_<frame>*.png) found")
    return _sorted_unique(files)


def _sorted_unique(files: list[tuple[str, int, Path]]) -> list[tuple[str, int, Path]]:
    files.sort(key=lambda t: (t[0], t[1]))
    for (v0, i0, f0), (v1, i1, f1) in zip(files, files[1:]):
        if (v0, i0) == (v1, i1):
            raise DataError(f"{f1}: video {v1!r} frame {i1} also given by {f0}")
    return files


class LabelFolderSource(VideoListSource):
    """Frames of a label-only folder: ``(video, frame, path)`` items decoded with ``decode``;
    ``depth_dir`` (ViP-DeepLab) holds a depth PNG of the same name for every frame."""

    has_labels = True

    def __init__(self, files: list[tuple[str, int, Path]], decode: PanopticDecoder, origin: str,
                 depth_dir: Path | None = None):
        self.origin = origin
        self.decode = decode
        self.depth_dir = depth_dir
        self._videos: dict[str, list[tuple[int, Path]]] = {}
        for video, index, path in files:
            self._videos.setdefault(video, []).append((index, path))
        if depth_dir is not None:
            for video, index, path in files:
                if not (depth_dir / path.name).is_file():
                    raise DataError(f"{depth_dir / path.name}: depth file missing for {path}")

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.origin!r})"

    def frames(self, video_id: str, start: int = 0, stop: int | None = None) -> Iterator[Frame]:
        for _, (index, path) in self._items(video_id, start, stop, self.origin):
            semantic, instance = self.decode(read_png(path), str(path))
            frame = Frame(video_id=video_id, frame_index=index, image=no_image(semantic.shape),
                          semantic=semantic, instance=instance, extra={"path": str(path)})
            if self.depth_dir is not None:
                dpath = self.depth_dir / path.name
                png = read_png(dpath)
                if png.shape[:2] != semantic.shape:
                    raise DataError(f"{dpath}: depth size {png.shape[1]}x{png.shape[0]} differs from "
                                    f"{path} ({semantic.shape[1]}x{semantic.shape[0]})")
                frame.depth = decode_kitti_depth(png, str(dpath))
            yield frame


class KittiStepPredictions(LabelFolderSource):
    """A ``panoptic`` layout folder in the KITTI-STEP encoding (predictions or labels only)."""

    def __init__(self, root: str | os.PathLike):
        super().__init__(panoptic_label_files(root), decode_kitti_panoptic, str(root))


class CityscapesVpsPredictions(LabelFolderSource):
    """A ``panoptic`` layout folder in the 16-bit Cityscapes-VPS encoding."""

    def __init__(self, root: str | os.PathLike):
        super().__init__(panoptic_label_files(root, vps_names=True), decode_cityscapes_panoptic, str(root))


class VipDeepLabPredictions(LabelFolderSource):
    """ViP-DeepLab's prediction folder: ``panoptic/`` RGB PNGs and, when present, ``depth/``."""

    def __init__(self, root: str | os.PathLike):
        root = Path(root)
        depth = root / "depth"
        super().__init__(vip_deeplab_files(root), decode_vip_deeplab_panoptic, str(root),
                         depth if depth.is_dir() else None)


def write_kitti_step_prediction(out_dir: str | os.PathLike, video_id: str, frame_index: int,
                                semantic: np.ndarray, instance: np.ndarray) -> Path:
    """``out_dir/panoptic/<video_id>/<frame:06d>.png`` in the KITTI-STEP encoding (semantic IDs
    fit in 8 bit, instance IDs in 16 bit)."""
    return write_panoptic_prediction(out_dir, video_id, frame_index, semantic, instance, encode_kitti_panoptic)


def write_cityscapes_vps_prediction(out_dir: str | os.PathLike, video_id: str, frame_index: int,
                                    semantic: np.ndarray, instance: np.ndarray) -> Path:
    """``out_dir/panoptic/<video>/<frame:06d>.png``, 16-bit Cityscapes-VPS panoptic encoding.

    Instance IDs must lie in [0, 999] (the encoding's limit): a tracker that gives more IDs
    per video must renumber them before writing.
    """
    return write_panoptic_prediction(out_dir, video_id, frame_index, semantic, instance,
                                     encode_cityscapes_panoptic)
