"""Segmentation and Tracking Quality (STQ), Weber et al., "STEP: Segmenting and Tracking
Every Pixel", NeurIPS 2021 Datasets and Benchmarks.

STQ = sqrt(AQ * SQ). SQ is the class mean IoU over every pixel of every frame; AQ is the
pixel-weighted track association quality of thing pixels, pooled over the tracks of all
sequences. The corner cases follow the reference numpy implementation in
google-research/deeplab2 (``evaluation/numpy/segmentation_and_tracking_quality.py``):

- association ignores the class, but a predicted track is a full panoptic ID, so a class flip
  starts a new predicted track;
- ground-truth crowd (thing class, instance 0) is no track, and predicted thing pixels on it
  are left out of the predicted track areas; predicted thing pixels on void or stuff count
  (as false-positive association area); a predicted thing with instance 0 is an ordinary track;
- a sequence without ground-truth tracks has AQ 0 but adds nothing to the pooled AQ;
- the IoU mean runs over the classes whose union is non-zero; a prediction of the ignore label
  on a valid ground-truth pixel adds one zero-IoU entry (the ignore column of the confusion
  matrix has a union there), as the reference does for ``ignore_label`` above, equal to or
  inside the class range.

All counting is bincount-based per frame; the state is one confusion matrix and three small
count tables per sequence, so frames of different sequences may arrive interleaved.
"""

from __future__ import annotations

from typing import Any, Hashable, Iterable

import numpy as np

from videocups_ray.metrics._counting import (
    check_label_pair,
    check_thing_classes,
    class_masks,
    compact_panoptic,
    decode_classes,
    pair_counts_compacted,
    reduce_pairs,
    reduce_values,
)

# Per-frame tables are merged into one table per sequence once this many are pending.
_PENDING_TABLES = 64


class _SequenceState:
    """Accumulated statistics of one sequence."""

    def __init__(self, matrix_size: int):
        self.confusion = np.zeros((matrix_size, matrix_size), np.int64)
        self.num_frames = 0
        # Lists of per-frame count tables, merged lazily (see _compact).
        self.gt_tables: list[tuple[np.ndarray, np.ndarray]] = []
        self.pred_tables: list[tuple[np.ndarray, np.ndarray]] = []
        self.pair_tables: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []

    def compact(self) -> None:
        self.gt_tables = [_merge_values(self.gt_tables)]
        self.pred_tables = [_merge_values(self.pred_tables)]
        self.pair_tables = [_merge_pairs(self.pair_tables)]


