"""Cascade RoI heads with Video DropLoss, a mask head on the last stage and the MaskTrack branch.

Video DropLoss (VideoCUPS, after CutLER/CUPS): pseudo-labels miss objects (a parked car has
no motion cue), so a proposal the model already calls a thing where no pseudo instance is must
not be trained as background. A proposal is *dropped* at a stage when its predicted class
(argmax of that stage's logits, not background) is a thing and its best IoU with any pseudo
instance is <= ``tau_iou``: it then gets zero weight in the classification, box, mask and
tracking losses of that stage. Proposals predicted as background still learn background.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.detection import _utils as det_utils
from torchvision.models.detection.roi_heads import maskrcnn_inference, maskrcnn_loss
from torchvision.ops import MultiScaleRoIAlign, batched_nms, box_iou, clip_boxes_to_image

from videocups_ray.model.heads import MaskHead, TrackHead, track_logits


def drop_loss_weights(pred_labels: torch.Tensor, max_iou: torch.Tensor, tau_iou: float | None) -> torch.Tensor:
    """Per-proposal loss weight: 0 for a predicted thing (label > 0) with best IoU <= tau, else 1.

    ``tau_iou=None`` switches DropLoss off (every proposal weighs 1; the ablation).
    """
    weights = torch.ones_like(max_iou)
    if tau_iou is not None:
        weights[(pred_labels > 0) & (max_iou <= tau_iou)] = 0.0
    return weights


@dataclass
class StageRecord:
    """What one cascade stage trained on, kept for inspection (tests, debugging)."""

    class_logits: torch.Tensor  # [R, num_classes + 1], part of the autograd graph
    box_deltas: torch.Tensor  # [R, 4], part of the autograd graph
    labels: torch.Tensor  # [R] training class (0 = background)
    max_iou: torch.Tensor  # [R] best IoU with any pseudo instance of the image
    weights: torch.Tensor  # [R] loss weight; 0 = dropped by DropLoss


class CascadeRoIHeads(nn.Module):
    """Cascade R-CNN box stages (one IoU threshold each), mask head and tracking head."""

    def __init__(
        self,
        *,
        box_roi_pool: MultiScaleRoIAlign,
        mask_roi_pool: MultiScaleRoIAlign,
        box_heads: nn.ModuleList,
        mask_head: MaskHead,
        track_head: TrackHead,
        stage_ious: tuple[float, ...],
        stage_loss_weights: tuple[float, ...],
        rois_per_image: int,
        positive_fraction: float,
        score_threshold: float,
        nms_threshold: float,
        detections_per_image: int,
        drop_loss_iou: float | None,
        track_temperature: float = 0.1,
    ):
        super().__init__()
        if not (len(box_heads) == len(stage_ious) == len(stage_loss_weights)):
            raise ValueError(
                f"cascade needs one head, IoU and loss weight per stage; got {len(box_heads)} heads, "
                f"cascade_ious={stage_ious}, cascade_loss_weights={stage_loss_weights}"
            )
        self.box_roi_pool = box_roi_pool
        self.mask_roi_pool = mask_roi_pool
        self.box_heads = box_heads
        self.mask_head = mask_head
        self.track_head = track_head
        self.stage_ious = tuple(stage_ious)
        self.stage_loss_weights = tuple(stage_loss_weights)
        # Later stages see better boxes, so their regression targets are smaller: tighter weights.
        self.box_coders = [det_utils.BoxCoder((10.0 * (k + 1), 10.0 * (k + 1), 5.0 * (k + 1), 5.0 * (k + 1))) for k in range(len(stage_ious))]
        self.sampler = det_utils.BalancedPositiveNegativeSampler(rois_per_image, positive_fraction)
        self.score_threshold = score_threshold
        self.nms_threshold = nms_threshold
        self.detections_per_image = detections_per_image
        self.drop_loss_iou = drop_loss_iou
        self.track_temperature = track_temperature  # model.track_temperature (cosine / T logits)
        self.stage_records: list[StageRecord] = []  # filled by each training forward

    # ----------------------------------------------------------------------- training
    @staticmethod
    def _match(proposals: list[torch.Tensor], targets: list[dict], iou: float):
        """Per image: matched GT index, best IoU, class label (0 where best IoU < ``iou``)."""
        matched, best, labels = [], [], []
        for props, tgt in zip(proposals, targets):
            gt = tgt["boxes"]
            if gt.numel() == 0:
                matched.append(torch.zeros(len(props), dtype=torch.long, device=props.device))
                best.append(torch.zeros(len(props), device=props.device))
                labels.append(torch.zeros(len(props), dtype=torch.long, device=props.device))
                continue
            ious = box_iou(props, gt)
            b, m = ious.max(dim=1)
            lab = tgt["labels"][m].clone()
            lab[b < iou] = 0
            matched.append(m)
            best.append(b)
            labels.append(lab)
        return matched, best, labels

    def _sample(self, proposals, targets):
        proposals = [torch.cat([p, t["boxes"].to(p.dtype)]) for p, t in zip(proposals, targets)]
        matched, best, labels = self._match(proposals, targets, self.stage_ious[0])
        pos, neg = self.sampler(labels)
        keep = [torch.where(p | n)[0] for p, n in zip(pos, neg)]
        return [p[k] for p, k in zip(proposals, keep)]

    def _stage_loss(self, k, features, proposals, image_sizes, targets, losses):
        matched, best, labels = self._match(proposals, targets, self.stage_ious[k])
        rois = self.box_roi_pool(features, proposals, image_sizes)
        logits, deltas = self.box_heads[k](rois)
        labels_cat, best_cat = torch.cat(labels), torch.cat(best)
        weights = drop_loss_weights(logits.detach().argmax(dim=1), best_cat, self.drop_loss_iou)
        self.stage_records.append(StageRecord(logits, deltas, labels_cat, best_cat, weights))
        norm = weights.sum().clamp(min=1.0)
        loss_cls = (F.cross_entropy(logits, labels_cat, reduction="none") * weights).sum() / norm
        fg = (labels_cat > 0) & (weights > 0)
        gt_boxes = torch.cat([t["boxes"][m] if t["boxes"].numel() else p for t, m, p in zip(targets, matched, proposals)])
        if fg.any():
            reg_targets = self.box_coders[k].encode_single(gt_boxes[fg], torch.cat(proposals)[fg])
            loss_box = F.smooth_l1_loss(deltas[fg], reg_targets, beta=1 / 9, reduction="sum") / norm
        else:
            loss_box = deltas.sum() * 0.0
        w = self.stage_loss_weights[k]
        losses[f"loss_cls_s{k}"] = loss_cls * w
        losses[f"loss_box_s{k}"] = loss_box * w
        refined = self._decode(k, deltas.detach(), proposals, image_sizes)
        keep_fg = [f for f in torch.split(fg, [len(p) for p in proposals])]
        return refined, matched, keep_fg

    def _decode(self, k, deltas, proposals, image_sizes) -> list[torch.Tensor]:
        boxes = self.box_coders[k].decode_single(deltas, torch.cat(proposals))
        out = []
        for b, size in zip(torch.split(boxes, [len(p) for p in proposals]), image_sizes):
            out.append(clip_boxes_to_image(b, size))
        return out

    def forward_train(
        self,
        features: dict[str, torch.Tensor],
        proposals: list[torch.Tensor],
        image_sizes: list[tuple[int, int]],
        targets: list[dict],
        ref_features: dict[str, torch.Tensor] | None = None,
        ref_image_sizes: list[tuple[int, int]] | None = None,
        ref_targets: list[dict] | None = None,
    ) -> dict[str, torch.Tensor]:
        losses: dict[str, torch.Tensor] = {}
        self.stage_records = []
        proposals = self._sample([p.detach() for p in proposals], targets)
        for k in range(len(self.box_heads)):
            stage_in = proposals
            proposals, matched, fg = self._stage_loss(k, features, stage_in, image_sizes, targets, losses)
        # mask + tracking: positives of the last stage that DropLoss keeps
        pos_boxes = [p[f] for p, f in zip(stage_in, fg)]
        pos_matched = [m[f] for m, f in zip(matched, fg)]
        if sum(len(b) for b in pos_boxes) == 0:
            losses["loss_mask"] = sum(p.sum() for p in self.mask_head.parameters()) * 0.0
            losses["loss_track"] = sum(p.sum() for p in self.track_head.parameters()) * 0.0
            return losses
        mask_logits = self.mask_head(self.mask_roi_pool(features, pos_boxes, image_sizes))
        losses["loss_mask"] = maskrcnn_loss(
            mask_logits, pos_boxes, [t["masks"] for t in targets], [t["labels"] for t in targets], pos_matched
        )
        losses["loss_track"] = self._track_loss(features, image_sizes, pos_boxes, pos_matched, targets, ref_features, ref_image_sizes, ref_targets)
        return losses

    def _track_loss(self, features, image_sizes, pos_boxes, pos_matched, targets, ref_features, ref_image_sizes, ref_targets):
        zero = sum(p.sum() for p in self.track_head.parameters()) * 0.0
        if ref_features is None or ref_targets is None:
            return zero
        key_embeds = torch.split(self.track_head(self.box_roi_pool(features, pos_boxes, image_sizes)), [len(b) for b in pos_boxes])
        ref_boxes = [t["boxes"] for t in ref_targets]
        ref_embeds = torch.split(self.track_head(self.box_roi_pool(ref_features, ref_boxes, ref_image_sizes)), [len(b) for b in ref_boxes])
        total, count = zero, 0
        for ke, re, m, tgt, rtgt in zip(key_embeds, ref_embeds, pos_matched, targets, ref_targets):
            if len(ke) == 0:
                continue
            key_ids = tgt["track_ids"][m]
            # class j+1 = the reference instance with the same track ID; 0 = not in the reference
            same = key_ids[:, None] == rtgt["track_ids"][None, :]
            if same.shape[1] == 0:  # no instance in the reference frame: argmax of an empty dim raises
                target = torch.zeros_like(key_ids)
            else:
                target = torch.where(same.any(dim=1), same.float().argmax(dim=1) + 1, torch.zeros_like(key_ids))
            total = total + F.cross_entropy(track_logits(ke, re, self.track_temperature), target, reduction="sum")
            count += len(ke)
        return total / max(count, 1)

    # ----------------------------------------------------------------------- inference
    @torch.no_grad()
    def forward_test(
        self, features: dict[str, torch.Tensor], proposals: list[torch.Tensor], image_sizes: list[tuple[int, int]]
    ) -> list[dict[str, torch.Tensor]]:
        """Per image: boxes, scores (mean over stages), labels (1..num_thing), 28x28 mask probs, embeddings."""
        probs_sum = None
        for k, head in enumerate(self.box_heads):
            logits, deltas = head(self.box_roi_pool(features, proposals, image_sizes))
            probs = F.softmax(logits, dim=1)
            probs_sum = probs if probs_sum is None else probs_sum + probs
            proposals = self._decode(k, deltas, proposals, image_sizes)
        scores_all = torch.split(probs_sum / len(self.box_heads), [len(p) for p in proposals])
        results = []
        for boxes, scores in zip(proposals, scores_all):
            num_classes = scores.shape[1]
            labels = torch.arange(1, num_classes, device=boxes.device).repeat(len(boxes))
            scores = scores[:, 1:].reshape(-1)
            boxes = boxes.repeat_interleave(num_classes - 1, dim=0)
            keep = torch.where(scores > self.score_threshold)[0]
            boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
            wh = boxes[:, 2:] - boxes[:, :2]
            keep = torch.where((wh > 1e-2).all(dim=1))[0]
            boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
            keep = batched_nms(boxes, scores, labels, self.nms_threshold)[: self.detections_per_image]
            results.append({"boxes": boxes[keep], "scores": scores[keep], "labels": labels[keep]})
        final_boxes = [r["boxes"] for r in results]
        if sum(len(b) for b in final_boxes):
            mask_logits = self.mask_head(self.mask_roi_pool(features, final_boxes, image_sizes))
            masks = maskrcnn_inference(mask_logits, [r["labels"] for r in results])
            embeds = torch.split(self.track_head(self.box_roi_pool(features, final_boxes, image_sizes)), [len(b) for b in final_boxes])
        else:
            masks = [torch.zeros(0, 1, 28, 28, device=b.device) for b in final_boxes]
            embeds = [torch.zeros(0, self.track_head.fc2.out_features, device=b.device) for b in final_boxes]
        for r, m, e in zip(results, masks, embeds):
            r["masks"], r["embeddings"] = m, e
        return results
