"""Panoptic Cascade MaskTrack R-CNN: the video panoptic model, and its builder.

Train mode: ``model(images, targets, ref_images, ref_targets) -> dict of losses`` on (key,
reference) frame pairs; detection, mask and semantic losses come from the key frame, the
tracking loss matches key positives to the reference frame's pseudo instances.
Eval mode: ``model(images) -> list of per-image predictions`` at the input resolution.

Target dict per image (see ``model.targets.frame_targets``): ``boxes`` float [N, 4] xyxy
pixels, ``labels`` int64 [N] in 1..num_thing, ``masks`` uint8 [N, H, W], ``track_ids`` int64
[N], ``semantic`` int64 [H, W] in 0..num_stuff (num_stuff = the merged thing class, 255 ignore).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.rpn import RegionProposalNetwork, RPNHead
from torchvision.models.detection.transform import GeneralizedRCNNTransform
from torchvision.ops import MultiScaleRoIAlign

from videocups_ray.model.backbone import ResNetFPN, load_backbone_checkpoint
from videocups_ray.model.cascade import CascadeRoIHeads
from videocups_ray.model.heads import BoxHead, MaskHead, SemanticHead, TrackHead

if TYPE_CHECKING:  # config types only: the pure path imports without pydantic (gpu_check.py)
    from videocups_ray.config import ModelConfig, TrainConfig

log = logging.getLogger(__name__)

IGNORE = 255
_IMAGE_MEAN = [0.485, 0.456, 0.406]  # ImageNet statistics, as DINO was trained with
_IMAGE_STD = [0.229, 0.224, 0.225]


class PanopticCascadeMaskTrackRCNN(nn.Module):
    """Backbone+FPN, RPN, cascade RoI heads (box, mask, track) and a Panoptic-FPN semantic head."""

    def __init__(
        self,
        *,
        backbone: ResNetFPN,
        rpn: RegionProposalNetwork,
        roi_heads: CascadeRoIHeads,
        semantic_head: SemanticHead,
        transform: GeneralizedRCNNTransform,
        num_stuff: int,
        num_thing: int,
        semantic_loss_weight: float = 1.0,
        track_loss_weight: float = 1.0,
        ref_frame_grad: bool = True,
    ):
        super().__init__()
        self.backbone = backbone
        self.rpn = rpn
        self.roi_heads = roi_heads
        self.semantic_head = semantic_head
        self.transform = transform
        self.num_stuff = num_stuff
        self.num_thing = num_thing
        self.semantic_loss_weight = semantic_loss_weight
        self.track_loss_weight = track_loss_weight
        self.ref_frame_grad = ref_frame_grad

    @property
    def drop_loss_iou(self) -> float | None:
        """tau_iou of Video DropLoss, or None when DropLoss is off."""
        return self.roi_heads.drop_loss_iou

    @drop_loss_iou.setter
    def drop_loss_iou(self, value: float | None) -> None:
        if value is not None and not 0 < value <= 1:
            raise ValueError(f"drop_loss_iou={value} must be in (0, 1] or None")
        self.roi_heads.drop_loss_iou = value

    def _check_targets(self, targets: list[dict], name: str) -> None:
        for i, t in enumerate(targets):
            for key in ("boxes", "labels", "masks", "track_ids", "semantic"):
                if key not in t and not (name == "ref_targets" and key in ("labels", "masks", "semantic")):
                    raise KeyError(f"{name}[{i}] lacks {key!r}")
            labels = t.get("labels")
            if labels is not None and labels.numel() and (labels.min() < 1 or labels.max() > self.num_thing):
                raise ValueError(f"{name}[{i}]['labels'] must be in 1..{self.num_thing}, got {labels.tolist()}")

    def _semantic_targets(self, originals: list[dict], image_sizes, batch_shape) -> torch.Tensor:
        """Resize each semantic map to its resized image (nearest) and pad to the batch with 255."""
        out = torch.full((len(originals), *batch_shape), IGNORE, dtype=torch.long, device=originals[0]["semantic"].device)
        for i, (t, (h, w)) in enumerate(zip(originals, image_sizes)):
            sem = t["semantic"][None, None].float()
            out[i, :h, :w] = F.interpolate(sem, size=(h, w), mode="nearest")[0, 0].long()
        return out

    def forward(
        self,
        images: list[torch.Tensor],
        targets: list[dict] | None = None,
        ref_images: list[torch.Tensor] | None = None,
        ref_targets: list[dict] | None = None,
    ):
        """Images are float [3, H, W] in [0, 1]."""
        if self.training:
            if targets is None:
                raise ValueError("training forward needs targets")
            self._check_targets(targets, "targets")
            if ref_targets is not None:
                self._check_targets(ref_targets, "ref_targets")
            return self._forward_train(images, targets, ref_images, ref_targets)
        return self._forward_test(images)

    def _forward_train(self, images, targets, ref_images, ref_targets) -> dict[str, torch.Tensor]:
        semantic_originals = [{"semantic": t["semantic"]} for t in targets]
        det_targets = [{k: t[k] for k in ("boxes", "labels", "masks", "track_ids")} for t in targets]
        batch, det_targets = self.transform(images, det_targets)
        n_key = len(images)
        ref_batch = ref_feats = ref_t = None
        if ref_images is not None and ref_targets is not None:
            ref_batch, ref_t = self.transform(ref_images, [{"boxes": t["boxes"], "track_ids": t["track_ids"]} for t in ref_targets])
        if ref_batch is not None and not self.ref_frame_grad:
            # the reference frame only feeds the track head's reference embeddings: a forward
            # without autograd skips its backbone backward (~1/3 of a CPU step; model.ref_frame_grad)
            features = self.backbone(batch.tensors)
            with torch.no_grad():
                ref_feats = self.backbone(ref_batch.tensors)
        elif ref_batch is not None and ref_batch.tensors.shape == batch.tensors.shape:
            # one backbone call for both frames of every pair (BN statistics see both)
            feats_all = self.backbone(torch.cat([batch.tensors, ref_batch.tensors]))
            features = {k: v[:n_key] for k, v in feats_all.items()}
            ref_feats = {k: v[n_key:] for k, v in feats_all.items()}
        else:
            features = self.backbone(batch.tensors)
            if ref_batch is not None:
                ref_feats = self.backbone(ref_batch.tensors)
        proposals, rpn_losses = self.rpn(batch, features, det_targets)
        losses = dict(rpn_losses)
        losses.update(
            self.roi_heads.forward_train(
                features, proposals, batch.image_sizes, det_targets,
                ref_feats, ref_batch.image_sizes if ref_batch is not None else None, ref_t,
            )
        )
        losses["loss_track"] = losses["loss_track"] * self.track_loss_weight
        sem_logits = self.semantic_head(features)
        sem_logits = F.interpolate(sem_logits, size=batch.tensors.shape[-2:], mode="bilinear", align_corners=False)
        sem_target = self._semantic_targets(semantic_originals, batch.image_sizes, batch.tensors.shape[-2:])
        if (sem_target != IGNORE).any():
            losses["loss_semantic"] = F.cross_entropy(sem_logits, sem_target, ignore_index=IGNORE) * self.semantic_loss_weight
        else:  # every pixel ignored: no semantic signal, but keep the graph for DDP
            losses["loss_semantic"] = sem_logits.sum() * 0.0
        return losses

    @torch.no_grad()
    def _forward_test(self, images: list[torch.Tensor]) -> list[dict[str, torch.Tensor]]:
        original_sizes = [tuple(img.shape[-2:]) for img in images]
        batch, _ = self.transform(images)
        features = self.backbone(batch.tensors)
        proposals, _ = self.rpn(batch, features)
        detections = self.roi_heads.forward_test(features, proposals, batch.image_sizes)
        detections = self.transform.postprocess(detections, batch.image_sizes, original_sizes)
        sem_logits = self.semantic_head(features)
        sem_logits = F.interpolate(sem_logits, size=batch.tensors.shape[-2:], mode="bilinear", align_corners=False)
        for i, ((h, w), (oh, ow)) in enumerate(zip(batch.image_sizes, original_sizes)):
            logits = sem_logits[i : i + 1, :, :h, :w]
            if (h, w) != (oh, ow):
                logits = F.interpolate(logits, size=(oh, ow), mode="bilinear", align_corners=False)
            detections[i]["semantic_logits"] = logits[0]
        return detections


def build_model(
    cfg: ModelConfig, num_stuff: int, num_thing: int, train_cfg: TrainConfig | None = None, *, load_backbone: bool = True
) -> PanopticCascadeMaskTrackRCNN:
    """Build the model from config; loads ``cfg.backbone_checkpoint`` when set and ``load_backbone``.

    ``load_backbone=False`` is for restoring a full model checkpoint, whose weights replace it.

    ``num_stuff`` stuff pseudo-classes (+1 merged thing class in the semantic head),
    ``num_thing`` thing pseudo-classes (+1 background in the box head). DropLoss follows
    ``train_cfg`` (on with tau 0.5 when it is None).
    """
    if num_stuff < 1 or num_thing < 1:
        raise ValueError(f"need at least one stuff and one thing class, got num_stuff={num_stuff}, num_thing={num_thing}")
    if len(cfg.cascade_ious) != len(cfg.cascade_loss_weights):
        raise ValueError(f"model.cascade_ious {cfg.cascade_ious} and model.cascade_loss_weights {cfg.cascade_loss_weights} differ in length")
    if train_cfg is None:
        from videocups_ray.config import TrainConfig  # lazy: the pure path imports without pydantic

        train_cfg = TrainConfig()
    if load_backbone and cfg.backbone_norm == "frozen_bn" and cfg.backbone_checkpoint is None:
        log.warning("model.backbone_norm='frozen_bn' without a backbone_checkpoint: BN layers stay identity; use 'bn' to train from scratch")
    ch = cfg.fpn_channels
    backbone = ResNetFPN(cfg.backbone, ch, norm=cfg.backbone_norm, trainable_layers=cfg.trainable_backbone_layers)
    if load_backbone and cfg.backbone_checkpoint:
        load_backbone_checkpoint(backbone.body, cfg.backbone_checkpoint)
    levels_out = 5  # FPN outputs "0".."3" and "pool": one anchor size per level
    if len(cfg.anchor_sizes) != levels_out:
        raise ValueError(f"model.anchor_sizes needs {levels_out} sizes (one per FPN level), got {cfg.anchor_sizes}")
    anchors = AnchorGenerator(tuple((s,) for s in cfg.anchor_sizes), (tuple(cfg.anchor_aspect_ratios),) * levels_out)
    rpn = RegionProposalNetwork(
        anchors, RPNHead(ch, anchors.num_anchors_per_location()[0]),
        fg_iou_thresh=cfg.rpn_fg_iou, bg_iou_thresh=cfg.rpn_bg_iou,
        batch_size_per_image=cfg.rpn_batch_per_image, positive_fraction=cfg.rpn_positive_fraction,
        pre_nms_top_n={"training": cfg.rpn_pre_nms_train, "testing": cfg.rpn_pre_nms_test},
        post_nms_top_n={"training": cfg.rpn_post_nms_train, "testing": cfg.rpn_post_nms_test},
        nms_thresh=cfg.rpn_nms_threshold,
    )
    levels = ["0", "1", "2", "3"]
    roi_heads = CascadeRoIHeads(
        box_roi_pool=MultiScaleRoIAlign(levels, 7, 2),
        mask_roi_pool=MultiScaleRoIAlign(levels, 14, 2),
        box_heads=nn.ModuleList(BoxHead(ch, 7, cfg.box_head_dim, num_thing + 1) for _ in cfg.cascade_ious),
        mask_head=MaskHead(ch, cfg.mask_head_channels, cfg.mask_head_convs, num_thing + 1),
        track_head=TrackHead(ch, 7, cfg.box_head_dim, cfg.embed_dim),
        stage_ious=cfg.cascade_ious,
        stage_loss_weights=cfg.cascade_loss_weights,
        rois_per_image=cfg.rois_per_image,
        positive_fraction=cfg.positive_fraction,
        score_threshold=cfg.score_threshold,
        nms_threshold=cfg.nms_threshold,
        detections_per_image=cfg.detections_per_image,
        drop_loss_iou=train_cfg.drop_loss_iou if train_cfg.drop_loss else None,
        track_temperature=cfg.track_temperature,
    )
    return PanopticCascadeMaskTrackRCNN(
        backbone=backbone,
        rpn=rpn,
        roi_heads=roi_heads,
        semantic_head=SemanticHead(ch, cfg.semantic_head_channels,
                                   num_stuff + (num_thing if cfg.semantic_thing_classes else 1)),
        transform=GeneralizedRCNNTransform(cfg.min_size, cfg.max_size, _IMAGE_MEAN, _IMAGE_STD),
        num_stuff=num_stuff,
        num_thing=num_thing,
        semantic_loss_weight=cfg.semantic_loss_weight,
        track_loss_weight=cfg.track_loss_weight,
        ref_frame_grad=cfg.ref_frame_grad,
    )