def _merge_values(tables: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    if not tables:
        return np.empty(0, np.int64), np.empty(0, np.int64)
    return reduce_values(np.concatenate([t[0] for t in tables]), np.concatenate([t[1] for t in tables]))


def _merge_pairs(tables: list[tuple[np.ndarray, np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    if not tables:
        empty = np.empty(0, np.int64)
        return empty, empty, empty
    return reduce_pairs(*(np.concatenate([t[i] for t in tables]) for i in range(3)))


class STQ:
    """Streaming STQ / AQ / SQ over frames of one or more sequences.

    Inputs are int64-compatible HxW panoptic maps ``semantic * label_divisor + instance``.
    ``result()`` returns fractions in [0, 1] (not percentages).
    """

    def __init__(self, num_classes: int, things: Iterable[int], ignore_label: int = 255,
                 label_divisor: int = 65536):
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        if ignore_label < 0:
            raise ValueError(f"ignore_label must be >= 0, got {ignore_label}")
        if label_divisor < 2:
            raise ValueError(f"label_divisor must be >= 2, got {label_divisor}")
        things = check_thing_classes(things, num_classes, ignore_label)
        self.num_classes = num_classes
        self.things = things
        self.ignore_label = ignore_label
        self.label_divisor = label_divisor
        # Confusion-matrix layout of the reference: an extra row/column for an ignore label at
        # or above num_classes; an ignore label inside the range uses its own row/column.
        self._matrix_size = num_classes + 1 if ignore_label >= num_classes else num_classes
        self._ignore_index = num_classes if ignore_label >= num_classes else ignore_label
        self._is_thing, _ = class_masks(num_classes, things, ignore_label, size=self._matrix_size)
        self.reset()

    def reset(self) -> None:
        """Forget everything accumulated."""
        self._sequences: dict[Hashable, _SequenceState] = {}

    # ------------------------------------------------------------------ accumulation
    def update(self, gt_panoptic: np.ndarray, pred_panoptic: np.ndarray, sequence_id: Hashable = 0,
               *, frame_index: int | None = None) -> None:
        """Add one frame. ``frame_index`` (optional) only names the frame in error messages."""
        state = self._sequences.get(sequence_id)
        n_seen = state.num_frames if state is not None else 0
        where = f"sequence {sequence_id!r} frame {frame_index if frame_index is not None else f'#{n_seen}'}"
        gt, pred = check_label_pair(gt_panoptic, pred_panoptic, where)
        div = self.label_divisor
        gt_cls, gt_idx, gt_inst = decode_classes(gt, div, self.num_classes, self.ignore_label, "ground truth", where)
        pred_cls, pred_idx, pred_inst = decode_classes(pred, div, self.num_classes, self.ignore_label,
                                                       "prediction", where)
        if state is None:
            state = self._sequences[sequence_id] = _SequenceState(self._matrix_size)

        # Confusion matrix: count (gt class, pred class) pairs of the classes present, then
        # scatter into the matrix (an ignore label above the range takes the last row/column).
        gt_row = np.where(gt_cls == self.ignore_label, self._ignore_index, gt_cls)
        pred_col = np.where(pred_cls == self.ignore_label, self._ignore_index, pred_cls)
        n_pred = pred_cls.size
        small = np.bincount(gt_idx * n_pred + pred_idx, minlength=gt_cls.size * n_pred)
        state.confusion[np.ix_(gt_row, pred_col)] += small.reshape(gt_cls.size, n_pred)
        state.num_frames += 1

        gt_thing = self._is_thing[gt_row][gt_idx]
        pred_thing = self._is_thing[pred_col][pred_idx]
        crowd = gt_thing & (gt_inst == 0)
        gt_track = gt_thing & ~crowd
        pred_track = pred_thing & ~crowd
        both = gt_track & pred_track
        gt_ids, gt_index = compact_panoptic(gt_cls, gt_idx[gt_track], gt_inst[gt_track], div)
        pred_ids, pred_index = compact_panoptic(pred_cls, pred_idx[pred_track], pred_inst[pred_track], div)
        state.gt_tables.append((gt_ids, np.bincount(gt_index, minlength=gt_ids.size)))
        state.pred_tables.append((pred_ids, np.bincount(pred_index, minlength=pred_ids.size)))
        state.pair_tables.append(pair_counts_compacted(
            *compact_panoptic(gt_cls, gt_idx[both], gt_inst[both], div),
            *compact_panoptic(pred_cls, pred_idx[both], pred_inst[both], div)))
        if len(state.pair_tables) >= _PENDING_TABLES:
            state.compact()

    # ------------------------------------------------------------------ results
    def _track_scores(self, state: _SequenceState) -> tuple[np.ndarray, np.ndarray]:
        """(GT track panoptic IDs, association score of each track); AQ is their mean."""
        state.compact()
        gt_ids, gt_areas = state.gt_tables[0]
        pred_ids, pred_areas = state.pred_tables[0]
        pair_gt, pair_pred, tpa = state.pair_tables[0]
        if gt_ids.size == 0:
            return gt_ids, np.empty(0, np.float64)
        gt_pos = np.searchsorted(gt_ids, pair_gt)
        gt_size = gt_areas[gt_pos]
        pred_size = pred_areas[np.searchsorted(pred_ids, pair_pred)]
        tpa_f = tpa.astype(np.float64)
        # TPA / (TPA + FPA + FNA) weighted by TPA, normalised by the GT track size.
        score = tpa_f * tpa_f / (gt_size + pred_size - tpa_f) / gt_size
        return gt_ids, np.bincount(gt_pos, weights=score, minlength=gt_ids.size)

    def _association(self, state: _SequenceState) -> tuple[float, int]:
        """(sum over GT tracks of the track's association score, number of GT tracks)."""
        gt_ids, scores = self._track_scores(state)
        return float(scores.sum()), int(gt_ids.size)

    def track_scores(self) -> dict[Hashable, dict[int, float]]:
        """Sequence -> {GT track panoptic ID -> association score}: the per-track terms whose
        pooled mean is AQ, so AQ can be split over any grouping of tracks
        (:func:`videocups_ray.metrics.aq_split.aq_split`)."""
        out: dict[Hashable, dict[int, float]] = {}
        for seq_id, state in self._sequences.items():
            ids, scores = self._track_scores(state)
            out[seq_id] = {int(i): float(s) for i, s in zip(ids, scores)}
        return out

    def _ious(self, confusion: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(IoU per matrix entry, union per matrix entry) with the ignore row removed."""
        confusion = confusion.copy()
        confusion[self._ignore_index, :] = 0  # void GT pixels are never a false positive
        tp = np.diag(confusion).astype(np.float64)
        union = confusion.sum(axis=0) + confusion.sum(axis=1) - tp
        return tp / np.maximum(union, 1e-15), union

    def _mean_iou(self, confusion: np.ndarray) -> float:
        iou, union = self._ious(confusion)
        present = np.count_nonzero(union)
        # No class at all (every pixel void): nothing to measure, report 0 rather than NaN.
        return float(iou.sum() / present) if present else 0.0

    def result(self) -> dict[str, Any]:
        """``{"STQ", "AQ", "SQ", "per_sequence", "per_class_iou", "num_frames", "num_tracks"}``."""
        per_sequence: dict[Hashable, dict[str, float | int]] = {}
        total_confusion = np.zeros((self._matrix_size, self._matrix_size), np.int64)
        aq_sum, n_tracks, n_frames = 0.0, 0, 0
        for seq_id, state in self._sequences.items():
            seq_aq_sum, seq_tracks = self._association(state)
            aq_sum += seq_aq_sum
            n_tracks += seq_tracks
            n_frames += state.num_frames
            total_confusion += state.confusion
            seq_aq = seq_aq_sum / seq_tracks if seq_tracks else 0.0
            seq_sq = self._mean_iou(state.confusion)
            per_sequence[seq_id] = {"STQ": float(np.sqrt(seq_aq * seq_sq)), "AQ": seq_aq, "SQ": seq_sq,
                                    "num_frames": state.num_frames, "num_tracks": seq_tracks}
        aq = aq_sum / n_tracks if n_tracks else 0.0
        sq = self._mean_iou(total_confusion)
        iou, union = self._ious(total_confusion)
        per_class_iou: list[float | None] = [
            float(iou[c]) if union[c] > 0 and c != self._ignore_index else None
            for c in range(self.num_classes)
        ]
        return {"STQ": float(np.sqrt(aq * sq)), "AQ": float(aq), "SQ": float(sq),
                "per_sequence": per_sequence, "per_class_iou": per_class_iou,
                "num_frames": n_frames, "num_tracks": n_tracks}
