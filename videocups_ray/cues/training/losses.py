"""Self-supervised losses shared by flow and depth training (pure torch, no Ray).

Conventions: images are ``B x C x H x W`` float in [0, 1]; flow is ``B x 2 x H x W`` in pixels
(x then y); warping follows the project's rule ``out(x) = in(x + flow(x))`` (README, design
notes), so ``warp(frame_t1, flow_fw)`` reconstructs frame t. Per-pixel losses return
``B x 1 x H x W`` maps so callers can mask and take minima before averaging.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def pixel_grid(b: int, h: int, w: int, device: torch.device, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """``B x 2 x H x W`` pixel coordinates (x, y)."""
    ys, xs = torch.meshgrid(torch.arange(h, device=device, dtype=dtype),
                            torch.arange(w, device=device, dtype=dtype), indexing="ij")
    return torch.stack([xs, ys]).unsqueeze(0).expand(b, 2, h, w)


def sample_at(img: torch.Tensor, coords: torch.Tensor) -> torch.Tensor:
    """Bilinear ``img`` at pixel ``coords`` (``B x 2 x H x W``); outside the image reads the border."""
    h, w = img.shape[-2:]
    gx = 2.0 * coords[:, 0] / max(w - 1, 1) - 1.0
    gy = 2.0 * coords[:, 1] / max(h - 1, 1) - 1.0
    grid = torch.stack([gx, gy], dim=-1)
    return F.grid_sample(img, grid, mode="bilinear", padding_mode="border", align_corners=True)


def warp(img: torch.Tensor, flow: torch.Tensor) -> torch.Tensor:
    """``out(x) = img(x + flow(x))`` (bilinear)."""
    b, _, h, w = flow.shape
    return sample_at(img, pixel_grid(b, h, w, flow.device, flow.dtype) + flow)


def fb_valid(fw: torch.Tensor, bw: torch.Tensor) -> torch.Tensor:
    """Non-occluded mask (1 = visible) of ``fw`` by forward-backward consistency (DESIGN.md 4.1):
    occluded where ``|fw + bw(x+fw)|^2 >= 0.01 (|fw|^2 + |bw(x+fw)|^2) + 0.5``. No gradient."""
    with torch.no_grad():
        bw_w = warp(bw, fw)
        diff = (fw + bw_w).pow(2).sum(1, keepdim=True)
        mag = fw.pow(2).sum(1, keepdim=True) + bw_w.pow(2).sum(1, keepdim=True)
        return (diff < 0.01 * mag + 0.5).to(fw.dtype)


def _grey(img: torch.Tensor) -> torch.Tensor:
    if img.shape[1] == 1:
        return img
    return (0.299 * img[:, 0:1] + 0.587 * img[:, 1:2] + 0.114 * img[:, 2:3])


def census_transform(img: torch.Tensor, radius: int = 3) -> torch.Tensor:
    """UFlow's soft census: per neighbour ``d / sqrt(0.81 + d^2)`` of the grey-level difference
    (grey in 0..255), ``B x (2r+1)^2 x H x W``."""
    grey = _grey(img) * 255.0
    k = 2 * radius + 1
    patches = F.unfold(F.pad(grey, (radius,) * 4, mode="replicate"), k).view(grey.shape[0], k * k, *grey.shape[-2:])
    d = patches - grey
    return d / torch.sqrt(0.81 + d * d)


def census_loss(a: torch.Tensor, b: torch.Tensor, radius: int = 3, ta: torch.Tensor | None = None) -> torch.Tensor:
    """Per-pixel robust soft-Hamming distance of the census transforms of ``a`` and ``b`` (UFlow),
    ``B x 1 x H x W``; insensitive to brightness changes between frames. ``ta``: ``a``'s census
    transform when the caller already has it (one target, several reconstructions)."""
    ta = census_transform(a, radius) if ta is None else ta
    tb = census_transform(b, radius)
    d2 = (ta - tb).pow(2)
    hamming = (d2 / (0.1 + d2)).sum(1, keepdim=True)
    return (hamming.abs() + 0.01).pow(0.4)


def ssim_map(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(1 - SSIM) / 2 over 3x3 windows (Monodepth2), channel mean, ``B x 1 x H x W``."""
    c1, c2 = 0.01**2, 0.03**2
    pa, pb = F.pad(a, (1, 1, 1, 1), mode="reflect"), F.pad(b, (1, 1, 1, 1), mode="reflect")
    mu_a, mu_b = F.avg_pool2d(pa, 3, 1), F.avg_pool2d(pb, 3, 1)
    s_a = F.avg_pool2d(pa * pa, 3, 1) - mu_a**2
    s_b = F.avg_pool2d(pb * pb, 3, 1) - mu_b**2
    s_ab = F.avg_pool2d(pa * pb, 3, 1) - mu_a * mu_b
    num = (2 * mu_a * mu_b + c1) * (2 * s_ab + c2)
    den = (mu_a**2 + mu_b**2 + c1) * (s_a + s_b + c2)
    return torch.clamp((1 - num / den) / 2, 0, 1).mean(1, keepdim=True)


def ssim_l1(a: torch.Tensor, b: torch.Tensor, alpha: float = 0.85) -> torch.Tensor:
    """Monodepth2's photometric error ``alpha (1 - SSIM)/2 + (1 - alpha) |a - b|``, ``B x 1 x H x W``."""
    return alpha * ssim_map(a, b) + (1 - alpha) * (a - b).abs().mean(1, keepdim=True)


def photometric(a: torch.Tensor, b: torch.Tensor, kind: str, census_radius: int = 3,
                ta: torch.Tensor | None = None) -> torch.Tensor:
    """Per-pixel error between target ``a`` and reconstruction ``b``: ``census`` or ``ssim``
    (``ta``: ``a``'s census transform, reused across calls)."""
    if kind == "census":
        return census_loss(a, b, census_radius, ta)
    if kind == "ssim":
        return ssim_l1(a, b)
    raise ValueError(f"unknown photometric loss {kind!r}; known: census, ssim")


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``x`` over ``mask`` (broadcast), 0 when the mask is empty."""
    mask = mask.expand_as(x)
    return (x * mask).sum() / mask.sum().clamp_min(1.0)


def edge_smoothness(x: torch.Tensor, img: torch.Tensor, *, order: int = 1, edge_weight: float = 150.0) -> torch.Tensor:
    """Edge-aware smoothness of ``x`` (``B x C x H x W``): |d^order x| weighted by
    ``exp(-edge_weight * |dI|)``, so ``x`` may jump where the image has an edge (UFlow, Monodepth2)."""
    def dx(t: torch.Tensor) -> torch.Tensor:
        return t[..., :, 1:] - t[..., :, :-1]

    def dy(t: torch.Tensor) -> torch.Tensor:
        return t[..., 1:, :] - t[..., :-1, :]

    gx, gy = x, x
    for _ in range(order):
        gx, gy = dx(gx), dy(gy)
    wx = torch.exp(-edge_weight * dx(img).abs().mean(1, keepdim=True))
    wy = torch.exp(-edge_weight * dy(img).abs().mean(1, keepdim=True))
    if order == 2:
        wx, wy = wx[..., :, 1:], wy[..., 1:, :]
    return (wx * gx.abs()).mean() + (wy * gy.abs()).mean()


def robust_l1(x: torch.Tensor) -> torch.Tensor:
    """Per-pixel generalised Charbonnier of a ``B x 2 x H x W`` difference (SMURF self-supervision)."""
    return (x.pow(2).sum(1, keepdim=True) + 1e-6).pow(0.5)
