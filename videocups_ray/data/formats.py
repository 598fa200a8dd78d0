"""The one registry of data formats: ``--format`` names, automatic detection, readers and
prediction writers.

Every reader is a :class:`~videocups_ray.data.sources.FrameSource`. ``open_source(spec)``
detects the format when none is given, by testing the formats in :data:`FORMATS` order
(first match wins); ``detect_format`` says which it would use, and a path that matches none
gets an error that lists what each format looks for. The format modules import only
``sources`` / ``encodings`` / ``types``; only this module knows them all, so there is no
import cycle between the readers.

Formats that predictions can be written in have a writer here (``write_prediction``), and
every one of them reads back what it wrote (``open_source(out, format)``).
"""

from __future__ import annotations

import glob as globlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from videocups_ray.config import DatasetsConfig
from videocups_ray.data.sources import (
    IMAGE_EXTENSIONS,
    LIST_EXTENSIONS,
    VIDEO_EXTENSIONS,
    FrameSource,
)
from videocups_ray.data.types import DataError, UnknownFormatError


@dataclass(frozen=True)
class Format:
    """One data format: how it is recognised, read and (optionally) written."""

    name: str
    looks_for: str  # what detection tests, shown when nothing matches
    encoding: str  # one line on the label encoding (README and errors)
    detect: Callable[[str], bool]
    open: Callable[[str, DatasetsConfig], FrameSource]
    #: ``(out_dir, video_id, frame_index, semantic, instance, depth=None) -> path``; None = read only.
    write: Callable[..., Path] | None = None


# --------------------------------------------------------------------------- detection helpers
def _is_dir(spec: str) -> bool:
    return "://" not in spec and Path(spec).is_dir()


def _has(spec: str, *names: str) -> bool:
    return _is_dir(spec) and any((Path(spec) / n).exists() for n in names)


def _first_png(folder: Path) -> Path | None:
    return next(folder.rglob("*.png"), None)  # any one: detection must not list a whole dataset


def _label_encoding(spec: str) -> str | None:
    """``kitti-step`` (RGB) or ``cityscapes-vps`` (16-bit single channel) by peeking at the
    first label PNG of a ``panoptic`` layout folder; None when there is none."""
    from videocups_ray.data.encodings import read_png
    from videocups_ray.data.predictions import LABEL_DIRS

    root = Path(spec)
    base = next((root / d for d in LABEL_DIRS if (root / d).is_dir()), root)
    first = _first_png(base) if base.is_dir() else None
    if first is None:
        return None
    png = read_png(first)
    return "kitti-step" if png.ndim == 3 else "cityscapes-vps"


def _detect_synthdrive(spec: str) -> bool:
    return _is_dir(spec) and (Path(spec) / "synthdrive.json").is_file()


def _detect_waymo(spec: str) -> bool:
    from videocups_ray.data.waymo import looks_like_waymo

    return looks_like_waymo(spec)


def _detect_mots(spec: str) -> bool:
    from videocups_ray.data.mots import looks_like_mots

    return _is_dir(spec) and looks_like_mots(Path(spec))


def _detect_kitti(spec: str) -> bool:
    if not _is_dir(spec):
        return False
    path = Path(spec)
    if (path / "images").is_dir():
        return True
    return _has(spec, "panoptic", "panoptic_maps") and not _detect_vip(spec) and _label_encoding(spec) == "kitti-step"


def _detect_cityscapes(spec: str) -> bool:
    if not _is_dir(spec):
        return False
    path = Path(spec)
    for sub in (path, path / "img", path / "img_all"):
        if sub.is_dir() and next(sub.glob("*_leftImg8bit.png"), None) is not None:
            return True
    return (_has(spec, "panoptic", "panoptic_maps") and not _detect_vip(spec)
            and _label_encoding(spec) == "cityscapes-vps")


def _detect_vip(spec: str) -> bool:
    """Flat ``panoptic/<video>_<frame>*.png`` RGB files (no sequence folders, names not bare numbers)."""
    if not _has(spec, "panoptic"):
        return False
    base = Path(spec) / "panoptic"
    if any(p.is_dir() for p in base.iterdir()):
        return False
    first = next(base.glob("*.png"), None)
    return first is not None and "_" in first.stem and _label_encoding(spec) == "kitti-step"


