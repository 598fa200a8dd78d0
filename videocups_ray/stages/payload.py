"""What of a frame travels to which actor: the image to everyone, ground truth only where a cue reads it.

A source's :class:`Frame` may carry ground truth next to the image (SynthDrive: depth, forward
and backward flow with validity, panoptic labels, motion mask; ~60 MB a frame at 1024x2048
against 6 MB of image). Labeling never reads it, and evaluation reads it from the source
itself (``pipelines/evaluate.py`` opens the ground-truth source again), so the Ray engines
ship a batch as parts:

- the **base** part (:func:`base_batch`): image, ids and the small ``extra`` items (``K``,
  pose, timestamps: anything of at most :data:`SMALL_EXTRA_BYTES`), sent to every consumer;
- one **ground-truth** part per distinct need (:func:`gt_batch`), only where a configured cue
  backend reads ground truth (``oracle`` / ``simulated``: :func:`gt_fields`), sent only to
  that cue's actor, which puts it back on the frames (:func:`merge_batch`).

With learned or handmade cues only the base part exists. The parts hold the same arrays as
the full frames, so every engine computes the same cues (``tests/test_engines_identical.py``).
No Ray here.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from videocups_ray.config import Config
from videocups_ray.data.types import DataError, Frame
from videocups_ray.stages.base import PairBatch

SMALL_EXTRA_BYTES = 4096  # an ``extra`` item up to this size is metadata (K, pose) and travels with the image

# ground truth each backend reads from a frame: Frame attributes, and ``extra.KEY`` entries
_GT = {
    ("flow", "oracle"): ("flow", "flow_valid", "extra.flow_bw", "extra.flow_bw_valid"),
    ("flow", "simulated"): ("flow", "flow_valid", "extra.flow_bw", "extra.flow_bw_valid"),
    ("depth", "oracle"): ("depth", "extra.motion"),
    ("depth", "simulated"): ("depth", "extra.motion"),
    ("features", "simulated"): ("semantic",),
}
_ATTRS = ("semantic", "instance", "depth", "flow", "flow_valid")
CONSUMERS = ("flow", "depth", "features")


def gt_fields(cfg: Config, kind: str) -> tuple[str, ...]:
    """The ground-truth fields cue ``kind``'s configured backend reads (empty for real cues)."""
    return _GT.get((kind, getattr(cfg.cues, kind).backend), ())


@dataclass(frozen=True)
class PayloadPlan:
    """How the parts of one batch are cut: ``groups`` are the distinct ground-truth field sets
    (one part each, after the base part), ``part_of[kind]`` the index of kind's part in
    ``groups`` or None (kind reads the base part alone)."""

    groups: tuple[tuple[str, ...], ...]
    part_of: dict

    @classmethod
    def from_config(cls, cfg: Config) -> "PayloadPlan":
        groups: list[tuple[str, ...]] = []
        part_of: dict[str, int | None] = {}
        for kind in CONSUMERS:
            fields = gt_fields(cfg, kind)
            if not fields:
                part_of[kind] = None
                continue
            if fields not in groups:
                groups.append(fields)
            part_of[kind] = groups.index(fields)
        return cls(tuple(groups), part_of)

    @property
    def num_parts(self) -> int:
        """Base part + one per ground-truth group."""
        return 1 + len(self.groups)

    def split(self, batch: PairBatch) -> list[PairBatch]:
        """``[base, gt_0, gt_1, ...]`` of one batch."""
        return [base_batch(batch)] + [gt_batch(batch, g) for g in self.groups]


def _small(v) -> bool:
    return int(getattr(v, "nbytes", 0)) <= SMALL_EXTRA_BYTES


def _map_frames(batch: PairBatch, fn) -> PairBatch:
    """``batch`` with ``fn`` applied to each distinct frame once (pairs share frame objects, so
    the shared frame stays one object and is pickled once)."""
    done: dict[int, Frame] = {}

    def one(f: Frame) -> Frame:
        if id(f) not in done:
            done[id(f)] = fn(f)
        return done[id(f)]

    return replace(batch, frames_t=[one(f) for f in batch.frames_t], frames_t1=[one(f) for f in batch.frames_t1])


def base_batch(batch: PairBatch) -> PairBatch:
    """The image, ids and small ``extra`` items of every frame; no ground-truth array."""
    return _map_frames(batch, lambda f: Frame(f.video_id, f.frame_index, f.image,
                                              extra={k: v for k, v in f.extra.items() if _small(v)}))


def gt_batch(batch: PairBatch, fields: tuple[str, ...]) -> PairBatch:
    """Only ``fields`` of every frame (image left out: an empty placeholder array). A field a
    frame lacks stays absent, and the backend that needs it names the frame (as without parts)."""
    def pick(f: Frame) -> Frame:
        out = Frame(f.video_id, f.frame_index, np.empty((0, 0, 3), np.uint8))
        for name in fields:
            if name.startswith("extra."):
                key = name[len("extra."):]
                if key in f.extra:
                    out.extra[key] = f.extra[key]
            else:
                setattr(out, name, getattr(f, name))
        return out

    return _map_frames(batch, pick)


def merge_batch(base: PairBatch, gt: PairBatch | None) -> PairBatch:
    """``base`` with the ground truth of ``gt`` put back on its frames (frame by frame, same ids)."""
    if gt is None:
        return base
    if (base.stream, base.seq) != (gt.stream, gt.seq) or len(base.frames_t) != len(gt.frames_t) \
            or len(base.frames_t1) != len(gt.frames_t1):
        raise DataError(f"payload: ground-truth part {gt.stream}#{gt.seq} does not match batch {base.stream}#{base.seq}")
    by_key = {(f.video_id, f.frame_index): f for f in gt.frames_t + gt.frames_t1}

    def put(f: Frame) -> Frame:
        g = by_key.get((f.video_id, f.frame_index))
        if g is None:
            raise DataError(f"payload: {f.video_id} frame {f.frame_index} is missing from its ground-truth part")
        kw = {a: getattr(g, a) for a in _ATTRS if getattr(g, a) is not None}
        return replace(f, extra={**f.extra, **g.extra}, **kw)

    return _map_frames(base, put)
