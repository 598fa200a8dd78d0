"""Data types shared by every layer: a frame with optional ground truth, and data errors."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


class DataError(ValueError):
    """Bad input data. The message names the file (or video/frame) and what is wrong."""


class UnknownFormatError(DataError):
    """A dataset or encoding format name that this project does not know."""


@dataclass
class Frame:
    """One video frame as every frame source yields it.

    ``semantic`` (uint8, 255 = void) and ``instance`` (int32 track ID, 0 = none) are present
    where the source has panoptic ground truth; ``depth`` (float32, z-depth in metres, 0 or
    NaN = invalid), ``flow`` (float32 HxWx2, forward t->t+1, pixels) with ``flow_valid`` where
    it has geometry ground truth. ``extra`` holds source-specific items (e.g. the SynthDrive
    independent-motion mask under ``"motion"``, intrinsics under ``"K"``, pose under ``"pose"``).
    """

    video_id: str
    frame_index: int
    image: np.ndarray  # HxWx3 uint8 RGB
    semantic: np.ndarray | None = None
    instance: np.ndarray | None = None
    depth: np.ndarray | None = None
    flow: np.ndarray | None = None
    flow_valid: np.ndarray | None = None
    extra: dict = field(default_factory=dict)

    @property
    def shape(self) -> tuple[int, int]:
        return int(self.image.shape[0]), int(self.image.shape[1])

    def panoptic(self, label_divisor: int = 65536) -> np.ndarray:
        """``semantic * label_divisor + instance`` as int64 (the metrics' input format)."""
        if self.semantic is None or self.instance is None:
            raise DataError(f"{self.video_id} frame {self.frame_index}: no panoptic labels")
        return self.semantic.astype(np.int64) * label_divisor + self.instance.astype(np.int64)