def _detect_video(spec: str) -> bool:
    return Path(spec).is_file() and Path(spec).suffix.lower() in VIDEO_EXTENSIONS


def _detect_images(spec: str) -> bool:
    path = Path(spec)
    if path.is_dir():
        return any(p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS for p in path.iterdir())
    if path.is_file():
        return path.suffix.lower() in LIST_EXTENSIONS or path.suffix.lower() in IMAGE_EXTENSIONS
    return globlib.has_magic(spec)


# --------------------------------------------------------------------------- openers
def _open_synthdrive(spec: str, options: DatasetsConfig) -> FrameSource:
    from videocups_ray.data.kitti_step import KittiStepSource

    if not (Path(spec) / "synthdrive.json").is_file():
        raise DataError(f"{spec}: not a SynthDrive folder (no synthdrive.json); write one with "
                        "videocups_ray.data.synthdrive first")
    return KittiStepSource(spec)


def _open_kitti(spec: str, options: DatasetsConfig) -> FrameSource:
    from videocups_ray.data.kitti_step import KittiStepSource
    from videocups_ray.data.predictions import KittiStepPredictions

    if (Path(spec) / "images").is_dir():
        return KittiStepSource(spec)
    return KittiStepPredictions(spec)  # labels only: predictions, or ground truth without images


def _open_cityscapes(spec: str, options: DatasetsConfig) -> FrameSource:
    from videocups_ray.data.cityscapes_vps import CityscapesVpsSource
    from videocups_ray.data.predictions import CityscapesVpsPredictions

    path = Path(spec)
    if any(sub.is_dir() and next(sub.glob("*_leftImg8bit.png"), None) is not None
           for sub in (path, path / "img", path / "img_all")):
        return CityscapesVpsSource(spec)
    return CityscapesVpsPredictions(spec)


def _open_vip(spec: str, options: DatasetsConfig) -> FrameSource:
    from videocups_ray.data.predictions import VipDeepLabPredictions

    return VipDeepLabPredictions(spec)


def _open_waymo(spec: str, options: DatasetsConfig) -> FrameSource:
    from videocups_ray.data.waymo import WaymoSource

    return WaymoSource(spec, cameras=options.waymo_cameras, class_map=options.waymo_class_map)


def _open_mots(spec: str, options: DatasetsConfig) -> FrameSource:
    from videocups_ray.data.mots import MotsSource

    return MotsSource(spec)


def _open_video(spec: str, options: DatasetsConfig) -> FrameSource:
    from videocups_ray.data.video import VideoFileSource

    return VideoFileSource(spec)


def _open_images(spec: str, options: DatasetsConfig) -> FrameSource:
    from videocups_ray.data.video import open_image_or_list

    return open_image_or_list(spec)


# --------------------------------------------------------------------------- writers
def _write_kitti(out_dir, video_id, frame_index, semantic, instance, depth=None) -> Path:
    from videocups_ray.data.predictions import write_kitti_step_prediction

    return write_kitti_step_prediction(out_dir, video_id, frame_index, semantic, instance)


def _write_cityscapes(out_dir, video_id, frame_index, semantic, instance, depth=None) -> Path:
    from videocups_ray.data.predictions import write_cityscapes_vps_prediction

    return write_cityscapes_vps_prediction(out_dir, video_id, frame_index, semantic, instance)


def _write_vip(out_dir, video_id, frame_index, semantic, instance, depth=None) -> Path:
    from videocups_ray.data.predictions import write_vip_deeplab_prediction

    return write_vip_deeplab_prediction(out_dir, video_id, frame_index, semantic, instance, depth)


def _write_mots(out_dir, video_id, frame_index, semantic, instance, depth=None) -> Path:
    from videocups_ray.data.mots import write_mots_png_prediction

    return write_mots_png_prediction(out_dir, video_id, frame_index, semantic, instance)


def _detect_shards(spec: str) -> bool:
    from videocups_ray.data.shards import is_shard_dir

    return os.path.isdir(spec) and is_shard_dir(spec)


def _open_shards(spec: str, options: DatasetsConfig) -> FrameSource:
    from videocups_ray.data.shard_source import ShardSource

    return ShardSource(spec)


