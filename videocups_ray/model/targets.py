"""Class metadata and the conversion of pseudo-labelled frame pairs into model targets.

A training *pair* is a dict of tensors for (key, reference) frames::

    images   uint8 or float [2, 3, H, W]   RGB (float in [0, 1])
    semantic int64 [2, H, W]               pseudo-class IDs, ``ignore_label`` = unreliable
    instance int64 [2, H, W]               track IDs, 0 = no instance
    ignore   bool  [2, H, W]               pixels that get no loss (occluded, uncovered)

Boxes are never stored: they are recomputed from the instance maps, so any edit of the maps
(copy-paste) keeps boxes, masks and labels consistent by construction.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from videocups_ray.data.types import DataError

PAIR_KEYS = ("images", "semantic", "instance", "ignore")


@dataclass(frozen=True)
class ClassMeta:
    """Which pseudo-class IDs are stuff and thing, and how the heads index them.

    Semantic head index i < num_stuff is ``stuff_classes[i]``; index num_stuff is "a thing".
    Box head label j >= 1 is ``thing_classes[j - 1]``; label 0 is background.
    """

    stuff_classes: tuple[int, ...]
    thing_classes: tuple[int, ...]
    ignore_label: int = 255

    def __post_init__(self) -> None:
        both = set(self.stuff_classes) & set(self.thing_classes)
        if both:
            raise ValueError(f"pseudo-classes {sorted(both)} are both stuff and thing")
        if not self.stuff_classes or not self.thing_classes:
            raise ValueError(f"need stuff and thing classes, got stuff={self.stuff_classes} thing={self.thing_classes}")
        ids = (*self.stuff_classes, *self.thing_classes)
        if min(ids) < 0 or max(ids) > 254 or self.ignore_label in ids:
            raise ValueError(f"pseudo-class IDs must be in 0..254 and differ from ignore {self.ignore_label}: {ids}")

    @property
    def num_stuff(self) -> int:
        return len(self.stuff_classes)

    @property
    def num_thing(self) -> int:
        return len(self.thing_classes)

    def semantic_lut(self, per_thing: bool = False) -> torch.Tensor:
        """256-entry table: pseudo-class ID -> semantic-head index (255 = ignore).

        ``per_thing``: thing class j gets its own index ``num_stuff + j`` (a semantic head that
        predicts every thing class, ``model.semantic_thing_classes``); else all share ``num_stuff``.
        """
        lut = torch.full((256,), 255, dtype=torch.long)
        for i, c in enumerate(self.stuff_classes):
            lut[c] = i
        for j, c in enumerate(self.thing_classes):
            lut[c] = self.num_stuff + (j if per_thing else 0)
        return lut

    def semantic_classes(self, per_thing: bool = False) -> tuple[int, ...]:
        """Pseudo-class ID of each semantic-head index; the merged "thing" index is ``ignore_label``."""
        return (*self.stuff_classes, *(self.thing_classes if per_thing else (self.ignore_label,)))

    def to_dict(self) -> dict:
        return {"stuff_classes": list(self.stuff_classes), "thing_classes": list(self.thing_classes), "ignore_label": self.ignore_label}

    @classmethod
    def from_dict(cls, d: dict) -> "ClassMeta":
        return cls(tuple(int(c) for c in d["stuff_classes"]), tuple(int(c) for c in d["thing_classes"]), int(d["ignore_label"]))


def check_pair(pair: dict, name: str = "pair") -> None:
    """Raise ``DataError`` naming the key when a pair is malformed."""
    for key in PAIR_KEYS:
        if key not in pair:
            raise DataError(f"{name}: missing key {key!r} (needs {PAIR_KEYS})")
    images = pair["images"]
    if images.ndim != 4 or images.shape[:2] != (2, 3):
        raise DataError(f"{name}['images'] must be [2, 3, H, W], got {tuple(images.shape)}")
    hw = tuple(images.shape[-2:])
    for key in ("semantic", "instance", "ignore"):
        if tuple(pair[key].shape) != (2, *hw):
            raise DataError(f"{name}[{key!r}] must be [2, {hw[0]}, {hw[1]}], got {tuple(pair[key].shape)}")


def instance_boxes(instance: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Track IDs present in an [H, W] instance map and their tight xyxy boxes (pixel edges)."""
    ids = torch.unique(instance)
    ids = ids[ids > 0]
    boxes = torch.zeros(len(ids), 4)
    for j, tid in enumerate(ids):
        ys, xs = torch.where(instance == tid)
        boxes[j] = torch.stack([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]).float()
    return ids.long(), boxes


def frame_targets(semantic: torch.Tensor, instance: torch.Tensor, ignore: torch.Tensor, meta: ClassMeta,
                  per_thing: bool = False) -> dict[str, torch.Tensor]:
    """Model targets of one frame (see ``model.vps``); ``per_thing``: see ``ClassMeta.semantic_lut``.

    An instance's class is the majority pseudo-class of its pixels; an instance whose majority
    class is not a thing class is not a detection target (its pixels keep their stuff label).
    """
    thing_index = {c: j + 1 for j, c in enumerate(meta.thing_classes)}
    ids, boxes = instance_boxes(instance)
    keep_ids, keep_boxes, labels, masks = [], [], [], []
    for tid, box in zip(ids, boxes):
        mask = instance == tid
        cls = int(torch.mode(semantic[mask]).values)
        if cls in thing_index:
            keep_ids.append(tid)
            keep_boxes.append(box)
            labels.append(thing_index[cls])
            masks.append(mask)
    h, w = semantic.shape
    sem = meta.semantic_lut(per_thing)[semantic.long().clamp(0, 255)]
    sem[ignore.bool()] = 255
    return {
        "boxes": torch.stack(keep_boxes) if keep_boxes else torch.zeros(0, 4),
        "labels": torch.tensor(labels, dtype=torch.long),
        "masks": torch.stack(masks).to(torch.uint8) if masks else torch.zeros(0, h, w, dtype=torch.uint8),
        "track_ids": torch.stack(keep_ids) if keep_ids else torch.zeros(0, dtype=torch.long),
        "semantic": sem,
    }


def pair_to_model_inputs(pair: dict, meta: ClassMeta, per_thing: bool = False) -> tuple[torch.Tensor, dict, torch.Tensor, dict]:
    """(key image, key targets, reference image, reference targets) of one pair."""
    check_pair(pair)
    images = pair["images"]
    images = images.float() / 255.0 if images.dtype == torch.uint8 else images.float()
    targets = [frame_targets(pair["semantic"][f], pair["instance"][f], pair["ignore"][f], meta, per_thing) for f in (0, 1)]
    return images[0], targets[0], images[1], targets[1]


def collate_pairs(pairs: list[dict], meta: ClassMeta, per_thing: bool = False) -> dict:
    """Keyword arguments for ``model(**collate_pairs(pairs, meta))`` in train mode; ``per_thing``:
    the model's ``semantic_thing_classes`` (semantic targets per thing class)."""
    parts = [pair_to_model_inputs(p, meta, per_thing) for p in pairs]
    return {
        "images": [p[0] for p in parts],
        "targets": [p[1] for p in parts],
        "ref_images": [p[2] for p in parts],
        "ref_targets": [p[3] for p in parts],
    }
