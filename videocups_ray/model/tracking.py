"""Inference over a video: MaskTrack association, panoptic fusion, and the frame-by-frame predictor.

Association (MaskTrack R-CNN): detection i and existing track n score
``log p_i(n) + w_score * log s_i + w_iou * IoU(b_i, b_n) + w_class * [c_i == c_n]`` where
``p_i`` is the softmax over [new, tracks] of the embeddings' cosine / ``track_temperature``
(the logits the tracking loss trains, ``heads.track_logits``) and ``s_i`` the detection
score; the "new" slot scores ``log p_i(new)`` alone. The score term sits on the track columns
only (on every column it would cancel): when two detections compete for one track the
confident one wins, and a weak detection rather starts a track than hijacks one. The
assignment maximising the summed score (Hungarian, one track per detection) is taken.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from torch import nn
from torchvision.ops import box_iou

from videocups_ray.data.types import DataError
from videocups_ray.model.heads import track_logits
from videocups_ray.model.targets import ClassMeta

if TYPE_CHECKING:  # config types only: the pure path imports without pydantic (gpu_check.py)
    from videocups_ray.config import ModelConfig

_FORBIDDEN = -1e9
MAX_TRACK_ID = np.iinfo(np.int32).max


def association_scores(
    track_embeds: torch.Tensor,
    track_boxes: torch.Tensor,
    track_labels: torch.Tensor,
    det_embeds: torch.Tensor,
    det_boxes: torch.Tensor,
    det_labels: torch.Tensor,
    det_scores: torch.Tensor,
    *,
    score_weight: float,
    iou_weight: float,
    class_weight: float,
    temperature: float,
) -> torch.Tensor:
    """[D, 1 + T] scores: column 0 = start a new track, column n + 1 = continue track n.

    ``temperature``: the model's ``track_temperature``, so association uses the similarity
    (cosine / T, ``heads.track_logits``) the tracking loss trained."""
    logp = torch.log_softmax(track_logits(det_embeds.float(), track_embeds.float(), temperature), dim=1)
    scores = logp.clone()
    if len(track_boxes):
        scores[:, 1:] += score_weight * torch.log(det_scores.float().clamp(min=1e-6))[:, None]
        scores[:, 1:] += iou_weight * box_iou(det_boxes.float(), track_boxes.float())
        scores[:, 1:] += class_weight * (det_labels[:, None] == track_labels[None, :]).float()
    return scores


def associate(scores: torch.Tensor) -> np.ndarray:
    """Track index per detection (-1 = new track) maximising the total score, one-to-one."""
    num_det, num_track = scores.shape[0], scores.shape[1] - 1
    if num_det == 0:
        return np.zeros(0, dtype=np.int64)
    s = scores.detach().cpu().double().numpy()
    # columns: the T tracks, then one private "new" column per detection
    cost = np.full((num_det, num_track + num_det), _FORBIDDEN)
    cost[:, :num_track] = s[:, 1:]
    cost[np.arange(num_det), num_track + np.arange(num_det)] = s[:, 0]
    rows, cols = linear_sum_assignment(cost, maximize=True)
    out = np.full(num_det, -1, dtype=np.int64)
    for r, c in zip(rows, cols):
        out[r] = c if c < num_track else -1
    return out


def panoptic_fusion(
    masks: torch.Tensor,
    scores: torch.Tensor,
    thing_ids: torch.Tensor,
    track_ids: torch.Tensor,
    semantic_logits: torch.Tensor,
    meta: ClassMeta,
    *,
    min_visible: float = 0.5,
    mask_threshold: float = 0.5,
    per_thing: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Things over stuff, higher score on top; (semantic uint8 pseudo-class IDs, instance int32).

    A mask keeps only pixels no higher-scoring mask took, and is dropped when less than
    ``min_visible`` of it is left. Pixels the semantic head calls "thing" that no instance
    covers become ``meta.ignore_label`` (void), as in Panoptic FPN; with ``per_thing`` (a
    semantic head over every thing class) they keep that thing class with instance 0.
    """
    h, w = semantic_logits.shape[-2:]
    sem_index = semantic_logits.argmax(dim=0)
    stuff_lut = torch.tensor(meta.semantic_classes(per_thing), dtype=torch.long)
    semantic = stuff_lut[sem_index.cpu()]
    instance = torch.zeros(h, w, dtype=torch.int32)
    occupied = torch.zeros(h, w, dtype=torch.bool)
    for i in torch.argsort(scores.cpu(), descending=True).tolist():
        mask = masks[i].reshape(h, w).cpu() > mask_threshold
        area = int(mask.sum())
        if area == 0:
            continue
        visible = mask & ~occupied
        if int(visible.sum()) < min_visible * area:
            continue
        occupied |= visible
        instance[visible] = int(track_ids[i])
        semantic[visible] = int(thing_ids[i])
    return semantic.numpy().astype(np.uint8), instance.numpy()


@dataclass
class _Track:
    track_id: int
    embedding: torch.Tensor
    box: torch.Tensor
    label: int
    last_frame: int


@dataclass
class PanopticFrame:
    """One predicted frame: panoptic maps plus the detections behind them."""

    frame_index: int
    semantic: np.ndarray  # uint8 [H, W] pseudo-class IDs, ignore_label = void
    instance: np.ndarray  # int32 [H, W] track IDs, 0 = none
    boxes: np.ndarray = field(default_factory=lambda: np.zeros((0, 4), np.float32))
    scores: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))
    thing_classes: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))  # pseudo-class IDs
    track_ids: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))