# Detection order matters: the specific layouts first, the catch-all image folder last.
_ALL = (
    Format("shards", "a videocups shard folder (with _manifest/ or manifest.json)",
           "the images stored in pseudo-label shards (their labels are not read as ground truth)",
           _detect_shards, _open_shards),
    Format("synthdrive", "a folder with synthdrive.json",
           "KITTI-STEP layout + depth/flow/motion PNGs and calib/*.json", _detect_synthdrive, _open_synthdrive),
    Format("waymo", "a folder (local, s3://, gs://) with camera_image/ and camera_segmentation/ *.parquet",
           "Waymo Open Dataset v2 Parquet: panoptic_label uint16 PNG, class * divisor + local instance",
           _detect_waymo, _open_waymo),
    Format("mots", "a folder with instances_txt/ or instances/ (KITTI-MOTS) or <seq>/gt/gt.txt (MOTSChallenge)",
           "frame id class_id height width rle (COCO RLE), id = class * 1000 + instance, class 10 ignore; "
           "or 16-bit PNG with the same ids", _detect_mots, _open_mots, _write_mots),
    Format("vip-deeplab", "a folder with flat panoptic/<video>_<frame>.png (and depth/)",
           "RGB PNG, R = class, G = instance; depth uint16 metres * 256", _detect_vip, _open_vip, _write_vip),
    Format("kitti-step", "a folder with images/ (+ panoptic/ or panoptic_maps/), or panoptic/ RGB PNGs",
           "RGB PNG, R = class, instance = G * 256 + B", _detect_kitti, _open_kitti, _write_kitti),
    Format("cityscapes-vps", "*_leftImg8bit.png in ., img/ or img_all/, or panoptic/ 16-bit PNGs",
           "16-bit PNG, trainId * 1000 + instance (< 1000 bare class; 32 = DVPS void); _depth.png "
           "uint16 metres * 256", _detect_cityscapes, _open_cityscapes, _write_cityscapes),
    Format("video", f"a file ending in {', '.join(VIDEO_EXTENSIONS)}", "no labels", _detect_video, _open_video),
    Format("images", "a folder of images, a glob, an image, or a list file (one image or video path a line)",
           "no labels", _detect_images, _open_images),
)
FORMATS: dict[str, Format] = {f.name: f for f in _ALL}


def _looked_for() -> str:
    return "; ".join(f"{f.name}: {f.looks_for}" for f in _ALL)


def get_format(name: str) -> Format:
    """The registry entry of ``name``; UnknownFormatError lists the known ones."""
    if name not in FORMATS:
        raise UnknownFormatError(f"unknown format {name!r}; known formats: {', '.join(FORMATS)}")
    return FORMATS[name]


def detect_format(spec: str | os.PathLike) -> str:
    """The format ``open_source`` would use for ``spec`` (the first in :data:`FORMATS` order
    whose test matches). DataError, listing every test, when none does."""
    spec = os.fspath(spec)
    is_remote = "://" in spec
    if not is_remote and not Path(spec).exists() and not globlib.has_magic(spec):
        raise DataError(f"{spec}: no such file or folder")
    for fmt in _ALL:
        if fmt.detect(spec):
            return fmt.name
    raise DataError(f"{spec}: matches no known format. Looked for: {_looked_for()}")


def open_source(spec: str | os.PathLike, format: str | None = None,  # noqa: A002
                options: DatasetsConfig | None = None) -> FrameSource:
    """Open ``spec`` (a dataset folder, prediction folder, video, image folder, glob or list
    file) as a FrameSource, in ``format`` or the detected one; ``options`` are the readers'
    config section (defaults when None)."""
    spec = os.fspath(spec)
    fmt = get_format(format) if format is not None else FORMATS[detect_format(spec)]
    return fmt.open(spec, options or DatasetsConfig())


def writable_formats() -> list[str]:
    """Names of the formats predictions can be written in."""
    return [f.name for f in _ALL if f.write is not None]


def write_prediction(format: str, out_dir: str | os.PathLike, video_id: str, frame_index: int,  # noqa: A002
                     semantic: np.ndarray, instance: np.ndarray, depth: np.ndarray | None = None) -> Path:
    """Write one predicted frame in ``format``; UnknownFormatError names the writable ones."""
    fmt = get_format(format)
    if fmt.write is None:
        raise UnknownFormatError(f"format {format!r} is read-only; predictions can be written as "
                                 f"{', '.join(writable_formats())}")
    return fmt.write(out_dir, video_id, frame_index, semantic, instance, depth=depth)
