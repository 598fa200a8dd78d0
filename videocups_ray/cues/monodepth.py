"""Learned depth + motion probability: Monodepth2 / DynamoDepth network layout.

One checkpoint holds three parts under prefixes: ``encoder.encoder.*`` (a torchvision ResNet,
as Monodepth2's ``ResnetEncoder`` names it), ``depth_decoder.decoder.{i}.*`` (Monodepth2's
``DepthDecoder`` ModuleList order: upconv(4,0), upconv(4,1), ..., upconv(0,1), then one
dispconv per scale) and ``motion_decoder.decoder.{i}.*`` (the same decoder with a 1-channel
motion-probability head, as DynamoDepth's motion-mask decoder). Monodepth2's separate
``encoder.pth`` / ``depth.pth`` files are merged into this layout by prefixing their keys.

Depth follows Monodepth2's ``disp_to_depth``: disparity ``sigmoid`` scaled into
``[1/max_depth, 1/min_depth]``; a self-supervised network is scale-ambiguous, so the metric
scale is fixed by ``camera.camera_height`` only when the caller rescales (not done here).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from videocups_ray.cues.base import DepthResult, FlowResult, FrameBatch, as_images
from videocups_ray.cues.checkpoints import NetEstimator, load_checkpoint, require_checkpoint

if TYPE_CHECKING:  # config types only: the pure path imports without pydantic (gpu_check.py)
    from videocups_ray.config import DepthConfig

_ENC_CHANNELS = {"resnet18": [64, 64, 128, 256, 512], "resnet50": [64, 256, 512, 1024, 2048]}
_DEC_CHANNELS = [16, 32, 64, 128, 256]
_MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
_STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)


class ResnetEncoder(nn.Module):
    """torchvision ResNet returning the five feature maps Monodepth2 uses (1/2 ... 1/32)."""

    def __init__(self, name: str) -> None:
        super().__init__()
        import torchvision

        if name not in _ENC_CHANNELS:
            raise ValueError(f"unknown encoder {name!r}; known: {sorted(_ENC_CHANNELS)}")
        self.encoder = getattr(torchvision.models, name)(weights=None)
        self.channels = _ENC_CHANNELS[name]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        e = self.encoder
        f0 = e.relu(e.bn1(e.conv1(x)))
        f1 = e.layer1(e.maxpool(f0))
        f2 = e.layer2(f1)
        f3 = e.layer3(f2)
        return [f0, f1, f2, f3, e.layer4(f3)]


class Conv3x3(nn.Module):
    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.pad = nn.ReflectionPad2d(1)
        self.conv = nn.Conv2d(cin, cout, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(self.pad(x))


class ConvBlock(nn.Module):
    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.conv = Conv3x3(cin, cout)
        self.nonlin = nn.ELU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.nonlin(self.conv(x))


class Decoder(nn.Module):
    """Monodepth2 multi-scale decoder; returns sigmoid maps at scales 0..3 (scale 0 = full res)."""

    def __init__(self, enc_channels: list[int], out_channels: int = 1, scales: tuple[int, ...] = (0, 1, 2, 3)) -> None:
        super().__init__()
        self.scales = scales
        layers: list[nn.Module] = []
        for i in range(4, -1, -1):
            cin = enc_channels[-1] if i == 4 else _DEC_CHANNELS[i + 1]
            layers.append(ConvBlock(cin, _DEC_CHANNELS[i]))
            cin = _DEC_CHANNELS[i] + (enc_channels[i - 1] if i > 0 else 0)
            layers.append(ConvBlock(cin, _DEC_CHANNELS[i]))
        for s in scales:
            layers.append(Conv3x3(_DEC_CHANNELS[s], out_channels))
        self.decoder = nn.ModuleList(layers)

    def forward(self, feats: list[torch.Tensor]) -> dict[int, torch.Tensor]:
        x = feats[-1]
        out: dict[int, torch.Tensor] = {}
        for k, i in enumerate(range(4, -1, -1)):
            x = self.decoder[2 * k](x)
            x = F.interpolate(x, scale_factor=2, mode="nearest")
            if i > 0:
                x = torch.cat([x, feats[i - 1]], dim=1)
            x = self.decoder[2 * k + 1](x)
            if i in self.scales:
                out[i] = torch.sigmoid(self.decoder[10 + self.scales.index(i)](x))
        return out


class DepthMotionNet(nn.Module):
    """ResNet encoder + depth decoder + motion-probability decoder (shared encoder)."""

    def __init__(self, encoder: str = "resnet18") -> None:
        super().__init__()
        self.encoder = ResnetEncoder(encoder)
        self.depth_decoder = Decoder(self.encoder.channels)
        self.motion_decoder = Decoder(self.encoder.channels)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(disparity in (0,1), motion probability in (0,1)), both ``B x 1 x H x W`` at scale 0."""
        feats = self.encoder(x)
        return self.depth_decoder(feats)[0], self.motion_decoder(feats)[0]


