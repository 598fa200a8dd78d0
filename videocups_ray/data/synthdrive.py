"""SynthDrive: the embedded procedural driving-video corpus with exact ground truth.

DESIGN.md section 6. A sequence is described by :mod:`synthdrive_scene` (objects and their
trajectories, deterministic by ``(cfg.seed, index)``) and rendered by
:mod:`synthdrive_render` (vectorised numpy ray casting). This module turns renders into
:class:`~videocups_ray.data.types.Frame` objects (exposure, sensor noise, flow in both
directions, motion mask, intrinsics, pose) and writes datasets to disk.

Every frame is rendered once: frame t needs the renders of t-1 and t+1 for the visibility
of its backward and forward flow, so the generator keeps a window of three renders.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from videocups_ray.config import SynthConfig
from videocups_ray.data.encodings import (
    encode_kitti_depth, encode_kitti_flow, encode_kitti_panoptic, write_png,
)
from videocups_ray.data.synthdrive_render import RayCaster, Render, rigid_flow
from videocups_ray.data.synthdrive_scene import SYNTH_CLASSES, THING_CLASSES, SynthSceneSpec, build_scene
from videocups_ray.data.types import Frame

__all__ = ["SYNTH_CLASSES", "THING_CLASSES", "SynthScene", "generate_sequence", "write_synth_dataset"]

_EXPOSURE_LIMITS = (0.6, 1.5)  # the exposure random walk is clipped here (relative gain)
_BRIGHTNESS = 1.15  # linear colour -> 8-bit scale before exposure


class SynthScene:
    """One SynthDrive sequence: scene description, ray caster and per-frame sensor effects."""

    def __init__(self, cfg: SynthConfig, index: int):
        if index < 0:
            raise ValueError(f"SynthDrive sequence index must be >= 0, got {index}")
        self.cfg, self.index = cfg, index
        self.spec: SynthSceneSpec = build_scene(cfg, index)
        self.caster = RayCaster(self.spec, cfg.height, cfg.width, cfg.focal_scale, shadows=cfg.shadows)
        rng = np.random.default_rng((cfg.seed * 1000 + index, 1))
        steps = np.exp(cfg.exposure_jitter * rng.standard_normal(cfg.frames))
        steps[0] = 1.0
        gains = np.empty(cfg.frames)
        g = 1.0
        for i, s in enumerate(steps):  # random walk, clipped so frames never saturate entirely
            g = float(np.clip(g * s, *_EXPOSURE_LIMITS))
            gains[i] = g
        self.exposure = gains
        tab = self.caster.table
        moving_obj = np.array([obj.moving for obj in self.spec.objects])
        self._prim_moving = np.append(moving_obj[tab.obj], False)  # index -1 (sky) -> False
        self._prim_moving[0] = False  # the ground

    @property
    def video_id(self) -> str:
        return self.spec.video_id

    @property
    def K(self) -> np.ndarray:
        return self.caster.K.copy()

    def camera_pose(self, frame: int) -> np.ndarray:
        """Camera-to-world 4x4 of ``frame``."""
        return self.spec.camera_pose(frame)

    def render(self, frame: int) -> Render:
        if not 0 <= frame < self.cfg.frames:
            raise IndexError(f"SynthDrive {self.video_id}: frame {frame} outside [0, {self.cfg.frames})")
        return self.caster.render(frame)

    def image(self, r: Render) -> np.ndarray:
        """Sensor model: exposure gain, Gaussian noise (8-bit levels), quantisation."""
        img = r.colour * np.float32(255.0 * _BRIGHTNESS * self.exposure[r.frame])
        if self.cfg.noise_std > 0:
            rng = np.random.default_rng((self.cfg.seed * 1000 + self.index, 2, r.frame))
            img += rng.standard_normal(img.shape, dtype=np.float32) * np.float32(self.cfg.noise_std)
        return np.clip(np.rint(img), 0, 255).astype(np.uint8)

    def frames(self) -> Iterator[Frame]:
        """All frames in order, each rendered once."""
        n = self.cfg.frames
        prev: Render | None = None
        cur = self.render(0)
        for t in range(n):
            nxt = self.render(t + 1) if t + 1 < n else None
            yield self._frame(prev, cur, nxt)
            prev, cur = cur, nxt

    def _frame(self, prev: Render | None, cur: Render, nxt: Render | None) -> Frame:
        extra: dict = {
            "K": self.K,
            "pose": self.camera_pose(cur.frame),
            "motion": self._prim_moving[cur.prim],
        }
        flow = valid = None
        if nxt is not None:
            flow, valid = rigid_flow(self.caster, cur, nxt)
        if prev is not None:
            extra["flow_bw"], extra["flow_bw_valid"] = rigid_flow(self.caster, cur, prev)
        return Frame(
            video_id=self.video_id, frame_index=cur.frame, image=self.image(cur),
            semantic=cur.semantic, instance=cur.instance, depth=cur.depth,
            flow=flow, flow_valid=valid, extra=extra,
        )


def generate_sequence(cfg: SynthConfig, index: int) -> Iterator[Frame]:
    """Frames of sequence ``index`` (video_id ``f"{index:04d}"``); bit-identical for the same
    ``(cfg, index)``."""
    return SynthScene(cfg, index).frames()


def write_synth_dataset(cfg: SynthConfig, out_dir: str | os.PathLike, progress: bool = True) -> dict:
    """Render ``cfg.sequences`` sequences to ``out_dir`` in the KITTI-style layout.

    ``images/``, ``panoptic/`` (KITTI-STEP), ``depth/`` (uint16 m*256), ``flow/`` (KITTI flow,
    none for the last frame), ``motion/`` (0/255) per ``<seq>/<frame:06d>.png``;
    ``calib/<seq>.json`` with K and camera-to-world poses; ``synthdrive.json`` with the config,
    class names and things. Returns that summary plus the frame count.
    """
    from tqdm import tqdm

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    total = cfg.sequences * cfg.frames
    bar = tqdm(total=total, desc="synthdrive", unit="frame", disable=not progress)
    written = 0
    try:
        for s in range(cfg.sequences):
            scene = SynthScene(cfg, s)
            seq = scene.video_id
            poses = []
            for fr in scene.frames():
                name = f"{fr.frame_index:06d}.png"
                write_png(out / "images" / seq / name, fr.image)
                write_png(out / "panoptic" / seq / name, encode_kitti_panoptic(fr.semantic, fr.instance))
                write_png(out / "depth" / seq / name, encode_kitti_depth(fr.depth))
                write_png(out / "motion" / seq / name, fr.extra["motion"].astype(np.uint8) * 255)
                if fr.flow is not None:
                    write_png(out / "flow" / seq / name, encode_kitti_flow(fr.flow, fr.flow_valid))
                poses.append(fr.extra["pose"].tolist())
                written += 1
                bar.update(1)
            _write_json(out / "calib" / f"{seq}.json", {"K": scene.K.tolist(), "poses": poses})
    finally:
        bar.close()
    summary = {
        "config": cfg.model_dump(mode="json"),
        "classes": {str(k): v for k, v in SYNTH_CLASSES.items()},
        "things": list(THING_CLASSES),
        "sequences": [f"{s:04d}" for s in range(cfg.sequences)],
        "frames": written,
    }
    _write_json(out / "synthdrive.json", summary)
    return summary


def _write_json(path: Path, data: dict) -> None:
    """Atomic JSON write (temp name, then rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=1))
    os.replace(tmp, path)
