"""Video Panoptic Quality (VPQ), Kim et al., "Video Panoptic Segmentation", CVPR 2020.

Follows the official evaluation (``tools/eval_vpq.py`` of mcahny/vps): for every window of n
consecutive frames (stride 1) of a sequence, segments with the same ID are one tube; tubes are
matched per category at IoU > 0.5, where the prediction's overlap with void is left out of the
union; crowd tubes (thing class, instance 0) are neither matched nor false negatives; an
unmatched predicted tube lying more than half on void plus the crowd of its own category is
not a false positive. Per-class IoU sums and TP/FP/FN are summed over all windows of all
sequences; PQ is the mean over classes with any TP, FP or FN; VPQ is the mean PQ over the
window sizes.

Segments: ground-truth void is every pixel of the ignore class; a stuff segment is the whole
class (its instance ID is dropped); a thing segment is the full panoptic ID. A predicted pixel
of the ignore class belongs to no segment. A predicted thing with instance 0 is an ordinary
segment.

Memory: a sequence keeps only the (gt segment, predicted segment) pair-count tables of its
last max(window) frames (a few hundred numbers each); a window is the sum of its frames' tables.
All results are fractions in [0, 1] (the reference prints percentages).

``protocol="vip-deeplab"`` computes VPQ as ViP-DeepLab's ``cityscapes-dvps/eval_dvpq.py``
does (windows of k frames stacked side by side, which is the same as summing their pair
tables), and differs from the default ``"vps"`` protocol in exactly three ways:

1. no crowd: a ground-truth thing with instance 0 is an ordinary segment (matched, or a
   false negative), not an ignored crowd region;
2. every segment is a full panoptic ID: stuff instance IDs are kept, not dropped;
3. an unmatched prediction is excused (no FP) only when more than half of it lies on void
   (not on void plus crowd).

Classes are averaged over those with any TP, FP or FN in both protocols (deeplab2's
``VideoPanopticQuality``, which ViP-DeepLab's script reimplements, excludes the others;
the script itself divides 0 by 0 there). A predicted pixel of the ignore class is no
segment in both (deeplab2 skips the ignored category).

DVPQ (:mod:`videocups_ray.metrics.dvpq`) passes ``reject``: predicted pixels whose depth is
too far off are moved to a segment of their own that matches nothing and is never a false
positive (``eval_dvpq`` relabels them to class 19, then drops class 19's counts), so they
still count in the ground-truth segment's area.
"""

from __future__ import annotations

from collections import deque
from typing import Any, Hashable, Iterable

import numpy as np

from videocups_ray.data.types import DataError
from videocups_ray.metrics._counting import (
    check_label_pair,
    check_thing_classes,
    class_masks,
    compact_panoptic,
    decode_classes,
    pair_counts_compacted,
    reduce_pairs,
)

_VOID = -1  # segment ID of ground-truth void / predicted ignore pixels
_REJECT = -2  # segment ID of predicted pixels rejected by DVPQ's depth test
PROTOCOLS = ("vps", "vip-deeplab")
_MATCH_IOU = 0.5  # a tube pair matches at IoU strictly above this
_IGNORED_FP_FRACTION = 0.5  # an unmatched prediction more than this on void+crowd is no FP

_PairTable = tuple[np.ndarray, np.ndarray, np.ndarray]  # (gt segment, pred segment, pixels)


class _ClassStats:
    """Per-class IoU sum and TP/FP/FN counts for one window size."""

    def __init__(self, num_classes: int):
        self.iou = np.zeros(num_classes, np.float64)
        self.tp = np.zeros(num_classes, np.int64)
        self.fp = np.zeros(num_classes, np.int64)
        self.fn = np.zeros(num_classes, np.int64)
        self.num_windows = 0


