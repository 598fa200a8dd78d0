"""Standard label encodings as PNG files (KITTI-STEP panoptic, KITTI depth and flow,
Cityscapes-VPS panoptic), with reads that fail loudly and name the file.

All images are RGB in memory (OpenCV's BGR is converted at the file boundary).
"""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np

from videocups_ray.data.types import DataError

_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_PNG_END = b"IEND\xaeB`\x82"

FLOW_SCALE = 64.0  # KITTI flow: value = u * 64 + 2**15
DEPTH_SCALE = 256.0  # KITTI depth: value = metres * 256, 0 = invalid
CITYSCAPES_DIVISOR = 1000  # Cityscapes-VPS: trainId * 1000 + instance
DVPS_VOID_CLASS = 32  # Cityscapes-DVPS writes void as class 32 (32000); ViP-DeepLab's eval_dvpq ign_id


# --------------------------------------------------------------------------- raw PNG I/O
def _check_png_bytes(data: bytes, path: Path) -> None:
    if not data.startswith(_PNG_MAGIC):
        raise DataError(f"{path}: not a PNG file (bad signature)")
    # A truncated PNG decodes partially in some libpng builds; the IEND chunk proves it is whole.
    if _PNG_END not in data[-32:]:
        raise DataError(f"{path}: truncated PNG (no IEND chunk at the end)")


def read_png(path: str | os.PathLike, *, unchanged: bool = True) -> np.ndarray:
    """Read a PNG as stored (8/16 bit, 1/3/4 channels), colour channels as RGB."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    data = path.read_bytes()
    _check_png_bytes(data, path)
    flag = cv2.IMREAD_UNCHANGED if unchanged else cv2.IMREAD_COLOR
    img = cv2.imdecode(np.frombuffer(data, np.uint8), flag)
    if img is None:
        raise DataError(f"{path}: corrupt PNG (decoder failed)")
    if img.ndim == 3 and img.shape[2] == 3:
        img = img[..., ::-1]
    elif img.ndim == 3 and img.shape[2] == 4:
        img = img[..., [2, 1, 0, 3]]
    return np.ascontiguousarray(img)


def encode_png(img: np.ndarray, *, level: int = 1) -> bytes:
    """PNG bytes of an RGB (HxWx3) or single-channel image, uint8 or uint16."""
    if img.dtype not in (np.uint8, np.uint16):
        raise ValueError(f"PNG needs uint8 or uint16, got {img.dtype}")
    arr = img[..., ::-1] if img.ndim == 3 and img.shape[2] == 3 else img
    ok, buf = cv2.imencode(".png", np.ascontiguousarray(arr), [cv2.IMWRITE_PNG_COMPRESSION, level])
    if not ok:
        raise ValueError("PNG encoding failed")
    return buf.tobytes()


def decode_png(data: bytes, what: str = "PNG bytes") -> np.ndarray:
    """Inverse of :func:`encode_png`; ``what`` names the source in errors."""
    _check_png_bytes(bytes(data[:8]) + bytes(data[-32:]), Path(what))
    img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if img is None:
        raise DataError(f"{what}: corrupt PNG (decoder failed)")
    if img.ndim == 3 and img.shape[2] == 3:
        img = img[..., ::-1]
    return np.ascontiguousarray(img)


def write_png(path: str | os.PathLike, img: np.ndarray) -> None:
    """Write atomically (temp name, then rename), creating parent folders."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_bytes(encode_png(img))
    os.replace(tmp, path)


def read_image(path: str | os.PathLike) -> np.ndarray:
    """An RGB uint8 image (grey is expanded to three channels, alpha dropped)."""
    img = read_png(path) if str(path).lower().endswith(".png") else _read_other(path)
    if img.dtype != np.uint8:
        raise DataError(f"{path}: expected an 8-bit image, got {img.dtype}")
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, axis=2)
    return np.ascontiguousarray(img[..., :3])


def _read_other(path: str | os.PathLike) -> np.ndarray:
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if img is None:
        raise DataError(f"{path}: cannot decode image")
    return img[..., ::-1]


