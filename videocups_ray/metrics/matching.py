"""Unsupervised cluster-to-class matching (the CUPS / VideoCUPS evaluation protocol).

Predicted pseudo-classes carry no meaning until they are matched to ground-truth classes:
pixel-overlap counts between pseudo-classes and GT classes are summed over the whole
evaluation set, then

1. pseudo-things (pseudo-classes that carry instances) are matched one-to-one to GT thing
   classes, and pseudo-stuff to GT stuff classes, by Hungarian matching maximising the overlap
   (``scipy.optimize.linear_sum_assignment``);
2. every pseudo-class left over (more pseudo-classes than GT classes of its kind, or a
   Hungarian pair with zero overlap) goes to the GT class it overlaps most, of any kind;
3. a pseudo-class that never overlaps a valid GT pixel (only void) maps to the ignore label.

The mapping is then applied as a lookup table to predicted panoptic maps, before STQ / VPQ.
Instance IDs are kept; a pseudo-thing mapped to a stuff class loses its instance. Two
pseudo-things mapped to the same thing class keep their instance IDs, so track IDs must be
unique per video across pseudo-classes (as the tracker's are). A predicted pixel of the ignore
label stays ignored; it is never a pseudo-class.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable

import numpy as np
from scipy.optimize import linear_sum_assignment

from videocups_ray.data.types import DataError
from videocups_ray.metrics._counting import check_thing_classes, class_masks, split_panoptic

# Pseudo-class IDs must stay below this (they index a dense overlap table).
MAX_PSEUDO_CLASSES = 1 << 16


class MatchingError(DataError):
    """The matching was used before fitting, or met a pseudo-class it has no mapping for."""


@dataclass(frozen=True)
class ClassMapping:
    """The fitted pseudo-class -> GT class table and how each entry was decided."""

    table: dict[int, int]  # pseudo-class -> GT class (the ignore label for void-only classes)
    hungarian: tuple[int, ...]  # pseudo-classes assigned by Hungarian matching
    majority: tuple[int, ...]  # pseudo-classes assigned to their majority-overlap GT class
    unmatched: tuple[int, ...]  # pseudo-classes seen only on void, mapped to the ignore label
    pseudo_things: tuple[int, ...]  # pseudo-classes that carry instances
    overlap: dict[int, int] = field(default_factory=dict)  # pseudo-class -> pixels on its GT class

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form (keys of ``pseudo_to_gt`` are strings, as JSON needs)."""
        return {"pseudo_to_gt": {str(k): v for k, v in sorted(self.table.items())},
                "hungarian": list(self.hungarian), "majority": list(self.majority),
                "unmatched": list(self.unmatched), "pseudo_things": list(self.pseudo_things),
                "overlap_pixels": {str(k): v for k, v in sorted(self.overlap.items())}}


