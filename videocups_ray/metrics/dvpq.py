"""Depth-aware VPQ (DVPQ, Qiao et al., "ViP-DeepLab", CVPR 2021) and monocular depth metrics.

DVPQ at threshold lambda is VPQ where a predicted pixel counts only if its depth is good:
where the ground-truth depth is valid (> 0) and ``|d_pred - d_gt| / d_gt > lambda``, the
pixel is taken out of its predicted segment (it still counts in the ground truth's area),
as ViP-DeepLab's ``cityscapes-dvps/eval_dvpq.py`` does. Pixels without ground-truth depth
keep their label. DVPQ is reported per window size k and threshold, as the mean over k per
threshold, and as the mean over both (the paper's single number), for either VPQ protocol.

Depth metrics, over pixels with valid ground truth:

- ``AbsRel`` as ``eval_dvpq`` reports it: per sequence, the mean over all its valid pixels,
  then the mean over sequences;
- ``SqRel``, ``SILog`` (x100) and ``delta1`` (share with ``max(p/g, g/p) < 1.25``) as
  deeplab2's ``DepthMetrics``: per frame, then the mean over frames. SILog uses the pixels
  where the prediction is positive (log of 0 is undefined).

Pure numpy; no Ray, no file I/O.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable
from typing import Any

import numpy as np

from videocups_ray.data.types import DataError
from videocups_ray.metrics.vpq import VPQ


def depth_reject_mask(depth_gt: np.ndarray, depth_pred: np.ndarray, threshold: float) -> np.ndarray:
    """Pixels whose predicted depth is off by more than ``threshold`` relative error (where
    the ground truth is valid, > 0); NaN or missing predictions count as off."""
    gt = np.asarray(depth_gt, np.float64)
    pred = np.asarray(depth_pred, np.float64)
    valid = gt > 0
    rel = np.full(gt.shape, np.inf)
    rel[valid] = np.abs(pred[valid] - gt[valid]) / gt[valid]
    rel[~np.isfinite(rel)] = np.inf
    return valid & (rel > threshold)


class DepthMetrics:
    """Streaming depth metrics (see the module docstring)."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self._seq_abs: dict[Hashable, list[float]] = {}  # sequence -> [sum abs rel, pixels]
        self._frames: list[tuple[float, float, float]] = []  # (sq rel, silog, delta1) per frame

    def update(self, depth_gt: np.ndarray, depth_pred: np.ndarray, sequence_id: Hashable = 0) -> None:
        gt = np.asarray(depth_gt, np.float64)
        pred = np.asarray(depth_pred, np.float64)
        if gt.shape != pred.shape:
            raise DataError(f"sequence {sequence_id!r}: depth shapes differ: ground truth {gt.shape}, "
                            f"prediction {pred.shape}")
        valid = (gt > 0) & np.isfinite(gt) & np.isfinite(pred)
        if not valid.any():
            return
        g, p = gt[valid], pred[valid]
        acc = self._seq_abs.setdefault(sequence_id, [0.0, 0])
        acc[0] += float(np.sum(np.abs(p - g) / g))
        acc[1] += int(g.size)
        pos = p > 0
        if pos.any():
            err = np.log(p[pos]) - np.log(g[pos])
            silog = float(np.sqrt(max(np.mean(err**2) - np.mean(err) ** 2, 0.0)) * 100)
            ratio = np.maximum(p[pos] / g[pos], g[pos] / p[pos])
            delta1 = float(np.sum(ratio < 1.25) / g.size)
        else:
            silog, delta1 = float("nan"), 0.0
        self._frames.append((float(np.mean(((g - p) / g) ** 2)), silog, delta1))

    def result(self) -> dict[str, float | int | None]:
        """``AbsRel``, ``SqRel``, ``SILog``, ``delta1`` (None without any valid pixel), ``num_frames``."""
        if not self._frames:
            return {"AbsRel": None, "SqRel": None, "SILog": None, "delta1": None, "num_frames": 0}
        frames = np.asarray(self._frames)
        silog = frames[:, 1][np.isfinite(frames[:, 1])]
        return {"AbsRel": float(np.mean([s / n for s, n in self._seq_abs.values()])),
                "SqRel": float(frames[:, 0].mean()),
                "SILog": float(silog.mean()) if silog.size else None,
                "delta1": float(frames[:, 2].mean()), "num_frames": len(self._frames)}


class DVPQ:
    """DVPQ at several depth thresholds plus the depth metrics, fed frame by frame."""

    def __init__(self, num_classes: int, things: Iterable[int], ignore_label: int = 255,
                 label_divisor: int = 65536, window_sizes: Iterable[int] = (1, 2, 3, 4),
                 thresholds: Iterable[float] = (0.5, 0.25, 0.1), protocol: str = "vip-deeplab"):
        self.thresholds = tuple(float(t) for t in thresholds)
        if not self.thresholds or min(self.thresholds) <= 0:
            raise ValueError(f"depth thresholds must be positive, got {self.thresholds}")
        things = tuple(things)
        self._vpq = {t: VPQ(num_classes, things, ignore_label, label_divisor, window_sizes, protocol)
                     for t in self.thresholds}
        self.depth = DepthMetrics()

    def update(self, gt_panoptic: np.ndarray, pred_panoptic: np.ndarray, depth_gt: np.ndarray,
               depth_pred: np.ndarray, sequence_id: Hashable = 0, *, frame_index: int | None = None) -> None:
        if np.shape(depth_gt) != np.shape(gt_panoptic) or np.shape(depth_pred) != np.shape(gt_panoptic):
            raise DataError(f"sequence {sequence_id!r} frame {frame_index}: depth maps {np.shape(depth_gt)} / "
                            f"{np.shape(depth_pred)} do not match the label map {np.shape(gt_panoptic)}")
        for t, vpq in self._vpq.items():
            vpq.update(gt_panoptic, pred_panoptic, sequence_id, frame_index=frame_index,
                       reject=depth_reject_mask(depth_gt, depth_pred, t))
        self.depth.update(depth_gt, depth_pred, sequence_id)

    def result(self) -> dict[str, Any]:
        """``DVPQ`` (mean over thresholds and windows), ``DVPQ_thing``, ``DVPQ_stuff``,
        ``per_threshold`` (lambda -> VPQ result with ``per_window``) and ``depth``."""
        per = {t: v.result() for t, v in self._vpq.items()}

        def mean(key: str) -> float | None:
            values = [r[key] for r in per.values() if r[key] is not None]
            return float(np.mean(values)) if values else None

        return {"DVPQ": mean("VPQ"), "DVPQ_thing": mean("VPQ_thing"), "DVPQ_stuff": mean("VPQ_stuff"),
                "per_threshold": {str(t): r for t, r in per.items()}, "depth": self.depth.result()}