def disp_to_depth(disp: torch.Tensor, min_depth: float, max_depth: float) -> torch.Tensor:
    """Monodepth2's mapping of a sigmoid disparity to depth in ``[min_depth, max_depth]``."""
    lo, hi = 1.0 / max_depth, 1.0 / min_depth
    return 1.0 / (lo + (hi - lo) * disp)


class MonoDepth(NetEstimator):
    """Monocular depth + motion probability network from a local checkpoint.

    Inputs are padded (replicate) to a multiple of 32 and the outputs cropped back.
    """

    name = "monodepth"

    def __init__(self, net: DepthMotionNet, *, min_depth: float = 0.5, max_depth: float = 80.0,
                 batch_size: int = 4, device: str = "cpu") -> None:
        super().__init__()
        if not 0 < min_depth < max_depth or batch_size < 1:
            raise ValueError(f"MonoDepth: need 0 < min_depth < max_depth and batch_size >= 1, got "
                             f"{min_depth}, {max_depth}, {batch_size}")
        self._take_net(net, device, reserve_bytes=512 * 1024**2)
        self.min_depth, self.max_depth = min_depth, max_depth
        self.batch_size = batch_size

    @classmethod
    def from_config(cls, cfg: DepthConfig) -> "MonoDepth":
        path = require_checkpoint(cfg.checkpoint, "depth backend 'monodepth'", "cues.depth.checkpoint")
        net = DepthMotionNet(cfg.encoder)
        load_checkpoint(net, path)
        return cls(net, min_depth=cfg.min_depth, max_depth=cfg.max_depth, batch_size=cfg.batch_size,
                   device=cfg.device)

    @torch.inference_mode()
    def __call__(self, frames_t: FrameBatch, frames_t1: FrameBatch | None = None,
                 flow: FlowResult | None = None, K: np.ndarray | None = None) -> DepthResult:
        """Depth (m) and motion probability of frames t; the network needs only frame t."""
        self._ensure_setup()
        img = as_images(frames_t, "frames_t")
        n, H, W = img.shape[:3]
        ph, pw = (-H) % 32, (-W) % 32
        depth, prob = [], []
        for s in range(0, n, self.batch_size):
            x = torch.from_numpy(img[s : s + self.batch_size]).to(self.device).permute(0, 3, 1, 2).float() / 255.0
            x = (x - _MEAN.to(x.device)) / _STD.to(x.device)
            if ph or pw:
                x = F.pad(x, (0, pw, 0, ph), mode="replicate")
            disp, motion = self.net(x)
            depth.append(disp_to_depth(disp, self.min_depth, self.max_depth)[:, 0, :H, :W].float().cpu().numpy())
            prob.append(motion[:, 0, :H, :W].float().cpu().numpy())
        d = np.concatenate(depth).astype(np.float32)
        return DepthResult(d, np.concatenate(prob).astype(np.float32), np.ones(d.shape, bool))