class VPQ:
    """Streaming VPQ over frames given in temporal order per sequence (sequences may interleave)."""

    def __init__(self, num_classes: int, things: Iterable[int], ignore_label: int = 255,
                 label_divisor: int = 65536, window_sizes: Iterable[int] = (1, 2, 3, 4),
                 protocol: str = "vps"):
        window_sizes = tuple(int(n) for n in window_sizes)
        if protocol not in PROTOCOLS:
            raise ValueError(f"protocol must be one of {PROTOCOLS}, got {protocol!r}")
        self.protocol = protocol
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        if label_divisor < 2:
            raise ValueError(f"label_divisor must be >= 2, got {label_divisor}")
        if not window_sizes or min(window_sizes) < 1 or len(set(window_sizes)) != len(window_sizes):
            raise ValueError(f"window_sizes must be distinct integers >= 1, got {window_sizes}")
        things = check_thing_classes(things, num_classes, ignore_label)
        self.num_classes = num_classes
        self.things = things
        self.ignore_label = ignore_label
        self.label_divisor = label_divisor
        self.window_sizes = window_sizes
        self._is_thing, self._valid_class = class_masks(num_classes, things, ignore_label)
        self.reset()

    def reset(self) -> None:
        """Forget everything accumulated."""
        self._history: dict[Hashable, deque[_PairTable]] = {}
        self._frames_seen: dict[Hashable, int] = {}
        self._last_index: dict[Hashable, int] = {}
        self._stats = {n: _ClassStats(self.num_classes) for n in self.window_sizes}

    # ------------------------------------------------------------------ per frame
    def _segments(self, ids: np.ndarray, name: str, where: str) -> tuple[np.ndarray, np.ndarray]:
        """``(segment IDs, segment index per pixel)``: the panoptic ID for things, class *
        divisor for stuff (instance dropped), -1 for the ignore class."""
        classes, class_index, instance = decode_classes(ids, self.label_divisor, self.num_classes,
                                                        self.ignore_label, name, where)
        is_thing = np.zeros(classes.size, bool)
        real = classes < self.num_classes
        is_thing[real] = self._is_thing[classes[real]]
        if self.protocol == "vps":  # stuff is one segment per class; ViP-DeepLab keeps the IDs
            instance = np.where(is_thing[class_index], instance, 0)
        seg_ids, seg_index = compact_panoptic(classes, class_index, instance, self.label_divisor)
        seg_ids[seg_ids // self.label_divisor == self.ignore_label] = _VOID
        return seg_ids, seg_index

    def update(self, gt_panoptic: np.ndarray, pred_panoptic: np.ndarray, sequence_id: Hashable = 0,
               *, frame_index: int | None = None, reject: np.ndarray | None = None) -> None:
        """Add the next frame of ``sequence_id``. With ``frame_index`` the order is checked.
        ``reject`` (bool HxW, DVPQ) marks predicted pixels that belong to no segment but still
        count in the ground truth's areas."""
        n_seen = self._frames_seen.get(sequence_id, 0)
        where = f"sequence {sequence_id!r} frame {frame_index if frame_index is not None else f'#{n_seen}'}"
        if frame_index is not None:
            last = self._last_index.get(sequence_id)
            if last is not None and frame_index <= last:
                raise DataError(f"{where}: frames must arrive in temporal order (previous frame {last})")
        gt, pred = check_label_pair(gt_panoptic, pred_panoptic, where)
        pred_ids, pred_index = self._segments(pred, "prediction", where)
        if reject is not None:
            reject = np.asarray(reject, bool).reshape(-1)
            if reject.size != pred.size:
                raise DataError(f"{where}: reject mask has {reject.size} pixels, the label map {pred.size}")
            pred_ids = np.append(pred_ids, _REJECT)
            pred_index = np.where(reject, pred_ids.size - 1, pred_index)
        table = pair_counts_compacted(*self._segments(gt, "ground truth", where), pred_ids, pred_index)
        history = self._history.setdefault(sequence_id, deque(maxlen=max(self.window_sizes)))
        history.append(table)
        self._frames_seen[sequence_id] = n_seen + 1
        if frame_index is not None:
            self._last_index[sequence_id] = frame_index
        for n in self.window_sizes:
            if len(history) >= n:
                window = list(history)[-n:]
                self._score_window(reduce_pairs(*(np.concatenate([t[i] for t in window]) for i in range(3))),
                                   self._stats[n])

    # ------------------------------------------------------------------ per window
    def _score_window(self, table: _PairTable, stats: _ClassStats) -> None:
        g, p, inter = table
        div = self.label_divisor
        stats.num_windows += 1
        gt_ids, g_inv = np.unique(g, return_inverse=True)
        pred_ids, p_inv = np.unique(p, return_inverse=True)
        gt_area = np.bincount(g_inv, weights=inter, minlength=gt_ids.size)
        pred_area = np.bincount(p_inv, weights=inter, minlength=pred_ids.size)
        void_of_pred = np.bincount(p_inv, weights=np.where(g == _VOID, inter, 0), minlength=pred_ids.size)

        gt_class = np.where(gt_ids < 0, -1, gt_ids // div)
        pred_class = np.where(pred_ids < 0, -1, pred_ids // div)
        gt_is_crowd = (gt_ids != _VOID) & self._is_thing[np.maximum(gt_class, 0)] & (gt_ids % div == 0)
        if self.protocol == "vip-deeplab":  # no crowd regions
            gt_is_crowd[:] = False

        # Candidate pairs: both real segments, same category, ground truth not crowd.
        cand = (g != _VOID) & (p >= 0)
        cand &= gt_class[g_inv] == pred_class[p_inv]
        cand &= ~gt_is_crowd[g_inv]
        gi, pi, ci = g_inv[cand], p_inv[cand], inter[cand].astype(np.float64)
        union = pred_area[pi] + gt_area[gi] - ci - void_of_pred[pi]
        iou = ci / union
        match = iou > _MATCH_IOU  # unique per segment: IoU > 0.5 cannot hold twice
        gt_matched = np.zeros(gt_ids.size, bool)
        pred_matched = np.zeros(pred_ids.size, bool)
        gt_matched[gi[match]] = True
        pred_matched[pi[match]] = True
        matched_class = gt_class[gi[match]]
        np.add.at(stats.tp, matched_class, 1)
        np.add.at(stats.iou, matched_class, iou[match])

        fn = (gt_ids != _VOID) & ~gt_is_crowd & ~gt_matched
        np.add.at(stats.fn, gt_class[fn], 1)

        # Overlap of each prediction with the crowd region of its own category.
        crowd_of_own_class = (g != _VOID) & gt_is_crowd[g_inv] & (gt_class[g_inv] == pred_class[p_inv])
        crowd_of_pred = np.bincount(p_inv, weights=np.where(crowd_of_own_class, inter, 0), minlength=pred_ids.size)
        unmatched = (pred_ids >= 0) & ~pred_matched
        ignorable = (void_of_pred + crowd_of_pred) / np.maximum(pred_area, 1) > _IGNORED_FP_FRACTION
        fp = unmatched & ~ignorable
        np.add.at(stats.fp, pred_class[fp], 1)

    # ------------------------------------------------------------------ results
    def _pq(self, stats: _ClassStats, select: np.ndarray) -> dict[str, float | int | None]:
        counted = select & self._valid_class & ((stats.tp + stats.fp + stats.fn) > 0)
        n = int(counted.sum())
        if n == 0:  # no class of this kind occurred: undefined, not zero
            return {"PQ": None, "SQ": None, "RQ": None, "n": 0}
        tp, fp, fn, iou = stats.tp[counted], stats.fp[counted], stats.fn[counted], stats.iou[counted]
        denom = tp + 0.5 * fp + 0.5 * fn
        pq = iou / denom
        sq = np.where(tp > 0, iou / np.maximum(tp, 1), 0.0)
        rq = tp / denom
        return {"PQ": float(pq.mean()), "SQ": float(sq.mean()), "RQ": float(rq.mean()), "n": n}

    def result(self) -> dict[str, Any]:
        """``{"VPQ", "VPQ_thing", "VPQ_stuff", "per_window": {n: {...}}}``; a value is None
        when no class of that kind has any TP, FP or FN."""
        per_window: dict[int, dict[str, Any]] = {}
        everything = np.ones(self.num_classes, bool)
        for n in self.window_sizes:
            stats = self._stats[n]
            all_ = self._pq(stats, everything)
            thing = self._pq(stats, self._is_thing)
            stuff = self._pq(stats, ~self._is_thing)
            per_class = {}
            for c in np.flatnonzero(self._valid_class & ((stats.tp + stats.fp + stats.fn) > 0)):
                denom = stats.tp[c] + 0.5 * stats.fp[c] + 0.5 * stats.fn[c]
                per_class[int(c)] = {"PQ": float(stats.iou[c] / denom), "TP": int(stats.tp[c]),
                                     "FP": int(stats.fp[c]), "FN": int(stats.fn[c])}
            per_window[n] = {"PQ": all_["PQ"], "PQ_thing": thing["PQ"], "PQ_stuff": stuff["PQ"],
                             "SQ": all_["SQ"], "RQ": all_["RQ"], "num_windows": stats.num_windows,
                             "per_class": per_class}

        def mean(key: str) -> float | None:
            values = [w[key] for w in per_window.values() if w[key] is not None]
            return float(np.mean(values)) if values else None

        return {"VPQ": mean("PQ"), "VPQ_thing": mean("PQ_thing"), "VPQ_stuff": mean("PQ_stuff"),
                "per_window": per_window}
