"""Video copy-paste: paste track tubes (one object in both frames of a pair) into other pairs.

A *tube* is the crop of one track over the two frames of a pair, cut with one window (the
union of its boxes in both frames), so the object's motion between the frames is kept.
Pasting scales and flips both frames alike and places them at one offset, so the pasted
object moves along its own trajectory. Later pastes lie on top of earlier ones and of the
existing scene: covered pixels of existing instances leave their masks, and boxes, being
recomputed from the instance maps (``targets.instance_boxes``), follow.

Self-enhanced mode (after a warm-up) cuts tubes from the model's own confident tracked
predictions that no pseudo instance explains (``tubes_from_predictions``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from torchvision.ops import box_iou

from videocups_ray.data.types import DataError
from videocups_ray.model.targets import ClassMeta, check_pair, instance_boxes
from videocups_ray.model.tracking import PanopticFrame

if TYPE_CHECKING:  # config types only: the pure path imports without pydantic (gpu_check.py)
    from videocups_ray.config import TrainConfig


@dataclass
class Tube:
    """One object in both frames: float RGB crops [2, 3, h, w] in [0, 1] and masks [2, h, w]."""

    images: torch.Tensor
    masks: torch.Tensor
    semantic_class: int  # pseudo-class ID written into the semantic map where pasted
    source: str = "pseudo"  # "pseudo" (pseudo-labels) or "self" (model predictions)


def _as_float(images: torch.Tensor) -> torch.Tensor:
    return images.float() / 255.0 if images.dtype == torch.uint8 else images.float()


def _cut_tube(images: torch.Tensor, masks: torch.Tensor, semantic_class: int, source: str) -> Tube:
    ys, xs = torch.where(masks.any(dim=0))
    y0, y1, x0, x1 = int(ys.min()), int(ys.max()) + 1, int(xs.min()), int(xs.max()) + 1
    return Tube(_as_float(images[:, :, y0:y1, x0:x1]).clone(), masks[:, y0:y1, x0:x1].clone(), semantic_class, source)


def extract_tubes(pair: dict, meta: ClassMeta, *, min_pixels: int = 16) -> list[Tube]:
    """Tubes of every thing-class track present with ``min_pixels`` in both frames of ``pair``."""
    check_pair(pair)
    instance, semantic = pair["instance"], pair["semantic"]
    tubes = []
    for tid in torch.unique(instance):
        if tid == 0:
            continue
        masks = instance == tid
        if int(masks[0].sum()) < min_pixels or int(masks[1].sum()) < min_pixels:
            continue
        cls = int(torch.mode(semantic[masks]).values)
        if cls in meta.thing_classes:
            tubes.append(_cut_tube(pair["images"], masks, cls, "pseudo"))
    return tubes


def tubes_from_predictions(pair: dict, frames: tuple[PanopticFrame, PanopticFrame], cfg: TrainConfig) -> list[Tube]:
    """Tubes from the model's own predictions of ``pair`` (two ``PanopticFrame``s, tracked).

    A predicted track is used when in both frames its score exceeds ``self_enhanced_score``
    and its box overlaps no pseudo instance box at IoU >= ``self_enhanced_iou``.
    """
    check_pair(pair)
    if len(frames) != 2:
        raise DataError(f"tubes_from_predictions needs predictions of both frames, got {len(frames)}")
    keep_per_frame = []
    for f, pred in enumerate(frames):
        if pred.instance.shape != tuple(pair["instance"].shape[1:]):
            raise DataError(f"prediction of frame {f}: instance map {pred.instance.shape} != pair {tuple(pair['instance'].shape[1:])}")
        _, pseudo_boxes = instance_boxes(pair["instance"][f])
        boxes = torch.as_tensor(pred.boxes, dtype=torch.float32).reshape(-1, 4)
        scores = torch.as_tensor(pred.scores, dtype=torch.float32)
        ok = scores > cfg.self_enhanced_score
        if len(pseudo_boxes) and len(boxes):
            ok &= box_iou(boxes, pseudo_boxes).max(dim=1).values < cfg.self_enhanced_iou
        keep_per_frame.append({int(t): int(c) for t, c, k in zip(pred.track_ids, pred.thing_classes, ok) if k})
    tubes = []
    for tid, cls in keep_per_frame[0].items():
        if keep_per_frame[1].get(tid) != cls:
            continue
        masks = torch.stack([torch.from_numpy(fr.instance == tid) for fr in frames])
        if int(masks[0].sum()) >= cfg.copy_paste_min_pixels and int(masks[1].sum()) >= cfg.copy_paste_min_pixels:
            tubes.append(_cut_tube(pair["images"], masks, cls, "self"))
    return tubes


def use_self_enhanced(step: int, cfg: TrainConfig) -> bool:
    """Whether training step ``step`` cuts tubes from the model's own predictions: after the
    warm-up, every ``self_enhanced_every``-th step (each costs an inference forward of a pair,
    ~0.55 s of a ~0.7 s CPU step in the demo; the tubes wait in the bank for later pastes)."""
    return (cfg.copy_paste and cfg.self_enhanced and step >= cfg.self_enhanced_after
            and (step - cfg.self_enhanced_after) % cfg.self_enhanced_every == 0)


def _transform_tube(tube: Tube, height: int, width: int, rng: np.random.Generator, cfg: TrainConfig):
    lo, hi = cfg.copy_paste_scale
    h, w = tube.masks.shape[-2:]
    scale = min(float(rng.uniform(lo, hi)), height / h, width / w)  # shrink what would not fit
    nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
    images = F.interpolate(tube.images, size=(nh, nw), mode="bilinear", align_corners=False)
    masks = F.interpolate(tube.masks[:, None].float(), size=(nh, nw), mode="nearest")[:, 0] > 0.5
    if rng.random() < cfg.copy_paste_flip:
        images, masks = images.flip(-1), masks.flip(-1)
    return images, masks


def video_copy_paste(target_pair: dict, source_tubes: list[Tube], rng: np.random.Generator, cfg: TrainConfig) -> dict:
    """A new pair with ``copy_paste_min..copy_paste_max`` of ``source_tubes`` pasted in.

    Pasted pixels get the tube's class, a fresh track ID (the same in both frames) and are no
    longer ignored. The result has the input's keys plus ``pasted_track_ids`` (int64 [n]).
    Tubes too small after scaling (< ``copy_paste_min_pixels`` in a frame) are skipped.
    """
    check_pair(target_pair, "target_pair")
    out = {k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in target_pair.items()}
    pasted: list[int] = []
    if cfg.copy_paste and source_tubes and cfg.copy_paste_max > 0:
        height, width = out["instance"].shape[-2:]
        lo = min(cfg.copy_paste_min, cfg.copy_paste_max, len(source_tubes))
        hi = min(cfg.copy_paste_max, len(source_tubes))
        count = int(rng.integers(lo, hi + 1))
        chosen = rng.choice(len(source_tubes), size=count, replace=False)
        next_id = int(out["instance"].max()) + 1
        to_uint8 = out["images"].dtype == torch.uint8
        for idx in chosen:
            tube = source_tubes[int(idx)]
            images, masks = _transform_tube(tube, height, width, rng, cfg)
            if int(masks[0].sum()) < cfg.copy_paste_min_pixels or int(masks[1].sum()) < cfg.copy_paste_min_pixels:
                continue
            nh, nw = masks.shape[-2:]
            y0 = int(rng.integers(0, height - nh + 1))
            x0 = int(rng.integers(0, width - nw + 1))
            if to_uint8:
                images = (images * 255.0).round().clamp(0, 255).to(torch.uint8)
            for f in range(2):
                region = torch.zeros(height, width, dtype=torch.bool)
                region[y0 : y0 + nh, x0 : x0 + nw] = masks[f]
                window = out["images"][f, :, y0 : y0 + nh, x0 : x0 + nw]
                window[:, masks[f]] = images[f][:, masks[f]].to(window.dtype)
                out["semantic"][f][region] = tube.semantic_class
                out["instance"][f][region] = next_id
                out["ignore"][f][region] = False
            pasted.append(next_id)
            next_id += 1
    out["pasted_track_ids"] = torch.tensor(pasted, dtype=torch.long)
    return out
