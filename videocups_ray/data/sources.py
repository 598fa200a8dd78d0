"""One interface for every frame source.

A source is a set of videos; each video is an ordered list of frames. ``frames(video_id,
start, stop)`` takes *positions* in that list (for the usual contiguous numbering,
position == ``Frame.frame_index``), so a pipeline can cut a long video into chunks without
knowing how the files are numbered.

The readers of each format live in their own modules; :mod:`videocups_ray.data.formats`
names them, detects them and opens them (``open_source``).
"""

from __future__ import annotations

import abc
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from videocups_ray.data.encodings import read_png
from videocups_ray.data.types import DataError, Frame

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
