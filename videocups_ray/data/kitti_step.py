"""KITTI-STEP layout reader (with SynthDrive's extra ground truth); predictions in this
encoding are written and read by :mod:`videocups_ray.data.predictions`.

Accepted layouts (``<f>`` = six-digit frame number, ``<seq>`` = sequence folder):

- multi-sequence: ``DIR/images/<seq>/<f>.png`` + ``DIR/panoptic/<seq>/<f>.png``
  (``panoptic_maps/`` is accepted too, as in the KITTI-STEP release; pass ``split="train"``
  for ``images/train/<seq>``);
- single sequence: ``DIR/images/<f>.png`` + ``DIR/panoptic/<f>.png``; the video ID is the
  folder name (``/work/shared/data/kitti_step_0001`` reads as video ``kitti_step_0001``).

Optional per-sequence ground truth, next to ``images`` with the same sub-structure:
``depth/`` (uint16, metres * 256, 0 invalid), ``flow/`` (KITTI flow PNG, forward t -> t+1; the
last frame has none), ``motion/`` (8-bit, non-zero = independently moving), and calibration
``calib/<seq>.json`` (single sequence: ``calib.json``) holding ``"K"`` (3x3) and ``"poses"``
(one 4x4 camera-to-world matrix per frame). When one of these folders exists for a sequence,
every frame must have its file: a gap is an error, not a frame without ground truth.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from videocups_ray.data.encodings import (
    decode_kitti_depth,
    decode_kitti_flow,
    decode_kitti_panoptic,
    read_image,
    read_png,
)
from videocups_ray.data.sources import FrameSource, check_same_size, read_png_matching
from videocups_ray.data.types import DataError, Frame

LABEL_DIRS = ("panoptic", "panoptic_maps")
EXTRA_DIRS = ("depth", "flow", "motion")


def _frame_number(path: Path) -> int:
    try:
        return int(path.stem)
    except ValueError:
        raise DataError(f"{path}: KITTI-STEP frame files must be named <frame number>.png") from None


def _png_files(folder: Path) -> dict[int, Path]:
    files = {}
    for p in folder.iterdir():
        if p.is_file() and p.suffix.lower() == ".png":
            files[_frame_number(p)] = p
    return files


@dataclass
class _Sequence:
    images: list[Path]  # sorted by frame number
    indices: list[int]
    labels: list[Path] | None
    extras: dict[str, dict[int, Path]]  # name -> frame number -> file
    K: np.ndarray | None
    poses: np.ndarray | None


class KittiStepSource(FrameSource):
    """Frames of a KITTI-STEP style folder (also SynthDrive's export)."""

    def __init__(self, root: str | os.PathLike, split: str | None = None):
        self.root = Path(root)
        if not self.root.is_dir():
            raise DataError(f"{self.root}: KITTI-STEP folder not found")
        meta_file = self.root / "synthdrive.json"
        self.meta: dict = json.loads(meta_file.read_text()) if meta_file.is_file() else {}
        images_dir = self.root / "images" / (split or "")
        if not images_dir.is_dir():
            raise DataError(f"{images_dir}: images folder not found")
        label_root = next((self.root / d / (split or "") for d in LABEL_DIRS
                           if (self.root / d / (split or "")).is_dir()), None)
        self.has_labels = label_root is not None
        seq_dirs = sorted(p for p in images_dir.iterdir() if p.is_dir())
        if seq_dirs and _png_files(images_dir):
            raise DataError(f"{images_dir}: holds both sequence folders and PNG frames; use one layout")
        if seq_dirs:
            layout = {p.name: p.relative_to(images_dir) for p in seq_dirs}
        elif _png_files(images_dir):
            layout = {self.root.name: Path(".")}
        else:
            raise DataError(f"{images_dir}: no sequence folders and no PNG frames")
        self._seqs = {vid: self._index(vid, images_dir / rel, label_root, split, rel, single=not seq_dirs)
                      for vid, rel in layout.items()}

    def __repr__(self) -> str:
        return f"KittiStepSource({str(self.root)!r})"

    # ----------------------------------------------------------------- indexing
    def _index(self, vid: str, image_dir: Path, label_root: Path | None, split: str | None,
               rel: Path, single: bool) -> _Sequence:
        images = _png_files(image_dir)
        if not images:
            raise DataError(f"{image_dir}: sequence {vid!r} has no PNG frames")
        indices = sorted(images)
        labels = None
        if label_root is not None:
            label_dir = label_root / rel
            if not label_dir.is_dir():
                raise DataError(f"{label_dir}: label folder missing for sequence {vid!r}")
            found = _png_files(label_dir)
            missing = [i for i in indices if i not in found]
            if missing:
                raise DataError(f"{label_dir / f'{missing[0]:06d}.png'}: label file missing for image "
                                f"{images[missing[0]]} ({len(missing)} missing in sequence {vid!r})")
            orphans = sorted(set(found) - set(images))
            if orphans:
                raise DataError(f"{found[orphans[0]]}: label without an image in {image_dir}")
            labels = [found[i] for i in indices]
        extras: dict[str, dict[int, Path]] = {}
        for name in EXTRA_DIRS:
            folder = self.root / name / (split or "") / rel
            if not folder.is_dir():
                continue
            found = _png_files(folder)
            # Forward flow has no target for the last frame.
            needed = indices[:-1] if name == "flow" else indices
            missing = [i for i in needed if i not in found]
            if missing:
                raise DataError(f"{folder / f'{missing[0]:06d}.png'}: {name} file missing "
                                f"({len(missing)} missing in sequence {vid!r})")
            extras[name] = found
        K, poses = self._calib(vid, single, split, len(indices))
        return _Sequence([images[i] for i in indices], indices, labels, extras, K, poses)

    def _calib(self, vid: str, single: bool, split: str | None, n: int) -> tuple[np.ndarray | None, np.ndarray | None]:
        base = self.root / "calib" / (split or "")
        path = self.root / "calib.json" if single else base / f"{vid}.json"
        if single and not path.is_file():
            path = base / f"{vid}.json"
        if not path.is_file():
            return None, None
        try:
            data = json.loads(path.read_text())
            K = np.asarray(data["K"], dtype=np.float64)
            poses = np.asarray(data["poses"], dtype=np.float64) if "poses" in data else None
        except (json.JSONDecodeError, KeyError, ValueError, TypeError) as exc:
            raise DataError(f"{path}: invalid calibration file ({type(exc).__name__}: {exc})") from None
        if K.shape != (3, 3):
            raise DataError(f"{path}: K must be 3x3, got shape {K.shape}")
        if poses is not None and poses.shape != (n, 4, 4):
            raise DataError(f"{path}: poses must have shape ({n}, 4, 4) for {n} frames, got {poses.shape}")
        return K, poses

    # ----------------------------------------------------------------- FrameSource
    def videos(self) -> list[str]:
        return sorted(self._seqs)

    def num_frames(self, video_id: str) -> int:
        self._check_video(video_id, self._seqs)
        return len(self._seqs[video_id].images)

    def frames(self, video_id: str, start: int = 0, stop: int | None = None) -> Iterator[Frame]:
        self._check_video(video_id, self._seqs)
        seq = self._seqs[video_id]
        for pos in self._range(len(seq.images), start, stop, f"{self.root} video {video_id!r}"):
            yield self._read(video_id, seq, pos)

    def _read(self, video_id: str, seq: _Sequence, pos: int) -> Frame:
        image_path, index = seq.images[pos], seq.indices[pos]
        frame = Frame(video_id=video_id, frame_index=index, image=read_image(image_path))
        if seq.labels is not None:
            label_path = seq.labels[pos]
            rgb = read_png_matching(label_path, frame.image.shape, image_path)
            frame.semantic, frame.instance = decode_kitti_panoptic(rgb, str(label_path))
        if "depth" in seq.extras:
            path = seq.extras["depth"][index]
            png = read_png_matching(path, frame.image.shape, image_path)
            frame.depth = decode_kitti_depth(png, str(path))
        if "flow" in seq.extras and index in seq.extras["flow"]:
            path = seq.extras["flow"][index]
            png = read_png_matching(path, frame.image.shape, image_path)
            frame.flow, frame.flow_valid = decode_kitti_flow(png, str(path))
        if "motion" in seq.extras:
            path = seq.extras["motion"][index]
            png = read_png(path)
            if png.ndim != 2:
                raise DataError(f"{path}: motion mask must be single-channel, got shape {png.shape}")
            check_same_size(png.shape, frame.image.shape, path, image_path)
            frame.extra["motion"] = png > 0
        if seq.K is not None:
            frame.extra["K"] = seq.K.copy()
        if seq.poses is not None:
            frame.extra["pose"] = seq.poses[pos].copy()
        return frame
