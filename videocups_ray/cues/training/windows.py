"""Training windows: runs of consecutive frames read from any ``FrameSource`` (numpy, no Ray).

Flow trains on pairs (t, t+1), depth on triplets (t-1, t, t+1). A window is named by
``(video_id, start)``; :func:`read_window` reads it with the same ``FrameSource.frames`` call
the pseudo-labeler uses, resizes to the training size (scaling K) and returns numpy arrays, so
the Ray Data steps in ``pipelines/train_cues.py`` are thin wrappers around these functions.
"""

from __future__ import annotations

import cv2
import numpy as np

from videocups_ray.cues.base import default_intrinsics
from videocups_ray.data.sources import FrameSource
from videocups_ray.data.types import DataError

WINDOW_LENGTH = {"flow": 2, "depth": 3}


def plan_windows(source: FrameSource, length: int, stride: int = 1) -> list[tuple[str, int]]:
    """Every ``(video_id, start)`` whose ``length`` frames exist, starts ``stride`` apart."""
    out = []
    for vid in source.videos():
        n = source.num_frames(vid)
        out.extend((str(vid), s) for s in range(0, n - length + 1, stride))
    return out


def read_window(source: FrameSource, video_id: str, start: int, length: int, height: int, width: int,
                focal_scale: float = 0.9, focal: float | None = None) -> dict[str, np.ndarray]:
    """``images`` uint8 ``length x H x W x 3`` at the training size and ``K`` (3x3, float32).

    K comes from the first frame's ``extra["K"]`` (SynthDrive, KITTI calib) scaled to the
    training size, else from ``focal`` / ``focal_scale`` (the depth config's fallback).
    """
    frames = list(source.frames(video_id, start, start + length))
    if len(frames) != length:
        raise DataError(f"video {video_id!r}: window at frame {start} has {len(frames)} of {length} frames")
    h0, w0 = frames[0].shape
    for f in frames:
        if f.shape != (h0, w0):
            raise DataError(f"video {video_id!r} frame {f.frame_index}: size {f.shape} differs from {(h0, w0)}")
    interp = cv2.INTER_AREA if height <= h0 else cv2.INTER_LINEAR
    images = np.stack([f.image if (h0, w0) == (height, width) else cv2.resize(f.image, (width, height), interpolation=interp)
                       for f in frames])
    if "K" in frames[0].extra:
        K = np.asarray(frames[0].extra["K"], dtype=np.float64).copy()
        K[0] *= width / w0
        K[1] *= height / h0
    else:
        K = default_intrinsics(height, width, focal * width / w0 if focal else None, focal_scale)
    return {"images": images, "K": K.astype(np.float32)}


def augment_window(images: np.ndarray, K: np.ndarray, rng: np.random.Generator, *, flip_prob: float,
                   color_jitter: float) -> tuple[np.ndarray, np.ndarray]:
    """One horizontal flip (K's principal point mirrored) and one brightness/contrast change,
    alike for every frame of the window so the motion between them stays true."""
    K = K.copy()
    if rng.random() < flip_prob:
        images = images[:, :, ::-1]
        K[0, 2] = images.shape[2] - 1 - K[0, 2]
    if color_jitter > 0:
        gain = 1.0 + rng.uniform(-color_jitter, color_jitter)
        contrast = 1.0 + rng.uniform(-color_jitter, color_jitter)
        img = images.astype(np.float32)
        images = np.clip((img - img.mean()) * contrast + img.mean() * gain, 0, 255).round().astype(np.uint8)
    return np.ascontiguousarray(images), K


def dis_pair_flows(images: np.ndarray, preset: str = "medium") -> np.ndarray:
    """DIS flow of a pair both ways: ``2 x H x W x 2`` float32 (0 -> 1, 1 -> 0), the flow
    trainer's proxy teacher (``cue_training.dis_teacher_weight``)."""
    from videocups_ray.cues.flow import DisFlow

    dis = DisFlow(preset)
    dis.setup("cpu")
    r = dis(images[0:1], images[1:2])
    return np.stack([r.fw[0], r.bw[0]]).astype(np.float32)


def dis_flows(images: np.ndarray, preset: str = "medium") -> np.ndarray:
    """DIS flow from the centre frame of a triplet to each neighbour: ``2 x H x W x 2`` float32
    (t -> t-1, t -> t+1); the depth loss uses it to explain independently moving pixels."""
    from videocups_ray.cues.flow import DisFlow

    dis = DisFlow(preset)
    dis.setup("cpu")
    centre = images[1:2]
    back = dis(centre, images[0:1]).fw[0]
    ahead = dis(centre, images[2:3]).fw[0]
    return np.stack([back, ahead]).astype(np.float32)
