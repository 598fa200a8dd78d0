"""Short looping clips for the report: animated WebP, which every browser shows in an <img>.

(OpenCV's ``mp4v`` MP4 does not play in Chromium, and its H.264 writer is not built in; an
animated WebP needs no codec, loops, and is a few hundred kB for a short strip.)
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np
from PIL import Image


def hstack_labelled(panels: Sequence[tuple[str, np.ndarray]], *, height: int = 160) -> np.ndarray:
    """Panels side by side at one height, each with its caption burnt in at the top left."""
    out = []
    for caption, img in panels:
        h, w = img.shape[:2]
        scaled = cv2.resize(np.ascontiguousarray(img), (max(1, round(w * height / h)), height),
                            interpolation=cv2.INTER_NEAREST)
        cv2.rectangle(scaled, (0, 0), (min(scaled.shape[1], 8 + 7 * len(caption)), 16), (0, 0, 0), -1)
        cv2.putText(scaled, caption, (3, 12), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (255, 255, 255), 1, cv2.LINE_AA)
        out.append(scaled)
    return np.concatenate(out, axis=1)


def write_webp(frames: Sequence[np.ndarray], path: str | os.PathLike, *, fps: float = 4.0,
               quality: int = 70) -> Path:
    """An animated, looping WebP of RGB uint8 frames (all the same size)."""
    if not frames:
        raise ValueError(f"{path}: no frames to animate")
    shapes = {f.shape for f in frames}
    if len(shapes) != 1:
        raise ValueError(f"{path}: frames differ in size: {sorted(shapes)}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    images = [Image.fromarray(np.ascontiguousarray(f)) for f in frames]
    images[0].save(path, format="WEBP", save_all=True, append_images=images[1:], duration=int(1000 / fps),
                   loop=0, quality=quality, method=4)
    return path
