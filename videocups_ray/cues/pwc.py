"""PWC-tiny: a small coarse-to-fine flow network for self-supervised training on CPUs.

Why it exists: RAFT's recurrent update learns slowly from a random start; unsupervised RAFT
(SMURF) needs tens of thousands of steps, far more than 2 CPU cores give in 15 minutes. PWC-Net's
design (feature pyramid, warping, local cost volume per level) matches pixels by construction,
and here every level's cost volume also gives a *soft-argmax* displacement (expected offset under
a softmax of the correlations), so the flow is right as soon as the features are discriminative;
a small conv decoder only adds a residual (its last layer starts at zero). Each level's cost
volume is the sum of two correlations: of a fixed census descriptor of the grey image at that
level (so a fresh network already matches like a coarse-to-fine block matcher) and of the
learned features (L2-normalised, weighted by a learned ``alpha`` that starts small), which
training makes discriminative where the census is not. The flow backend
``pwc`` (``cues/flow.py``) loads its checkpoints; ``videocups train-cues flow`` trains it when
``cue_training.flow_net: pwc``.

``PwcTiny(a, b)`` takes ``B x 3 x H x W`` in [-1, 1] (H, W multiples of 16) and returns one
full-resolution flow per pyramid level, coarse to fine (pixels, x then y), like RAFT's list of
iterations, so the same sequence loss and the same backend call apply.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _conv(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1), nn.LeakyReLU(0.1, inplace=True))


def local_correlation(f1: torch.Tensor, f2: torch.Tensor, radius: int) -> torch.Tensor:
    """Mean over channels of ``f1(x) * f2(x + d)`` for every offset ``d`` in a (2r+1)^2 window,
    ``B x (2r+1)^2 x H x W`` (offsets row-major: dy outer, dx inner); outside reads zero."""
    b, c, h, w = f1.shape
    k = 2 * radius + 1
    patches = F.unfold(f2, k, padding=radius).view(b, c, k * k, h, w)
    return (patches * f1.unsqueeze(2)).mean(1)


def _offsets(radius: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    r = torch.arange(-radius, radius + 1, device=device, dtype=dtype)
    dy, dx = torch.meshgrid(r, r, indexing="ij")
    return torch.stack([dx.reshape(-1), dy.reshape(-1)])  # 2 x K


def census_descriptor(grey: torch.Tensor, radius: int = 2, eps: float = 20.0) -> torch.Tensor:
    """A soft census of a ``B x 1 x H x W`` grey image (0..255): per neighbour
    ``d / sqrt(eps^2 + d^2)`` of the grey difference, ``B x (2r+1)^2 x H x W``. ``eps`` (grey
    levels) is well above sensor noise (UFlow's loss uses 0.9, which saturates on noise), so flat
    regions give a near-zero descriptor: their correlations are flat and the soft-argmax stays at
    zero there instead of picking a noise peak."""
    k = 2 * radius + 1
    b, _, h, w = grey.shape
    patches = F.unfold(F.pad(grey, (radius,) * 4, mode="replicate"), k).view(b, k * k, h, w)
    d = patches - grey
    return d / torch.sqrt(eps * eps + d * d)


def _warp(x: torch.Tensor, flow: torch.Tensor) -> torch.Tensor:
    """``out(p) = x(p + flow(p))`` (bilinear, zeros outside)."""
    b, _, h, w = flow.shape
    ys, xs = torch.meshgrid(torch.arange(h, device=flow.device, dtype=flow.dtype),
                            torch.arange(w, device=flow.device, dtype=flow.dtype), indexing="ij")
    gx = 2.0 * (xs + flow[:, 0]) / max(w - 1, 1) - 1.0
    gy = 2.0 * (ys + flow[:, 1]) / max(h - 1, 1) - 1.0
    return F.grid_sample(x, torch.stack([gx, gy], -1), mode="bilinear", padding_mode="zeros", align_corners=True)


class PwcTiny(nn.Module):
    """Feature pyramid at 1/2 .. 1/16; per level (coarse to fine): warp, local correlation,
    soft-argmax displacement + decoder residual. ~0.15 M weights.

    ``channels``: feature channels at 1/2, 1/4, 1/8, 1/16; ``radii``: correlation radius per level
    (same order; 1/16 with radius 3 reaches +-48 px at full resolution). ``init_sharpness``: the
    softmax sharpness each level starts with (same order). The coarse levels start flat (1), so
    their soft-argmax starts near zero displacement: the census of an 8x16 average-pooled image
    (1/16 of 128x256) matches noise, and a sharp start sent the fresh network's flow +-48 px
    astray (EPE 13.2 px on SynthDrive vs 4.7 px with flat coarse levels; zero flow 4.0).
    """

    def __init__(self, channels: tuple[int, ...] = (16, 24, 32, 48), radii: tuple[int, ...] = (2, 3, 3, 3),
                 decoder_width: int = 32, init_sharpness: tuple[float, ...] = (10.0, 10.0, 1.0, 1.0)) -> None:
        super().__init__()
        if len(channels) != len(radii) or len(init_sharpness) != len(radii) or min(radii) < 1 \
                or min(init_sharpness) <= 0:
            raise ValueError(f"PwcTiny: channels {channels}, radii {radii} and init_sharpness {init_sharpness} "
                             "need equal lengths, radii >= 1, sharpness > 0")
        self.radii = tuple(radii)
        enc, cin = [], 3
        for c in channels:
            enc.append(nn.Sequential(_conv(cin, c, 2), _conv(c, c)))
            cin = c
        self.encoder = nn.ModuleList(enc)
        self.decoders = nn.ModuleList()
        # softmax sharpness per level, learned (the census correlation of a true match is ~1)
        self.log_beta = nn.Parameter(torch.tensor(init_sharpness, dtype=torch.float32).log())
        self.alpha = nn.Parameter(torch.full((len(channels),), 0.1))  # weight of the learned correlation
        for c, r in zip(channels, radii):
            head = nn.Conv2d(decoder_width, 2, 3, 1, 1)
            nn.init.zeros_(head.weight)
            nn.init.zeros_(head.bias)
            self.decoders.append(nn.Sequential(_conv((2 * r + 1) ** 2 + c + 4, decoder_width),
                                               _conv(decoder_width, decoder_width), head))

    @property
    def stride(self) -> int:
        """Input sides must be multiples of this."""
        return 2 ** len(self.radii)

    def _features(self, x: torch.Tensor) -> list[torch.Tensor]:
        out = []
        for block in self.encoder:
            x = block(x)
            out.append(x)
        return out

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> list[torch.Tensor]:
        h, w = a.shape[-2:]
        if h % self.stride or w % self.stride:
            raise ValueError(f"PwcTiny: input {h}x{w} is not a multiple of {self.stride}; pad it first")
        fa = self._features(torch.cat([a, b]))[::-1]
        n = a.shape[0]
        grey = (0.299 * a[:, :1] + 0.587 * a[:, 1:2] + 0.114 * a[:, 2:3] + 1) * 127.5
        grey_b = (0.299 * b[:, :1] + 0.587 * b[:, 1:2] + 0.114 * b[:, 2:3] + 1) * 127.5
        flow: torch.Tensor | None = None
        outs = []
        for i, feats in enumerate(fa):
            level = len(fa) - 1 - i  # index into radii / decoders (0 = finest, 1/2)
            f1, f2 = feats[:n], F.normalize(feats[n:], dim=1)
            stride = h // f1.shape[-2]
            c1 = census_descriptor(F.avg_pool2d(grey, stride))
            c2 = census_descriptor(F.avg_pool2d(grey_b, stride))
            if flow is None:
                flow = f1.new_zeros(n, 2, *f1.shape[-2:])
            else:
                flow = 2.0 * F.interpolate(flow, size=f1.shape[-2:], mode="bilinear", align_corners=False)
                f2, c2 = _warp(f2, flow), _warp(c2, flow)
            r = self.radii[level]
            corr = (local_correlation(c1, c2, r)
                    + self.alpha[level] * local_correlation(F.normalize(f1, dim=1), f2, r) * f1.shape[1])
            prob = torch.softmax(corr * self.log_beta[level].exp(), dim=1)
            disp = torch.einsum("bkhw,ck->bchw", prob, _offsets(r, corr.device, corr.dtype))
            flow = flow + disp
            flow = flow + self.decoders[level](torch.cat([F.leaky_relu(corr, 0.1), f1, flow, disp], 1))
            scale = h / f1.shape[-2]
            outs.append(scale * F.interpolate(flow, size=(h, w), mode="bilinear", align_corners=False))
        return outs
