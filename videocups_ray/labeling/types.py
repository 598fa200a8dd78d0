"""What flows into and out of the labeling layer: per-frame cues, proposals, labelled frames.

All arrays are numpy, at the image resolution ``H x W`` unless stated. Flows follow the
kernels' backward-warp convention: ``flow_fw`` of frame t maps a pixel x of t to
``x + flow_fw(x)`` in t+1, ``flow_bw`` maps it to ``x + flow_bw(x)`` in t-1.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from videocups_ray.data.types import DataError


def _frame_name(video_id: str, frame_index: int) -> str:
    return f"{video_id} frame {frame_index}"


def check_array(arr: np.ndarray | None, name: str, where: str, shape: tuple[int, ...],
                *, optional: bool = False) -> None:
    """Raise :class:`DataError` naming ``where``/``name`` if ``arr`` is missing or mis-shaped."""
    if arr is None:
        if optional:
            return
        raise DataError(f"{where}: {name} is missing")
    if not isinstance(arr, np.ndarray):
        raise DataError(f"{where}: {name} must be a numpy array, got {type(arr).__name__}")
    if arr.shape != shape:
        raise DataError(f"{where}: {name} has shape {arr.shape}, expected {shape}")



def _check_flow_fields(item: FrameCues | FrameProposal, h: int, w: int) -> None:
    """The optional flows (``H x W x 2``) and occlusion masks (``H x W``) of a frame's record."""
    check_array(item.flow_fw, "flow_fw", item.name, (h, w, 2), optional=True)
    check_array(item.flow_bw, "flow_bw", item.name, (h, w, 2), optional=True)
    check_array(item.occ_fw, "occ_fw", item.name, (h, w), optional=True)
    check_array(item.occ_bw, "occ_bw", item.name, (h, w), optional=True)

@dataclass
class FrameCues:
    """Everything the cue stages produce for one frame.

    ``depth`` float32 metres; ``motion_prob`` float32 in [0, 1]; ``flow_fw`` (t->t+1) and
    ``flow_bw`` (t->t-1) float32 ``H x W x 2`` pixels (x, y), None at the last / first frame;
    ``occ_fw`` / ``occ_bw`` bool, True where the pixel has no correspondence in t+1 / t-1;
    ``features_high`` / ``features_low`` float32 ``C x h x w`` L2-normalised over C, at a
    reduced resolution (the two scales of DESIGN.md section 4 step 4).
    """

    video_id: str
    frame_index: int
    depth: np.ndarray
    motion_prob: np.ndarray
    flow_fw: np.ndarray | None
    flow_bw: np.ndarray | None
    occ_fw: np.ndarray | None
    occ_bw: np.ndarray | None
    features_high: np.ndarray
    features_low: np.ndarray | None = None

    @property
    def shape(self) -> tuple[int, int]:
        return int(self.depth.shape[0]), int(self.depth.shape[1])

    @property
    def name(self) -> str:
        return _frame_name(self.video_id, self.frame_index)

    def validate(self) -> None:
        """Shapes and dtypes agree; raises :class:`DataError` naming the frame and the key."""
        if not isinstance(self.depth, np.ndarray) or self.depth.ndim != 2:
            raise DataError(f"{self.name}: depth must be an H x W array")
        h, w = self.shape
        check_array(self.motion_prob, "motion_prob", self.name, (h, w))
        _check_flow_fields(self, h, w)
        if self.flow_fw is None and self.flow_bw is None:
            raise DataError(f"{self.name}: neither flow_fw nor flow_bw is given")
        for key in ("features_high", "features_low"):
            feats = getattr(self, key)
            if feats is None and key == "features_low":
                continue
            if not isinstance(feats, np.ndarray) or feats.ndim != 3:
                raise DataError(f"{self.name}: {key} must be a C x h x w array")


@dataclass
class FrameProposal:
    """Per-frame, untracked labels plus the motion the tracker needs to link frames.

    ``instances`` int32 proposal IDs (0 none, 1..N); ``semantic`` uint8 pseudo-class per pixel.
    """

    video_id: str
    frame_index: int
    instances: np.ndarray
    semantic: np.ndarray
    flow_fw: np.ndarray | None
    flow_bw: np.ndarray | None
    occ_fw: np.ndarray | None
    occ_bw: np.ndarray | None
    depth: np.ndarray | None = None  # the depth cue, carried to the shards (labeling.write_depth_cue)

    @property
    def shape(self) -> tuple[int, int]:
        return int(self.instances.shape[0]), int(self.instances.shape[1])

    @property
    def name(self) -> str:
        return _frame_name(self.video_id, self.frame_index)

    def validate(self) -> None:
        if not isinstance(self.instances, np.ndarray) or self.instances.ndim != 2:
            raise DataError(f"{self.name}: instances must be an H x W array")
        h, w = self.shape
        check_array(self.semantic, "semantic", self.name, (h, w))
        if not np.issubdtype(self.instances.dtype, np.integer):
            raise DataError(f"{self.name}: instances must be integer IDs, got dtype {self.instances.dtype}")
        if self.semantic.dtype != np.uint8:
            raise DataError(f"{self.name}: semantic must be uint8 pseudo-classes, got dtype {self.semantic.dtype}")
        _check_flow_fields(self, h, w)

    def to_dict(self) -> dict:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}

    @classmethod
    def from_dict(cls, d: dict) -> "FrameProposal":
        return cls(**d)


@dataclass
class LabelledFrame:
    """One frame of pseudo-labels (DESIGN.md section 4 step 7), before the thing/stuff split.

    ``semantic`` uint8 pseudo-class, ``instance`` int32 track ID (0 none), ``ignore`` bool
    (unreliable pixels: occluded). ``final`` is False for frames emitted online before their
    clip closed; the same frame is emitted again with ``final=True`` once it has.
    """

    video_id: str
    frame_index: int
    semantic: np.ndarray
    instance: np.ndarray
    ignore: np.ndarray
    final: bool
    clip_index: int
    depth: np.ndarray | None = None  # float32 metres, the depth cue (labeling.write_depth_cue)

    @property
    def name(self) -> str:
        return _frame_name(self.video_id, self.frame_index)