class UnsupervisedMatcher:
    """Accumulate pseudo-class / GT class overlaps, fit the matching, apply it."""

    def __init__(self, num_classes: int, things: Iterable[int], ignore_label: int = 255,
                 label_divisor: int = 65536):
        things = check_thing_classes(things, num_classes, ignore_label)
        self.num_classes = num_classes
        self.things = things
        self.ignore_label = ignore_label
        self.label_divisor = label_divisor
        self._gt_is_thing, self._gt_valid = class_masks(num_classes, things, ignore_label)
        self.reset()

    def reset(self) -> None:
        """Forget the accumulated overlaps and the fitted mapping."""
        self._overlap = np.zeros((0, self.num_classes), np.int64)  # [pseudo, gt class]
        self._pixels = np.zeros(0, np.int64)  # all pixels of each pseudo-class (void included)
        self._thing_pixels = np.zeros(0, np.int64)  # pixels of each pseudo-class with an instance
        self._declared_things: set[int] = set()
        self.mapping: ClassMapping | None = None
        self._lut: np.ndarray | None = None

    def _grow(self, size: int) -> None:
        if size > self._pixels.size:
            extra = size - self._pixels.size
            self._overlap = np.vstack([self._overlap, np.zeros((extra, self.num_classes), np.int64)])
            self._pixels = np.concatenate([self._pixels, np.zeros(extra, np.int64)])
            self._thing_pixels = np.concatenate([self._thing_pixels, np.zeros(extra, np.int64)])

    def update(self, gt_semantic: np.ndarray, pred_semantic: np.ndarray,
               pred_things: np.ndarray | Iterable[int], *, where: str = "frame") -> None:
        """Add one frame of semantic maps.

        ``pred_things`` is either a boolean HxW mask of predicted pixels that carry an instance,
        or the collection of pseudo-class IDs that are things. ``where`` names the frame in errors.
        """
        if gt_semantic.shape != pred_semantic.shape or gt_semantic.ndim != 2:
            raise DataError(f"{where}: ground truth {gt_semantic.shape} and prediction "
                            f"{pred_semantic.shape} must be HxW maps of the same shape")
        gt = gt_semantic.astype(np.int64, copy=False).reshape(-1)
        pred = pred_semantic.astype(np.int64, copy=False).reshape(-1)
        if pred.size and (int(pred.min()) < 0 or int(pred[pred != self.ignore_label].max(initial=0)) >= MAX_PSEUDO_CLASSES):
            raise DataError(f"{where}: pseudo-class IDs must be in [0, {MAX_PSEUDO_CLASSES}), "
                            f"got range [{int(pred.min())}, {int(pred.max())}]")
        gt_bad = (gt < 0) | ((gt >= self.num_classes) & (gt != self.ignore_label))
        if gt_bad.any():
            raise DataError(f"{where}: ground-truth class {int(gt[np.argmax(gt_bad)])} is not in "
                            f"[0, {self.num_classes}) and not the ignore label {self.ignore_label}")
        pred_valid = pred != self.ignore_label
        n_pseudo = int(pred[pred_valid].max(initial=-1)) + 1
        self._grow(n_pseudo)
        size = self._pixels.size
        p = pred[pred_valid]
        self._pixels += np.bincount(p, minlength=size)
        if isinstance(pred_things, np.ndarray) and pred_things.dtype == np.bool_:
            if pred_things.shape != pred_semantic.shape:
                raise DataError(f"{where}: thing mask {pred_things.shape} differs from prediction {pred_semantic.shape}")
            self._thing_pixels += np.bincount(p[pred_things.reshape(-1)[pred_valid]], minlength=size)
        else:
            self._declared_things.update(int(c) for c in pred_things)
        both = pred_valid & (gt != self.ignore_label)
        gt_both = gt[both]
        both_ok = self._gt_valid[gt_both]
        idx = pred[both][both_ok] * self.num_classes + gt_both[both_ok]
        self._overlap += np.bincount(idx, minlength=size * self.num_classes).reshape(size, self.num_classes)
        self.mapping = None
        self._lut = None

    def update_panoptic(self, gt_panoptic: np.ndarray, pred_panoptic: np.ndarray, *, where: str = "frame") -> None:
        """:meth:`update` from panoptic maps; predicted pixels with instance > 0 mark pseudo-things."""
        gt_sem, _ = split_panoptic(gt_panoptic.astype(np.int64, copy=False), self.label_divisor)
        pred_sem, pred_inst = split_panoptic(pred_panoptic.astype(np.int64, copy=False), self.label_divisor)
        self.update(gt_sem, pred_sem, pred_inst > 0, where=where)

    # ------------------------------------------------------------------ fit
    def fit(self) -> ClassMapping:
        """Match pseudo-classes to GT classes over everything accumulated so far."""
        seen = np.flatnonzero(self._pixels > 0)
        pseudo_things = sorted({int(c) for c in np.flatnonzero(self._thing_pixels > 0)}
                               | {c for c in self._declared_things if c < self._pixels.size and self._pixels[c] > 0})
        is_pseudo_thing = np.zeros(self._pixels.size, bool)
        is_pseudo_thing[pseudo_things] = True
        table: dict[int, int] = {}
        hungarian: list[int] = []
        gt_things = np.flatnonzero(self._gt_is_thing & self._gt_valid)
        gt_stuff = np.flatnonzero(~self._gt_is_thing & self._gt_valid)
        for rows, cols in ((seen[is_pseudo_thing[seen]], gt_things), (seen[~is_pseudo_thing[seen]], gt_stuff)):
            if rows.size == 0 or cols.size == 0:
                continue
            block = self._overlap[np.ix_(rows, cols)]
            r, c = linear_sum_assignment(block, maximize=True)
            for ri, ci in zip(r, c):
                if block[ri, ci] > 0:  # a zero-overlap pair is no evidence; leave it to majority
                    table[int(rows[ri])] = int(cols[ci])
                    hungarian.append(int(rows[ri]))
        majority, unmatched = [], []
        for pseudo in seen:
            pseudo = int(pseudo)
            if pseudo in table:
                continue
            row = self._overlap[pseudo]
            if row.sum() == 0:
                table[pseudo] = self.ignore_label
                unmatched.append(pseudo)
            else:
                table[pseudo] = int(np.argmax(row))
                majority.append(pseudo)
        overlap = {p: int(self._overlap[p, g]) if g != self.ignore_label else 0 for p, g in table.items()}
        self.mapping = ClassMapping(table=table, hungarian=tuple(sorted(hungarian)), majority=tuple(majority),
                                    unmatched=tuple(unmatched), pseudo_things=tuple(pseudo_things),
                                    overlap=overlap)
        lut = np.full(self._pixels.size, -1, np.int64)
        for p, g in table.items():
            lut[p] = g
        self._lut = lut
        return self.mapping

    # ------------------------------------------------------------------ apply
    def apply(self, pred_panoptic: np.ndarray, *, where: str = "frame") -> np.ndarray:
        """Remap the classes of a predicted panoptic map (int64 out, same shape)."""
        if self._lut is None:
            raise MatchingError("UnsupervisedMatcher.apply called before fit()")
        pred = pred_panoptic.astype(np.int64, copy=False)
        sem, inst = split_panoptic(pred, self.label_divisor)
        ignored = sem == self.ignore_label
        known = ~ignored & (sem < self._lut.size)
        safe = np.where(known, sem, 0)
        mapped = np.where(known, self._lut[safe] if self._lut.size else -1, -1)
        unknown = ~ignored & (mapped < 0)
        if unknown.any():
            classes = sorted(int(c) for c in np.unique(sem[unknown]))
            raise MatchingError(f"{where}: pseudo-classes {classes[:10]} were not seen while fitting "
                                f"the matching; no mapping for them")
        mapped = np.where(ignored, self.ignore_label, mapped)
        gt_thing = np.zeros(max(self.num_classes, self.ignore_label + 1), bool)
        gt_thing[: self.num_classes] = self._gt_is_thing
        inst = np.where(gt_thing[mapped], inst, 0)
        return mapped * self.label_divisor + inst
