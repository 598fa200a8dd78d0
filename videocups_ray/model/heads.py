"""Network heads: cascade box head, mask head, Panoptic-FPN semantic head, tracking embedding."""

from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn


def _group_norm(channels: int) -> nn.GroupNorm:
    groups = 32
    while channels % groups:
        groups //= 2
    return nn.GroupNorm(groups, channels)


class BoxHead(nn.Module):
    """One cascade stage: 2 fc layers on 7x7 RoI features, class logits and class-agnostic deltas.

    Cascade R-CNN regresses class-agnostically at every stage; the refined boxes of stage k
    are the proposals of stage k+1.
    """

    def __init__(self, in_channels: int, resolution: int, hidden: int, num_classes: int):
        super().__init__()
        self.fc1 = nn.Linear(in_channels * resolution * resolution, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.cls_score = nn.Linear(hidden, num_classes)  # index 0 = background
        self.bbox_pred = nn.Linear(hidden, 4)
        nn.init.normal_(self.cls_score.weight, std=0.01)
        nn.init.normal_(self.bbox_pred.weight, std=0.001)
        nn.init.zeros_(self.cls_score.bias)
        nn.init.zeros_(self.bbox_pred.bias)

    def forward(self, roi_features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = F.relu(self.fc1(roi_features.flatten(1)))
        x = F.relu(self.fc2(x))
        return self.cls_score(x), self.bbox_pred(x)


class MaskHead(nn.Module):
    """Small Mask R-CNN head: ``num_convs`` 3x3 convs, a 2x deconv, per-class 1x1 logits."""

    def __init__(self, in_channels: int, channels: int, num_convs: int, num_classes: int):
        super().__init__()
        layers: list[nn.Module] = []
        for i in range(num_convs):
            layers += [nn.Conv2d(in_channels if i == 0 else channels, channels, 3, padding=1), nn.ReLU(inplace=True)]
        self.convs = nn.Sequential(*layers)
        self.deconv = nn.ConvTranspose2d(channels, channels, 2, stride=2)
        self.logits = nn.Conv2d(channels, num_classes, 1)  # index 0 (background) unused

    def forward(self, roi_features: torch.Tensor) -> torch.Tensor:
        return self.logits(F.relu(self.deconv(self.convs(roi_features))))


class SemanticHead(nn.Module):
    """Panoptic-FPN semantic branch: every FPN level brought to stride 4, summed, classified.

    Classes are the stuff pseudo-classes plus one merged "thing" class (the last index).
    """

    def __init__(self, in_channels: int, channels: int, num_classes: int, num_levels: int = 4):
        super().__init__()
        self.levels = nn.ModuleList()
        for level in range(num_levels):
            blocks: list[nn.Module] = []
            for k in range(max(level, 1)):
                blocks += [
                    nn.Conv2d(in_channels if k == 0 else channels, channels, 3, padding=1, bias=False),
                    _group_norm(channels),
                    nn.ReLU(inplace=True),
                ]
                if level > 0:
                    blocks.append(nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False))
            self.levels.append(nn.Sequential(*blocks))
        self.predictor = nn.Conv2d(channels, num_classes, 1)

    def forward(self, features: OrderedDict[str, torch.Tensor]) -> torch.Tensor:
        """Logits at stride 4 of the padded batch."""
        maps = list(features.values())[: len(self.levels)]
        out = self.levels[0](maps[0])
        for level, fmap in zip(self.levels[1:], maps[1:]):
            up = level(fmap)
            if up.shape[-2:] != out.shape[-2:]:
                up = F.interpolate(up, size=out.shape[-2:], mode="bilinear", align_corners=False)
            out = out + up
        return self.predictor(out)


class TrackHead(nn.Module):
    """MaskTrack R-CNN embedding branch: 2 fc layers on RoI features -> an L2-normalised
    ``embed_dim`` vector (matching compares directions, QDTrack-style, so the tracking loss
    cannot grow with the embeddings' norm)."""

    def __init__(self, in_channels: int, resolution: int, hidden: int, embed_dim: int):
        super().__init__()
        self.fc1 = nn.Linear(in_channels * resolution * resolution, hidden)
        self.fc2 = nn.Linear(hidden, embed_dim)

    def forward(self, roi_features: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.fc2(F.relu(self.fc1(roi_features.flatten(1)))), dim=1)


def track_logits(key_embeds: torch.Tensor, ref_embeds: torch.Tensor, temperature: float) -> torch.Tensor:
    """MaskTrack matching logits: column 0 is "new object" (logit 0), column j+1 is ref instance j.

    The similarity is the cosine of the two embeddings divided by ``temperature`` (both sides
    are L2-normalised here, so averaged track embeddings work too): every logit lies in
    [-1/T, 1/T] and the cross-entropy over [new, refs] is at most log(1 + refs) + 2/T, however
    large the head's raw outputs get. MaskTrack R-CNN's unnormalised dot products let this loss
    reach ~100 early in training and dominate the clipped gradient. The "new" slot has a fixed
    zero logit: an object whose cosine with every reference is <= 0 is classified as new.
    """
    if temperature <= 0:
        raise ValueError(f"track temperature must be > 0, got {temperature}")
    sims = F.normalize(key_embeds, dim=1) @ F.normalize(ref_embeds, dim=1).t() / temperature
    return torch.cat([sims.new_zeros(sims.shape[0], 1), sims], dim=1)
