"""Panoptic prediction folders shared by the KITTI-STEP and Cityscapes-VPS formats.

Both formats use one layout, ``out_dir/panoptic/<video>/<frame:06d>.png`` (so one evaluator
reads both); they differ only in the PNG encoding, which the caller passes in. Keeping the
layout, the atomic write and the folder reader here gives one place to fix each of them.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

from videocups_ray.data.encodings import read_png, write_png
from videocups_ray.data.types import DataError

#: (semantic, instance) -> PNG array; raises ValueError when the IDs do not fit the encoding.
PanopticEncoder = Callable[[np.ndarray, np.ndarray], np.ndarray]
#: (PNG array, path for error messages) -> (semantic, instance).
PanopticDecoder = Callable[[np.ndarray, str], tuple[np.ndarray, np.ndarray]]


def panoptic_prediction_path(out_dir: str | os.PathLike, video_id: str, frame_index: int) -> Path:
    """``out_dir/panoptic/<video>/<frame:06d>.png``."""
    return Path(out_dir) / "panoptic" / str(video_id) / f"{int(frame_index):06d}.png"


def write_panoptic_prediction(out_dir: str | os.PathLike, video_id: str, frame_index: int,
                              semantic: np.ndarray, instance: np.ndarray, encode: PanopticEncoder) -> Path:
    """Encode one predicted frame with ``encode`` and write it atomically; returns the path.

    An ID the encoding cannot hold raises DataError naming the file, video and frame.
    """
    path = panoptic_prediction_path(out_dir, video_id, frame_index)
    try:
        png = encode(np.asarray(semantic), np.asarray(instance))
    except ValueError as exc:
        raise DataError(f"{path}: cannot encode prediction for {video_id!r} frame {frame_index}: {exc}") from None
    write_png(path, png)
    return path


class PanopticPredictions:
    """Reads ``out_dir/panoptic/<video>/<frame>.png`` files with a format's decoder.

    Subclasses set ``decode = staticmethod(<format decoder>)`` and may override
    ``_frame_number`` (how a file name that is not a frame number is reported).
    """

    decode: PanopticDecoder

    def __init__(self, out_dir: str | os.PathLike):
        self.root = Path(out_dir) / "panoptic"
        if not self.root.is_dir():
            raise DataError(f"{self.root}: prediction folder not found")

    @staticmethod
    def _frame_number(path: Path) -> int:
        if not path.stem.isdigit():
            raise DataError(f"{path}: expected <frame:06d>.png")
        return int(path.stem)

    def videos(self) -> list[str]:
        return sorted(p.name for p in self.root.iterdir() if p.is_dir())

    def frame_indices(self, video_id: str) -> list[int]:
        folder = self.root / video_id
        if not folder.is_dir():
            raise DataError(f"{folder}: no predictions for video {video_id!r}")
        return sorted({self._frame_number(p) for p in folder.iterdir()
                       if p.is_file() and p.suffix.lower() == ".png"})

    def read(self, video_id: str, frame_index: int) -> tuple[np.ndarray, np.ndarray]:
        """(semantic, instance) of one frame."""
        path = panoptic_prediction_path(self.root.parent, video_id, frame_index)
        return self.decode(read_png(path), str(path))

    def __iter__(self) -> Iterator[tuple[str, int, np.ndarray, np.ndarray]]:
        for vid in self.videos():
            for idx in self.frame_indices(vid):
                yield (vid, idx, *self.read(vid, idx))
