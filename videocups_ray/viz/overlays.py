"""Colour images of labels, depth and flow, for reports and overlay videos.

Colours are deterministic: a track ID keeps its colour in every frame of every report, so a
person can follow an object (and spot an ID switch) by eye.
"""

from __future__ import annotations

import cv2
import numpy as np

# Cityscapes train-ID palette (19 classes), RGB.
CITYSCAPES_PALETTE = np.array(
    [
        (128, 64, 128), (244, 35, 232), (70, 70, 70), (102, 102, 156), (190, 153, 153),
        (153, 153, 153), (250, 170, 30), (220, 220, 0), (107, 142, 35), (152, 251, 152),
        (70, 130, 180), (220, 20, 60), (255, 0, 0), (0, 0, 142), (0, 0, 70),
        (0, 60, 100), (0, 80, 100), (0, 0, 230), (119, 11, 32),
    ],
    dtype=np.uint8,
)
CITYSCAPES_NAMES = (
    "road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign",
    "vegetation", "terrain", "sky", "person", "rider", "car", "truck", "bus", "train",
    "motorcycle", "bicycle",
)


def _hash_colours(ids: np.ndarray, salt: int) -> np.ndarray:
    """Stable bright colours for integer IDs (golden-ratio hue walk, fixed saturation)."""
    hue = ((ids.astype(np.int64) * 0.61803398875 + salt * 0.1234) % 1.0 * 179).astype(np.uint8)
    hsv = np.stack([hue, np.full_like(hue, 200), np.full_like(hue, 255)], axis=-1)[None]
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)[0]


def semantic_palette(kind: str, n: int = 256) -> np.ndarray:
    """256x3 uint8 lookup table; ``kind`` is "cityscapes" or "pseudo" (hashed colours)."""
    lut = np.zeros((256, 3), np.uint8)
    if kind == "cityscapes":
        lut[: len(CITYSCAPES_PALETTE)] = CITYSCAPES_PALETTE
    elif kind == "pseudo":
        lut[:] = _hash_colours(np.arange(256), salt=7)
    else:
        raise ValueError(f"unknown palette {kind!r}; use 'cityscapes' or 'pseudo'")
    lut[255] = 0  # void / ignore is black
    return lut


def colorize_semantic(semantic: np.ndarray, palette: str = "cityscapes") -> np.ndarray:
    return semantic_palette(palette)[np.clip(semantic, 0, 255).astype(np.uint8)]


def colorize_panoptic(
    semantic: np.ndarray,
    instance: np.ndarray,
    *,
    palette: str = "cityscapes",
    image: np.ndarray | None = None,
    alpha: float = 0.55,
    draw_ids: bool = True,
) -> np.ndarray:
    """Stuff in its class colour, each track in its own colour with its ID written on it."""
    out = colorize_semantic(semantic, palette)
    ids = np.unique(instance)
    ids = ids[ids > 0]
    if ids.size:
        lut_ids = _hash_colours(ids, salt=1)
        idx = np.searchsorted(ids, instance)
        mask = instance > 0
        out[mask] = lut_ids[idx[mask]]
    if image is not None:
        out = cv2.addWeighted(image, 1 - alpha, out, alpha, 0)
    if draw_ids and ids.size:
        out = np.ascontiguousarray(out)
        # Contours make neighbouring instances of similar colour distinguishable.
        edges = np.zeros(instance.shape, bool)
        edges[:, 1:] |= instance[:, 1:] != instance[:, :-1]
        edges[1:, :] |= instance[1:, :] != instance[:-1, :]
        out[edges & (instance > 0)] = 255
        scale = max(0.3, min(out.shape[:2]) / 600)
        for tid in ids:
            ys, xs = np.nonzero(instance == tid)
            org = (int(xs.mean()) - 6, int(ys.mean()) + 4)
            cv2.putText(out, str(int(tid)), org, cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), 3)
            cv2.putText(out, str(int(tid)), org, cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), 1)
    return out


def colorize_depth(depth: np.ndarray, max_depth: float = 80.0) -> np.ndarray:
    """Inverse depth in the magma colour map (near = bright); invalid (0/NaN) black."""
    d = np.nan_to_num(depth.astype(np.float32), nan=0.0)
    valid = d > 0
    inv = np.zeros_like(d)
    inv[valid] = 1.0 / np.clip(d[valid], 1e-3, max_depth)
    lo = 1.0 / max_depth
    hi = float(np.percentile(inv[valid], 99)) if valid.any() else 1.0
    norm = np.clip((inv - lo) / max(hi - lo, 1e-6), 0, 1)
    out = cv2.applyColorMap((norm * 255).astype(np.uint8), cv2.COLORMAP_MAGMA)[..., ::-1].copy()
    out[~valid] = 0
    return out


def colorize_flow(flow: np.ndarray, valid: np.ndarray | None = None, max_mag: float | None = None) -> np.ndarray:
    """Standard flow colour coding: hue = direction, saturation = magnitude; invalid black."""
    f = np.nan_to_num(flow.astype(np.float32))
    mag, ang = cv2.cartToPolar(f[..., 0], f[..., 1])
    if max_mag is None:
        max_mag = float(np.percentile(mag, 99)) if mag.size else 1.0
    hsv = np.zeros(f.shape[:2] + (3,), np.uint8)
    hsv[..., 0] = (ang * 90 / np.pi).astype(np.uint8)
    hsv[..., 1] = np.clip(mag / max(max_mag, 1e-6) * 255, 0, 255).astype(np.uint8)
    hsv[..., 2] = 255
    out = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)
    if valid is not None:
        out[~valid.astype(bool)] = 0
    return out


def colorize_mask(mask: np.ndarray, colour: tuple[int, int, int] = (255, 64, 0),
                  image: np.ndarray | None = None) -> np.ndarray:
    """A binary mask in one colour, optionally over a darkened image."""
    base = (image // 3) if image is not None else np.zeros(mask.shape + (3,), np.uint8)
    out = base.copy()
    out[mask.astype(bool)] = colour
    return out


def colorize_prob(prob: np.ndarray) -> np.ndarray:
    """A [0, 1] map in the viridis colour map."""
    p = np.clip(np.nan_to_num(prob.astype(np.float32)), 0, 1)
    return cv2.applyColorMap((p * 255).astype(np.uint8), cv2.COLORMAP_VIRIDIS)[..., ::-1].copy()
