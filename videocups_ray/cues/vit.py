"""DINO ViT feature backend: a small ViT module in the DINO/timm parameter layout.

Parameter names match the official DINO checkpoints (``dino_vits8_pretrain.pth``,
``dino_vitb8_pretrain.pth``): ``cls_token``, ``pos_embed``, ``patch_embed.proj.*``,
``blocks.{i}.norm1/attn.qkv/attn.proj/norm2/mlp.fc1/mlp.fc2.*``, ``norm.*``; a converted
checkpoint loads strictly. Features are the last block's patch tokens after ``norm``.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from videocups_ray.cues.base import FeatureResult, FrameBatch, as_images
from videocups_ray.cues.checkpoints import NetEstimator, load_checkpoint, require_checkpoint

if TYPE_CHECKING:  # config types only: the pure path imports without pydantic (gpu_check.py)
    from videocups_ray.config import FeatureConfig

ARCHS = {  # name: (embed dim, depth, heads, patch)
    "vit_small_patch8": (384, 12, 6, 8),
    "vit_base_patch8": (768, 12, 12, 8),
}
_MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
_STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)


class PatchEmbed(nn.Module):
    def __init__(self, patch: int, dim: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(3, dim, kernel_size=patch, stride=patch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(b, n, c))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, 4 * dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class VisionTransformer(nn.Module):
    """ViT returning patch-token features ``B x D x h x w`` for inputs with sides divisible by the patch."""

    def __init__(self, dim: int, depth: int, heads: int, patch: int, train_size: int = 224) -> None:
        super().__init__()
        self.patch, self.dim = patch, dim
        self.patch_embed = PatchEmbed(patch, dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + (train_size // patch) ** 2, dim))
        self.blocks = nn.ModuleList(Block(dim, heads) for _ in range(depth))
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=0.02)

    def _pos(self, gh: int, gw: int) -> torch.Tensor:
        cls_pos, grid = self.pos_embed[:, :1], self.pos_embed[:, 1:]
        side = int(math.isqrt(grid.shape[1]))
        if (gh, gw) != (side, side):
            grid = grid.reshape(1, side, side, self.dim).permute(0, 3, 1, 2)
            grid = F.interpolate(grid, size=(gh, gw), mode="bicubic", align_corners=False)
            grid = grid.permute(0, 2, 3, 1).reshape(1, gh * gw, self.dim)
        return torch.cat([cls_pos, grid], dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, H, W = x.shape
        if H % self.patch or W % self.patch:
            raise ValueError(f"ViT input {H}x{W} is not divisible by the patch size {self.patch}")
        gh, gw = H // self.patch, W // self.patch
        tokens = torch.cat([self.cls_token.expand(b, -1, -1), self.patch_embed(x)], dim=1)
        tokens = tokens + self._pos(gh, gw)
        for blk in self.blocks:
            tokens = blk(tokens)
        tokens = self.norm(tokens)[:, 1:]
        return tokens.transpose(1, 2).reshape(b, self.dim, gh, gw)


def build_vit(arch: str) -> VisionTransformer:
    if arch not in ARCHS:
        raise ValueError(f"unknown ViT architecture {arch!r}; known: {sorted(ARCHS)}")
    dim, depth, heads, patch = ARCHS[arch]
    return VisionTransformer(dim, depth, heads, patch)


def crop_starts(length: int, crop: int, stride: int) -> list[int]:
    """Start offsets of sliding crops covering ``[0, length)``; the last crop ends at the edge."""
    if length <= crop:
        return [0]
    starts = list(range(0, length - crop + 1, stride))
    if starts[-1] != length - crop:
        starts.append(length - crop)
    return starts


class DinoFeatures(NetEstimator):
    """DINO ViT features: ``high`` from sliding full-resolution crops, ``low`` from the
    half-resolution image averaged with its flip; both bilinearly resized to 1/stride."""

    name = "dino"

    def __init__(self, net: VisionTransformer, *, stride: int = 4, crop_size: int = 224,
                 crop_overlap: float = 0.5, batch_size: int = 4, device: str = "cpu") -> None:
        super().__init__()
        p = net.patch
        if crop_size < p or not 0 <= crop_overlap < 1 or batch_size < 1 or stride < 1:
            raise ValueError(f"DinoFeatures: bad crop_size={crop_size}, crop_overlap={crop_overlap}, "
                             f"batch_size={batch_size} or stride={stride}")
        self._take_net(net, device, reserve_bytes=1024**3)
        self.stride, self.batch_size = stride, batch_size
        self.crop = crop_size - crop_size % p
        self.crop_stride = max(p, int(round(self.crop * (1 - crop_overlap) / p)) * p)

    @classmethod
    def from_config(cls, cfg: FeatureConfig) -> "DinoFeatures":
        path = require_checkpoint(cfg.checkpoint, "feature backend 'dino'", "cues.features.checkpoint")
        net = build_vit(cfg.arch)
        load_checkpoint(net, path)
        return cls(net, stride=cfg.stride, crop_size=cfg.crop_size, crop_overlap=cfg.crop_overlap,
                   batch_size=cfg.batch_size, device=cfg.device)

    def _run(self, x: torch.Tensor) -> torch.Tensor:
        outs = [self.net(x[s : s + self.batch_size]) for s in range(0, x.shape[0], self.batch_size)]
        return torch.cat(outs)

    def _pad_to(self, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
        ph, pw = h - x.shape[-2], w - x.shape[-1]
        return F.pad(x, (0, pw, 0, ph), mode="replicate") if ph or pw else x

    def _high(self, x: torch.Tensor) -> torch.Tensor:
        """Patch-grid features of one image ``1 x 3 x H x W`` from overlapping crops, averaged."""
        p = self.net.patch
        H, W = x.shape[-2:]
        Hp, Wp = max(self.crop, -(-H // p) * p), max(self.crop, -(-W // p) * p)
        x = self._pad_to(x, Hp, Wp)
        ys, xs = crop_starts(Hp, self.crop, self.crop_stride), crop_starts(Wp, self.crop, self.crop_stride)
        boxes = [(y, xx) for y in ys for xx in xs]
        crops = torch.cat([x[..., y : y + self.crop, xx : xx + self.crop] for y, xx in boxes])
        feats = self._run(crops)
        acc = torch.zeros(1, self.net.dim, Hp // p, Wp // p, device=x.device)
        cnt = torch.zeros(1, 1, Hp // p, Wp // p, device=x.device)
        g = self.crop // p
        for f, (y, xx) in zip(feats, boxes):
            acc[0, :, y // p : y // p + g, xx // p : xx // p + g] += f
            cnt[0, :, y // p : y // p + g, xx // p : xx // p + g] += 1
        feat = acc / cnt
        return feat[..., : -(-H // p), : -(-W // p)]

    def _low(self, x: torch.Tensor) -> torch.Tensor:
        p = self.net.patch
        H, W = x.shape[-2:]
        half = F.interpolate(x, size=(max(p, H // 2), max(p, W // 2)), mode="bilinear", align_corners=False,
                             antialias=True)
        h2, w2 = half.shape[-2:]
        half = self._pad_to(half, -(-h2 // p) * p, -(-w2 // p) * p)
        both = self._run(torch.cat([half, half.flip(-1)]))
        feat = (both[:1] + both[1:].flip(-1)) / 2
        return feat[..., : -(-h2 // p), : -(-w2 // p)]

    @torch.inference_mode()
    def __call__(self, frames: FrameBatch, depth: np.ndarray | None = None, K: np.ndarray | None = None
                 ) -> FeatureResult:
        """``depth``/``K`` are accepted for interface parity and unused by the ViT."""
        self._ensure_setup()
        img = as_images(frames, "frames")
        n, H, W = img.shape[:3]
        out_hw = (max(1, H // self.stride), max(1, W // self.stride))
        x = torch.from_numpy(img).to(self.device).permute(0, 3, 1, 2).float().div(255.0)
        x = (x - _MEAN.to(x.device)) / _STD.to(x.device)
        high, low = [], []
        for i in range(n):
            xi = x[i : i + 1]
            for feats, out in ((self._high(xi), high), (self._low(xi), low)):
                up = F.interpolate(feats, size=out_hw, mode="bilinear", align_corners=False)
                out.append(F.normalize(up, dim=1).float().cpu().numpy())
        return FeatureResult(high=np.concatenate(high), low=np.concatenate(low))
