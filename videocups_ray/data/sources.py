"""One interface for every frame source, and ``open_source`` which picks the reader.

A source is a set of videos; each video is an ordered list of frames. ``frames(video_id,
start, stop)`` takes *positions* in that list (for the usual contiguous numbering,
position == ``Frame.frame_index``), so a pipeline can cut a long video into chunks without
knowing how the files are numbered.

Formats and how ``open_source`` recognises them when ``format`` is None:

- ``synthdrive``: a folder holding ``synthdrive.json`` (KITTI-STEP layout plus depth, flow,
  motion and calibration; read by :class:`KittiStepSource`).
- ``kitti-step``: a folder with ``images/`` and ``panoptic/`` (or ``panoptic_maps/``).
- ``cityscapes-vps``: a folder whose images are named ``*_leftImg8bit.png`` (directly, or in
  ``img/`` / ``img_all/``).
- ``video``: a file with a video extension (``.mp4``, ``.avi``, ...).
- ``images``: a folder of images, a glob pattern, or a text file listing image paths.
"""

from __future__ import annotations

import abc
import glob as globlib
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from videocups_ray.data.encodings import read_png
from videocups_ray.data.types import DataError, Frame, UnknownFormatError

VIDEO_EXTENSIONS = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg")
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
LIST_EXTENSIONS = (".txt", ".lst", ".list")


class FrameSource(abc.ABC):
    """A set of videos whose frames are read in order, with ground truth where present."""

    #: True when every frame carries ``semantic`` and ``instance`` ground truth.
    has_labels: bool = False

    @abc.abstractmethod
    def videos(self) -> list[str]:
        """Video IDs, sorted."""

    @abc.abstractmethod
    def num_frames(self, video_id: str) -> int:
        """Number of frames of one video."""

    @abc.abstractmethod
    def frames(self, video_id: str, start: int = 0, stop: int | None = None) -> Iterator[Frame]:
        """Frames at positions ``start <= i < stop`` of one video, in order."""

    def __iter__(self) -> Iterator[Frame]:
        for video_id in self.videos():
            yield from self.frames(video_id)

    def __len__(self) -> int:
        return sum(self.num_frames(v) for v in self.videos())

    # ----------------------------------------------------------------- helpers for subclasses
    def _check_video(self, video_id: str, known: dict | list) -> None:
        if video_id not in known:
            shown = ", ".join(sorted(known)[:10])
            raise DataError(f"{self!r}: unknown video {video_id!r} (known: {shown})")

    @staticmethod
    def _range(n: int, start: int, stop: int | None, what: str) -> range:
        stop = n if stop is None else stop
        if not (0 <= start <= stop <= n):
            raise DataError(f"{what}: frame range [{start}, {stop}) is outside [0, {n}]")
        return range(start, stop)


class VideoListSource(FrameSource):
    """A source that holds each video as a list, in frame order, in ``self._videos``
    (video ID -> items); subclasses fill it and turn an item into a :class:`Frame`."""

    _videos: dict[str, list]

    def videos(self) -> list[str]:
        return sorted(self._videos)

    def num_frames(self, video_id: str) -> int:
        self._check_video(video_id, self._videos)
        return len(self._videos[video_id])

    def _items(self, video_id: str, start: int, stop: int | None, where: str) -> Iterator[tuple[int, Any]]:
        """``(position, item)`` of one video's positions ``start <= i < stop``; ``where`` names the
        source in range errors."""
        self._check_video(video_id, self._videos)
        items = self._videos[video_id]
        for pos in self._range(len(items), start, stop, f"{where} video {video_id!r}"):
            yield pos, items[pos]


def check_same_size(label_shape: tuple[int, ...], image_shape: tuple[int, ...], label_path: Path,
                    image_path: Path) -> None:
    """A label map must cover its image exactly (no silent resizing)."""
    if tuple(label_shape[:2]) != tuple(image_shape[:2]):
        raise DataError(f"{label_path}: label size {label_shape[1]}x{label_shape[0]} differs from "
                        f"image {image_path} size {image_shape[1]}x{image_shape[0]}")



def read_png_matching(path: Path, image_shape: tuple[int, ...], image_path: Path) -> np.ndarray:
    """A ground-truth PNG (labels, depth, flow) of a frame, checked to cover its image exactly."""
    png = read_png(path)
    check_same_size(png.shape, image_shape, path, image_path)
    return png

# --------------------------------------------------------------------------- open_source
def _open_kitti(spec: str) -> FrameSource:
    from videocups_ray.data.kitti_step import KittiStepSource

    return KittiStepSource(spec)


def _open_synthdrive(spec: str) -> FrameSource:
    from videocups_ray.data.kitti_step import KittiStepSource

    if not (Path(spec) / "synthdrive.json").is_file():
        raise DataError(f"{spec}: not a SynthDrive folder (no synthdrive.json); write one with "
                        "videocups_ray.data.synthdrive first")
    return KittiStepSource(spec)


def _open_cityscapes(spec: str) -> FrameSource:
    from videocups_ray.data.cityscapes_vps import CityscapesVpsSource

    return CityscapesVpsSource(spec)


def _open_video(spec: str) -> FrameSource:
    from videocups_ray.data.video import VideoFileSource

    return VideoFileSource(spec)


def _open_images(spec: str) -> FrameSource:
    from videocups_ray.data.video import ImageFolderSource

    return ImageFolderSource.from_spec(spec)


FORMATS: dict[str, Callable[[str], FrameSource]] = {
    "kitti-step": _open_kitti,
    "cityscapes-vps": _open_cityscapes,
    "video": _open_video,
    "images": _open_images,
    "synthdrive": _open_synthdrive,
}


def detect_format(spec: str) -> str:
    """The format name ``open_source`` would use for ``spec`` (see the module docstring)."""
    path = Path(spec)
    if path.is_dir():
        if (path / "synthdrive.json").is_file():
            return "synthdrive"
        if (path / "images").is_dir() and any((path / d).is_dir() for d in ("panoptic", "panoptic_maps")):
            return "kitti-step"
        for sub in (path, path / "img", path / "img_all"):
            if sub.is_dir() and next(sub.glob("*_leftImg8bit.png"), None) is not None:
                return "cityscapes-vps"
        if (path / "images").is_dir():
            return "kitti-step"  # unlabelled KITTI-style layout
        return "images"
    if path.is_file():
        suffix = path.suffix.lower()
        if suffix in VIDEO_EXTENSIONS:
            return "video"
        if suffix in LIST_EXTENSIONS or suffix in IMAGE_EXTENSIONS:
            return "images"
        raise DataError(f"{spec}: cannot tell the format of a {suffix or 'extension-less'} file; "
                        f"pass format= one of {sorted(FORMATS)}")
    if globlib.has_magic(spec):
        return "images"
    raise DataError(f"{spec}: no such file or folder")


def open_source(spec: str | os.PathLike, format: str | None = None) -> FrameSource:  # noqa: A002
    """Open a dataset folder, video file, image folder, glob or path list as a FrameSource."""
    spec = os.fspath(spec)
    if format is None:
        format = detect_format(spec)  # noqa: A001
    if format not in FORMATS:
        raise UnknownFormatError(f"unknown source format {format!r}; known formats: {', '.join(sorted(FORMATS))}")
    return FORMATS[format](spec)
