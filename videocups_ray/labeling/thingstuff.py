"""Thing/stuff split from corpus histograms, and the final panoptic pseudo-label.

DESIGN.md section 4 steps 6-7. ``ratio_c`` = pixels of class c inside instance masks / all
pixels of class c; c is a thing class if ``ratio_c > psi``. The histograms are integer counts,
so statistics from many workers merge exactly by addition.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from videocups_ray.data.types import DataError


@dataclass
class ThingStuffStats:
    """Per-class pixel counts: ``in_instance[c]`` and ``total[c]`` (int64, length K)."""

    num_classes: int
    in_instance: np.ndarray = field(default=None)  # type: ignore[assignment]
    total: np.ndarray = field(default=None)  # type: ignore[assignment]

    def __post_init__(self) -> None:
        if self.in_instance is None:
            self.in_instance = np.zeros(self.num_classes, np.int64)
        if self.total is None:
            self.total = np.zeros(self.num_classes, np.int64)

    def add(self, semantic: np.ndarray, instance: np.ndarray, ignore: np.ndarray | None = None,
            *, where: str = "frame") -> None:
        """Count one frame's pixels (ignored pixels and semantic >= K are not counted)."""
        if semantic.shape != instance.shape or (ignore is not None and ignore.shape != semantic.shape):
            raise DataError(f"{where}: semantic {semantic.shape}, instance {instance.shape} and "
                            f"ignore {None if ignore is None else ignore.shape} shapes differ")
        sem = semantic.ravel().astype(np.int64)
        keep = sem < self.num_classes
        if ignore is not None:
            keep &= ~ignore.ravel()
        inside = keep & (instance.ravel() != 0)
        self.total += np.bincount(sem[keep], minlength=self.num_classes)[: self.num_classes]
        self.in_instance += np.bincount(sem[inside], minlength=self.num_classes)[: self.num_classes]

    def ratios(self) -> np.ndarray:
        """``ratio_c`` (float64); a class never seen has ratio 0 (stuff)."""
        return np.divide(self.in_instance, self.total, out=np.zeros(self.num_classes),
                         where=self.total > 0)

    def thing_classes(self, psi: float) -> tuple[int, ...]:
        return tuple(int(c) for c in np.flatnonzero(self.ratios() > psi))

    def state_dict(self) -> dict:
        return {"num_classes": self.num_classes, "in_instance": self.in_instance.copy(),
                "total": self.total.copy()}

    @classmethod
    def from_state_dict(cls, state: dict) -> "ThingStuffStats":
        return cls(int(state["num_classes"]), np.array(state["in_instance"], np.int64),
                   np.array(state["total"], np.int64))


def merge_thing_stuff(stats: Sequence[ThingStuffStats]) -> ThingStuffStats:
    """Sum the histograms of several workers."""
    if not stats:
        raise ValueError("merge_thing_stuff needs at least one ThingStuffStats")
    k = stats[0].num_classes
    if any(s.num_classes != k for s in stats):
        raise DataError(f"cannot merge thing/stuff statistics over {sorted({s.num_classes for s in stats})} classes")
    return ThingStuffStats(k, np.sum([s.in_instance for s in stats], axis=0),
                           np.sum([s.total for s in stats], axis=0))


def apply_thing_stuff(semantic: np.ndarray, instance: np.ndarray, ignore: np.ndarray,
                      thing_classes: Sequence[int], *, ignore_label: int = 255
                      ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The training pseudo-label (DESIGN.md section 4 step 7), applied at read time.

    Instances on stuff classes are removed; thing-class pixels not covered by an instance join
    the ignore mask; ``semantic`` is ``ignore_label`` wherever the mask is set. Inputs are not
    modified.
    """
    is_thing = np.zeros(256, bool)
    is_thing[np.asarray(list(thing_classes), dtype=np.int64)] = True
    thing_px = is_thing[semantic.astype(np.int64, copy=False) & 255] & (semantic < 256)
    inst = np.where(thing_px, instance, 0).astype(np.int32)
    ign = ignore | (thing_px & (inst == 0))
    sem = np.where(ign, ignore_label, semantic).astype(semantic.dtype)
    return sem, inst, ign
