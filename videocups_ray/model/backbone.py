"""ResNet + FPN backbone in torchvision's parameter layout, and DINO checkpoint loading.

The ResNet is ``torchvision.models.resnet18/50(weights=None)`` with ``fc`` and ``avgpool``
removed, so its parameter names (``conv1.weight``, ``layer3.2.bn1.running_mean``, ...) are exactly
those of a torchvision (or DINO, which uses torchvision's ResNet) checkpoint.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from dataclasses import dataclass, field
import os

import torch
from torch import nn
from torchvision.models import resnet18, resnet50
from torchvision.ops import FeaturePyramidNetwork, FrozenBatchNorm2d
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

from videocups_ray.data.checkpoints import CheckpointError, listing, read_torch_file

log = logging.getLogger(__name__)

_RESNETS = {"resnet18": (resnet18, (64, 128, 256, 512)), "resnet50": (resnet50, (256, 512, 1024, 2048))}
# Prefixes that DINO / DDP / detection checkpoints put in front of the torchvision names.
_KEY_PREFIXES = ("module.", "backbone.", "body.", "encoder.")


@dataclass
class LoadReport:
    """What a non-strict checkpoint load did: keys the model lacks / the file lacks."""

    source: str
    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)  # in the model, not in the checkpoint
    unexpected: list[str] = field(default_factory=list)  # in the checkpoint, not in the model

    def summary(self) -> str:
        return (
            f"{self.source}: loaded {len(self.loaded)} tensors, "
            f"missing {len(self.missing)} {self.missing[:5]}, "
            f"unexpected {len(self.unexpected)} {self.unexpected[:5]}"
        )


class ResNetFPN(nn.Module):
    """ResNet stages C2..C5 -> FPN P2..P5 plus a max-pooled P6 ("pool"), all ``out_channels``.

    Returns an ``OrderedDict`` with keys "0", "1", "2", "3", "pool" (strides 4..64), the
    naming torchvision's RPN and ``MultiScaleRoIAlign`` expect.
    """

    def __init__(self, arch: str, out_channels: int, *, norm: str = "frozen_bn", trainable_layers: int = 3):
        super().__init__()
        if arch not in _RESNETS:
            raise ValueError(f"backbone {arch!r} is not one of {sorted(_RESNETS)}")
        if norm not in ("frozen_bn", "bn"):
            raise ValueError(f"backbone norm {norm!r} must be 'frozen_bn' or 'bn'")
        if not 0 <= trainable_layers <= 5:
            raise ValueError(f"trainable_layers={trainable_layers} must be in [0, 5]")
        builder, in_channels = _RESNETS[arch]
        norm_layer = FrozenBatchNorm2d if norm == "frozen_bn" else nn.BatchNorm2d
        body = builder(weights=None, norm_layer=norm_layer)
        del body.fc, body.avgpool  # a detection backbone has no classifier; DINO drops fc too
        self.body = body
        self.out_channels = out_channels
        self.fpn = FeaturePyramidNetwork(list(in_channels), out_channels, extra_blocks=LastLevelMaxPool())
        trainable = ["layer4", "layer3", "layer2", "layer1", "conv1"][:trainable_layers]
        if trainable_layers == 5:
            trainable.append("bn1")
        for name, param in self.body.named_parameters():
            if not name.startswith(tuple(trainable)):
                param.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
        b = self.body
        x = b.maxpool(b.relu(b.bn1(b.conv1(x))))
        feats = OrderedDict()
        for i, layer in enumerate((b.layer1, b.layer2, b.layer3, b.layer4)):
            x = layer(x)
            feats[str(i)] = x
        return self.fpn(feats)


def _strip_prefixes(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = {}
    for key, value in state.items():
        changed = True
        while changed:
            changed = False
            for prefix in _KEY_PREFIXES:
                if key.startswith(prefix):
                    key, changed = key[len(prefix):], True
        out[key] = value
    return out


def load_backbone_state(body: nn.Module, state: dict[str, torch.Tensor], *, source: str = "<state dict>") -> LoadReport:
    """Load a torchvision-layout ResNet state dict into ``body`` non-strictly and report.

    Accepts DINO's layouts: a bare state dict, one under ``"state_dict"``/``"model"``/
    ``"teacher"``/``"student"``, keys prefixed with ``module.`` / ``backbone.``. A tensor whose
    shape differs from the model's is an error (a wrong architecture), not a silent skip.
    """
    for wrapper in ("state_dict", "model", "teacher", "student"):
        if wrapper in state and isinstance(state[wrapper], dict):
            state = state[wrapper]
            break
    state = _strip_prefixes(state)
    own = body.state_dict()
    report = LoadReport(source=source)
    usable = {}
    for key, value in state.items():
        if key not in own:
            if not key.endswith("num_batches_tracked"):  # a BN step counter, not a weight
                report.unexpected.append(key)
            continue
        if not isinstance(value, torch.Tensor) or value.shape != own[key].shape:
            got = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
            raise CheckpointError(f"{source}: key {key!r} has shape {got}, the model expects {tuple(own[key].shape)}")
        usable[key] = value
    report.loaded = sorted(usable)
    report.missing = sorted(k for k in own if k not in usable)
    report.unexpected.sort()
    if not usable:  # a file for another network: loading nothing would train from scratch silently
        raise CheckpointError(f"{source}: no key matches the {type(body).__name__} backbone; "
                              f"missing: {listing(report.missing)}; unexpected: {listing(report.unexpected) or '(none)'}")
    body.load_state_dict(usable, strict=False)
    if report.missing:
        log.warning("backbone checkpoint %s", report.summary())
    else:
        log.info("backbone checkpoint %s", report.summary())
    return report


def load_backbone_checkpoint(body: nn.Module, path: str | os.PathLike) -> LoadReport:
    """Read ``path`` (``data.checkpoints``: weights_only) and load it via ``load_backbone_state``."""
    state = read_torch_file(path, "backbone checkpoint")
    if not isinstance(state, dict):
        raise CheckpointError(f"backbone checkpoint {path}: holds a {type(state).__name__}, expected a state dict")
    return load_backbone_state(body, state, source=f"backbone checkpoint {path}")