class VideoTrackMemory:
    """Track state over a video: embeddings, last boxes and classes; one public ``step``."""

    def __init__(self, cfg: ModelConfig):
        self.cfg = cfg
        self.reset()

    def reset(self) -> None:
        self.tracks: list[_Track] = []
        self.next_id = 1
        self.frame = -1

    def step(self, embeds: torch.Tensor, boxes: torch.Tensor, labels: torch.Tensor, scores: torch.Tensor | None = None) -> np.ndarray:
        """Assign a track ID to every detection of the next frame; update and age the tracks."""
        self.frame += 1
        self.tracks = [t for t in self.tracks if self.frame - t.last_frame <= self.cfg.track_memory]
        if self.tracks:
            t_emb = torch.stack([t.embedding for t in self.tracks])
            t_box = torch.stack([t.box for t in self.tracks])
            t_lab = torch.tensor([t.label for t in self.tracks], dtype=torch.long)
        else:
            t_emb, t_box, t_lab = embeds.new_zeros(0, embeds.shape[1]), boxes.new_zeros(0, 4), torch.zeros(0, dtype=torch.long)
        if scores is None:
            scores = torch.ones(len(boxes))
        table = association_scores(
            t_emb, t_box, t_lab, embeds, boxes, labels.cpu(), scores.cpu(), score_weight=self.cfg.track_score_weight,
            iou_weight=self.cfg.track_iou_weight, class_weight=self.cfg.track_class_weight,
            temperature=self.cfg.track_temperature,
        )
        match = associate(table)
        ids = np.zeros(len(match), dtype=np.int64)
        m = self.cfg.track_momentum
        for i, n in enumerate(match):
            if n >= 0:
                tr = self.tracks[n]
                tr.embedding = m * tr.embedding + (1 - m) * embeds[i]
                tr.box, tr.label, tr.last_frame = boxes[i], int(labels[i]), self.frame
            else:
                if self.next_id >= MAX_TRACK_ID:
                    raise OverflowError(f"track IDs exhausted at frame {self.frame}: more than {MAX_TRACK_ID} tracks in one video")
                tr = _Track(self.next_id, embeds[i].clone(), boxes[i], int(labels[i]), self.frame)
                self.next_id += 1
                self.tracks.append(tr)
            ids[i] = tr.track_id
        return ids

    def state_dict(self) -> dict:
        return {
            "next_id": self.next_id,
            "frame": self.frame,
            "tracks": [
                {"track_id": t.track_id, "embedding": t.embedding, "box": t.box, "label": t.label, "last_frame": t.last_frame}
                for t in self.tracks
            ],
        }

    def load_state_dict(self, state: dict) -> None:
        self.next_id, self.frame = int(state["next_id"]), int(state["frame"])
        self.tracks = [_Track(**t) for t in state["tracks"]]


class VideoPanopticPredictor:
    """Runs the model frame by frame over one video; track IDs are consistent over the video."""

    def __init__(self, model: nn.Module, meta: ClassMeta, cfg: ModelConfig, *, device: str = "cpu"):
        if model.num_thing != meta.num_thing or model.num_stuff != meta.num_stuff:
            raise ValueError(
                f"model has {model.num_stuff} stuff / {model.num_thing} thing classes, "
                f"meta has {meta.num_stuff} / {meta.num_thing}"
            )
        self.model = model.to(device).eval()
        self.meta = meta
        self.cfg = cfg
        self.device = device
        self.memory = VideoTrackMemory(cfg)
        self.reset()

    def reset(self) -> None:
        """Start a new video."""
        self.memory.reset()

    def push(self, image: np.ndarray) -> PanopticFrame:
        """Predict the next frame (HxWx3 uint8 RGB) of the current video."""
        return self.push_batch([image])[0]

    def push_batch(self, images: list[np.ndarray]) -> list[PanopticFrame]:
        """The next frames of the current video, in order: one batched forward, then association
        and panoptic fusion frame by frame (track IDs do not depend on the batch size)."""
        tensors = []
        for k, image in enumerate(images):
            if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
                raise DataError(f"frame {self.memory.frame + 1 + k}: expected HxWx3 uint8 RGB, got {image.shape} "
                                f"{image.dtype}")
            tensors.append(torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float().div(255.0)
                           .to(self.device))
        with torch.no_grad():
            preds = self.model(tensors)
        return [self._frame({k: v.cpu() for k, v in pred.items()}) for pred in preds]

    def _frame(self, pred: dict) -> PanopticFrame:
        track_ids = self.memory.step(pred["embeddings"], pred["boxes"], pred["labels"], pred["scores"])
        thing_lut = torch.tensor([self.meta.ignore_label, *self.meta.thing_classes], dtype=torch.long)
        thing_ids = thing_lut[pred["labels"]]
        semantic, instance = panoptic_fusion(
            pred["masks"], pred["scores"], thing_ids, torch.from_numpy(track_ids),
            pred["semantic_logits"], self.meta, min_visible=self.cfg.mask_overlap,
            per_thing=self.cfg.semantic_thing_classes,
        )
        return PanopticFrame(
            frame_index=self.memory.frame, semantic=semantic, instance=instance,
            boxes=pred["boxes"].numpy(), scores=pred["scores"].numpy(),
            thing_classes=thing_ids.numpy(), track_ids=track_ids,
        )

    def predict_video(self, frames: Iterable[np.ndarray]) -> list[PanopticFrame]:
        """Reset, then ``push`` every frame of an iterable of HxWx3 uint8 images."""
        self.reset()
        return [self.push(f) for f in frames]