# --------------------------------------------------------------------------- KITTI-STEP
def _check_rgb_ids(semantic: np.ndarray, instance: np.ndarray, max_instance: int, name: str) -> None:
    """ValueError unless the maps match in shape, classes fit in 8 bit and instances in [0, max]."""
    if semantic.shape != instance.shape:
        raise ValueError(f"semantic {semantic.shape} and instance {instance.shape} differ")
    if instance.min(initial=0) < 0 or instance.max(initial=0) > max_instance:
        raise ValueError(f"{name} instance IDs must lie in [0, {max_instance}]")
    if semantic.min(initial=0) < 0 or semantic.max(initial=0) > 255:
        raise ValueError(f"{name} semantic IDs must lie in [0, 255]")


def encode_kitti_panoptic(semantic: np.ndarray, instance: np.ndarray) -> np.ndarray:
    """R = semantic train ID (255 void), instance = G * 256 + B. Returns HxWx3 uint8."""
    _check_rgb_ids(semantic, instance, 65535, "KITTI-STEP")
    inst = instance.astype(np.int64)
    return np.stack([semantic.astype(np.uint8), (inst // 256).astype(np.uint8),
                     (inst % 256).astype(np.uint8)], axis=-1)


def decode_kitti_panoptic(rgb: np.ndarray, what: str = "panoptic") -> tuple[np.ndarray, np.ndarray]:
    """Inverse of :func:`encode_kitti_panoptic`: (semantic uint8, instance int32)."""
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise DataError(f"{what}: KITTI-STEP panoptic must be 8-bit RGB, got {rgb.dtype} {rgb.shape}")
    sem = rgb[..., 0].copy()
    inst = rgb[..., 1].astype(np.int32) * 256 + rgb[..., 2].astype(np.int32)
    return sem, inst


# --------------------------------------------------------------------------- KITTI depth
def encode_kitti_depth(depth: np.ndarray) -> np.ndarray:
    """z-depth in metres -> uint16 (metres * 256, 0 = invalid; NaN, <= 0 and > 255.99 m invalid)."""
    d = np.nan_to_num(depth.astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    v = np.round(d * DEPTH_SCALE)
    v[(d <= 0) | (v > 65535)] = 0
    return v.astype(np.uint16)


def decode_kitti_depth(png: np.ndarray, what: str = "depth") -> np.ndarray:
    """uint16 -> float32 metres, 0 where invalid."""
    if png.dtype != np.uint16 or png.ndim != 2:
        raise DataError(f"{what}: KITTI depth must be single-channel 16-bit, got {png.dtype} {png.shape}")
    return png.astype(np.float32) / DEPTH_SCALE


# --------------------------------------------------------------------------- KITTI flow
def encode_kitti_flow(flow: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """HxWx2 float flow (pixels) + bool valid -> HxWx3 uint16 RGB (R=u, G=v, B=valid)."""
    q = np.clip(np.round(flow.astype(np.float64) * FLOW_SCALE + 2**15), 0, 65535)
    ok = valid & np.isfinite(flow).all(axis=-1)
    q[~ok] = 2**15
    return np.stack([q[..., 0], q[..., 1], ok], axis=-1).astype(np.uint16)


def decode_kitti_flow(png: np.ndarray, what: str = "flow") -> tuple[np.ndarray, np.ndarray]:
    """HxWx3 uint16 RGB -> (flow float32 HxWx2, valid bool)."""
    if png.dtype != np.uint16 or png.ndim != 3 or png.shape[2] != 3:
        raise DataError(f"{what}: KITTI flow must be 16-bit RGB, got {png.dtype} {png.shape}")
    flow = (png[..., :2].astype(np.float32) - 2**15) / FLOW_SCALE
    return flow, png[..., 2] > 0


# --------------------------------------------------------------------------- Cityscapes-VPS
def encode_cityscapes_panoptic(semantic: np.ndarray, instance: np.ndarray) -> np.ndarray:
    """``trainId * 1000 + instance`` as uint16; void (255) is stored bare as 255.

    ``255 * 1000`` does not fit in 16 bit, so void follows the Cityscapes convention that a
    value below 1000 is a bare class ID (see :func:`decode_cityscapes_panoptic`). That makes
    instance IDs on class 0 unrepresentable (they would read as bare classes): refused.
    """
    semantic = np.asarray(semantic)
    instance = np.asarray(instance)
    if semantic.shape != instance.shape:
        raise ValueError(f"semantic {semantic.shape} and instance {instance.shape} differ")
    if instance.max(initial=0) >= CITYSCAPES_DIVISOR or instance.min(initial=0) < 0:
        raise ValueError("Cityscapes-VPS instance IDs must lie in [0, 999]")
    if ((semantic == 0) & (instance > 0)).any():
        raise ValueError("Cityscapes-VPS cannot store instance IDs on class 0 (value < 1000 is a bare class)")
    void = semantic == 255
    v = semantic.astype(np.int64) * CITYSCAPES_DIVISOR + instance.astype(np.int64)
    if void.any():
        if (instance[void] > 0).any():
            raise ValueError("Cityscapes-VPS void pixels (255) cannot carry instance IDs")
        v[void] = 255
    if v.max(initial=0) > 65535:
        raise ValueError(f"Cityscapes-VPS id {int(v.max())} exceeds 16 bit (semantic IDs above 65 besides 255)")
    return v.astype(np.uint16)


def decode_cityscapes_panoptic(png: np.ndarray, what: str = "panoptic") -> tuple[np.ndarray, np.ndarray]:
    """(semantic uint8, instance int32): ``v // 1000, v % 1000``, and a value below 1000 is a
    bare class ID with no instance (Cityscapes / VPS convention for void 255 and crowd regions).
    Class 32 is Cityscapes-DVPS's void (``32000``): read as the ignore class 255, no instance.
    """
    if png.ndim != 2 or png.dtype not in (np.uint16, np.uint8):
        raise DataError(f"{what}: Cityscapes-VPS panoptic must be single-channel 16-bit, got {png.dtype} {png.shape}")
    v = png.astype(np.int32)
    bare = v < CITYSCAPES_DIVISOR
    semantic = np.where(bare, v, v // CITYSCAPES_DIVISOR).astype(np.uint8)
    instance = np.where(bare, 0, v % CITYSCAPES_DIVISOR).astype(np.int32)
    void = semantic == DVPS_VOID_CLASS
    if void.any():
        semantic[void] = 255
        instance[void] = 0
    return semantic, instance


# --------------------------------------------------------------------------- ViP-DeepLab
def encode_vip_deeplab_panoptic(semantic: np.ndarray, instance: np.ndarray) -> np.ndarray:
    """ViP-DeepLab's prediction PNG: HxWx3 uint8 with R = class, G = instance, B = 0 (what
    ``cityscapes-dvps/eval_dvpq.py`` reads as ``R * 1000 + G``)."""
    semantic = np.asarray(semantic)
    instance = np.asarray(instance)
    _check_rgb_ids(semantic, instance, 255, "ViP-DeepLab")  # G holds the instance: 8 bit
    return np.stack([semantic.astype(np.uint8), instance.astype(np.uint8),
                     np.zeros(semantic.shape, np.uint8)], axis=-1)


def decode_vip_deeplab_panoptic(rgb: np.ndarray, what: str = "panoptic") -> tuple[np.ndarray, np.ndarray]:
    """Inverse of :func:`encode_vip_deeplab_panoptic`: (semantic uint8, instance int32); B is
    ignored, as ``eval_dvpq`` ignores it."""
    if rgb.ndim != 3 or rgb.shape[2] not in (3, 4) or rgb.dtype != np.uint8:
        raise DataError(f"{what}: ViP-DeepLab panoptic must be 8-bit RGB, got {rgb.dtype} {rgb.shape}")
    return rgb[..., 0].copy(), rgb[..., 1].astype(np.int32)
