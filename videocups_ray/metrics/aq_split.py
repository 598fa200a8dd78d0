"""AQ split by track kind: association quality of static and of moving ground-truth tracks.

Issue 14: the pseudo-labels come from a motion cue, so they can only hold moving objects; a
trained model is worth its cost when it also tracks the static ones. STQ's AQ is a mean of
per-track association scores (:meth:`STQ.track_scores`), so splitting it is a matter of
grouping those scores by a per-track predicate.

:class:`TrackMotion` gives the usual predicate: a track is moving when at least
``moving_fraction`` of its pixels, over the whole sequence, lie on the ground-truth
independent-motion mask (SynthDrive's ``motion/``; ``Frame.extra["motion"]``).

Pure numpy; no Ray, no file I/O.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable

import numpy as np

from videocups_ray.data.types import DataError
from videocups_ray.metrics._counting import reduce_values, value_counts
from videocups_ray.metrics.stq import STQ

MovingPredicate = Callable[[Hashable, int], bool]  # (sequence id, GT panoptic track ID) -> moving?


class TrackMotion:
    """Per ground-truth segment (panoptic ID per sequence): pixels in total and on the motion
    mask, accumulated over frames."""

    def __init__(self, moving_fraction: float = 0.5):
        if not 0 < moving_fraction <= 1:
            raise ValueError(f"moving_fraction must be in (0, 1], got {moving_fraction}")
        self.moving_fraction = moving_fraction
        self.reset()

    def reset(self) -> None:
        """Forget everything accumulated."""
        # sequence -> (ids, total pixels, moving pixels); ids sorted, merged per update.
        self._counts: dict[Hashable, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}

    def update(self, gt_panoptic: np.ndarray, motion: np.ndarray, sequence_id: Hashable = 0, *,
               frame_index: int | None = None) -> None:
        """Add one frame: its ground-truth panoptic map and its boolean motion mask (same shape)."""
        where = f"sequence {sequence_id!r} frame {frame_index if frame_index is not None else '?'}"
        gt = np.asarray(gt_panoptic)
        motion = np.asarray(motion)
        if gt.shape != motion.shape:
            raise DataError(f"{where}: motion mask shape {motion.shape} differs from ground truth {gt.shape}")
        gt = gt.astype(np.int64, copy=False).reshape(-1)
        moving = motion.reshape(-1).astype(bool, copy=False)
        ids, total = value_counts(gt)
        mids, mcount = value_counts(gt[moving])
        on = np.zeros_like(total)
        on[np.searchsorted(ids, mids)] = mcount
        old = self._counts.get(sequence_id)
        if old is not None:
            all_ids = np.concatenate([old[0], ids])
            merged, tot = reduce_values(all_ids, np.concatenate([old[1], total]))
            _, mov = reduce_values(all_ids, np.concatenate([old[2], on]))
            ids, total, on = merged, tot, mov
        self._counts[sequence_id] = (ids, total, on)

    def is_moving(self, sequence_id: Hashable, track_id: int) -> bool:
        """Whether the track covers the motion mask for at least ``moving_fraction`` of its pixels."""
        counts = self._counts.get(sequence_id)
        if counts is None:
            raise DataError(f"sequence {sequence_id!r}: no motion mask was given for it")
        ids, total, on = counts
        pos = int(np.searchsorted(ids, track_id))
        if pos >= ids.size or ids[pos] != track_id:
            raise DataError(f"sequence {sequence_id!r}: track {track_id} never seen with a motion mask")
        return bool(on[pos] >= self.moving_fraction * total[pos])


def aq_split(stq: STQ, is_moving: MovingPredicate) -> dict[str, dict[str, float | int | None]]:
    """``{"static": {"AQ", "num_tracks"}, "moving": {...}}``, pooled over every sequence as
    STQ pools AQ. AQ is None for a kind without any track (no tracks is not a score of 0)."""
    sums = {"static": 0.0, "moving": 0.0}
    counts = {"static": 0, "moving": 0}
    for seq_id, tracks in stq.track_scores().items():
        for track_id, score in tracks.items():
            kind = "moving" if is_moving(seq_id, track_id) else "static"
            sums[kind] += score
            counts[kind] += 1
    return {k: {"AQ": sums[k] / counts[k] if counts[k] else None, "num_tracks": counts[k]} for k in sums}
