"""Cityscapes-VPS / Cityscapes-DVPS reader and a prediction writer in the same encoding.

What is accepted (from the mcahny/vps ``docs/DATASET.md`` + ``prepare_city_vps`` scripts and
the Cityscapes-DVPS release notes):

- Images ``<stem>_leftImg8bit.png`` (or ``<stem>_newImg8bit.png``, as the VPS label
  scripts name the annotated frames) in ``DIR/img/``, ``DIR/img_all/`` or ``DIR/`` itself
  (the first of these holding images is used).
- ``<stem>`` is ``<video>_<frame>_<city>_<seq>_<cityframe>`` (VPS/DVPS: video and frame are
  the two leading numbers) or plain Cityscapes ``<city>_<seq>_<frame>`` (video =
  ``<city>_<seq>``).
- Labels next to the images or in ``panoptic_inst/``, ``panoptic/`` or ``labels/``, one of:

  * ``<stem>_gtFine_instanceTrainIds.png`` (DVPS) or ``<stem>_gtFine_panoptic.png``:
    single-channel 16-bit, ``trainId * 1000 + instance``; a value below 1000 is a bare class
    (stuff, crowd, void 255), see :func:`decode_cityscapes_panoptic`.
  * ``<stem>_final_mask.png`` (VPS ``panoptic_inst``): Cityscapes *label* IDs; a value below
    1000 is a bare class (stuff or crowd), otherwise ``labelId * 1000 + instance``. Label IDs
    are mapped to the 19 train IDs (others -> 255).

  A 3-channel ``_gtFine_panoptic.png`` is the COCO panoptic format, whose segment IDs mean
  nothing without its JSON file; it is refused with an error rather than misread.
- Depth (DVPS) ``<stem>_depth.png``: uint16, metres * 256, 0 invalid.

If any image has a label, every image must have one (VPS ``img_all/`` holds all 30 frames of
which only every fifth is labelled: point the reader at ``img/`` frames for evaluation).
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from videocups_ray.data.encodings import (
    CITYSCAPES_DIVISOR,
    decode_cityscapes_panoptic,
    decode_kitti_depth,
    read_image,
)
from videocups_ray.data.sources import VideoListSource, read_png_matching
from videocups_ray.data.types import DataError, Frame

IMAGE_SUFFIXES = ("_leftImg8bit.png", "_newImg8bit.png")
TRAIN_ID_SUFFIXES = ("_gtFine_instanceTrainIds.png", "_gtFine_panoptic.png")
LABEL_ID_SUFFIXES = ("_final_mask.png",)
DEPTH_SUFFIX = "_depth.png"
IMAGE_DIRS = ("img", "img_all", ".")
LABEL_DIRS = (".", "panoptic_inst", "panoptic", "labels")

# Cityscapes label ID -> train ID (cityscapesScripts helpers/labels.py); everything else is void.
_LABEL_TO_TRAIN = {7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10,
                   24: 11, 25: 12, 26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18}
LABEL_TO_TRAIN_LUT = np.full(256, 255, np.uint8)
for _label, _train in _LABEL_TO_TRAIN.items():
    LABEL_TO_TRAIN_LUT[_label] = _train

_VPS_STEM = re.compile(r"^(\d+)_(\d+)_.+$")
_CITY_STEM = re.compile(r"^(.+_\d{6})_(\d{6})$")


def parse_stem(stem: str, path: Path) -> tuple[str, int]:
    """(video_id, frame number) from a Cityscapes-VPS or plain Cityscapes file stem."""
    m = _VPS_STEM.match(stem)
    if m:
        return m.group(1), int(m.group(2))
    m = _CITY_STEM.match(stem)
    if m:
        return m.group(1), int(m.group(2))
    raise DataError(f"{path}: name does not follow <video>_<frame>_<city>_<seq>_<frame> "
                    "or <city>_<seq>_<frame>")


def decode_final_mask(png: np.ndarray, what: str) -> tuple[np.ndarray, np.ndarray]:
    """VPS ``final_mask``: label IDs, bare below 1000, else ``labelId * 1000 + instance``."""
    if png.ndim != 2:
        raise DataError(f"{what}: final_mask must be single-channel, got shape {png.shape}")
    v = png.astype(np.int64)
    is_instance = v >= CITYSCAPES_DIVISOR
    label_id = np.where(is_instance, v // CITYSCAPES_DIVISOR, v)
    if label_id.max(initial=0) > 255:
        raise DataError(f"{what}: label ID {int(label_id.max())} out of range")
    semantic = LABEL_TO_TRAIN_LUT[label_id.astype(np.uint8)]
    instance = np.where(is_instance, v % CITYSCAPES_DIVISOR, 0).astype(np.int32)
    instance[semantic == 255] = 0
    return semantic, instance


@dataclass
class _Item:
    frame_index: int
    stem: str
    image: Path
    label: Path | None
    depth: Path | None


class CityscapesVpsSource(VideoListSource):
    """Frames of a Cityscapes-VPS / DVPS split folder (see the module docstring)."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        if not self.root.is_dir():
            raise DataError(f"{self.root}: Cityscapes-VPS folder not found")
        image_dir, images = None, {}
        for sub in IMAGE_DIRS:
            d = self.root / sub
            if d.is_dir():
                images = {p.name[: -len(s)]: p for p in d.iterdir() for s in IMAGE_SUFFIXES
                          if p.name.endswith(s)}
                if images:
                    image_dir = d
                    break
        if image_dir is None:
            raise DataError(f"{self.root}: no *_leftImg8bit.png images in {', '.join(IMAGE_DIRS)}")
        labels, depths = self._find(LABEL_DIRS, TRAIN_ID_SUFFIXES + LABEL_ID_SUFFIXES), self._find(LABEL_DIRS, (DEPTH_SUFFIX,))
        self.has_labels = bool(labels)
        self._videos: dict[str, list[_Item]] = {}
        for stem, path in images.items():
            if self.has_labels and stem not in labels:
                raise DataError(f"{path}: no label file ({' / '.join(TRAIN_ID_SUFFIXES + LABEL_ID_SUFFIXES)}) "
                                f"for this image in {self.root}")
            vid, idx = parse_stem(stem, path)
            self._videos.setdefault(vid, []).append(_Item(idx, stem, path, labels.get(stem), depths.get(stem)))
        for vid, items in self._videos.items():
            items.sort(key=lambda it: it.frame_index)
            seen = [it.frame_index for it in items]
            if len(set(seen)) != len(seen):
                dup = next(it for it in items if seen.count(it.frame_index) > 1)
                raise DataError(f"{dup.image}: video {vid!r} has frame {dup.frame_index} more than once")

    def __repr__(self) -> str:
        return f"CityscapesVpsSource({str(self.root)!r})"

    def _find(self, dirs: tuple[str, ...], suffixes: tuple[str, ...]) -> dict[str, Path]:
        found: dict[str, Path] = {}
        for sub in dirs:
            d = self.root / sub
            if not d.is_dir():
                continue
            for p in d.iterdir():
                for s in suffixes:
                    if p.name.endswith(s):
                        stem = p.name[: -len(s)]
                        if stem in found and found[stem] != p:
                            raise DataError(f"{p}: second file for frame {stem!r} (first: {found[stem]})")
                        found[stem] = p
        return found

    def frames(self, video_id: str, start: int = 0, stop: int | None = None) -> Iterator[Frame]:
        for _, item in self._items(video_id, start, stop, str(self.root)):
            yield self._read(video_id, item)

    def _read(self, video_id: str, item: _Item) -> Frame:
        frame = Frame(video_id=video_id, frame_index=item.frame_index, image=read_image(item.image),
                      extra={"stem": item.stem})
        if item.label is not None:
            png = read_png_matching(item.label, frame.image.shape, item.image)
            if item.label.name.endswith(LABEL_ID_SUFFIXES):
                frame.semantic, frame.instance = decode_final_mask(png, str(item.label))
            elif png.ndim == 3:
                raise DataError(f"{item.label}: 3-channel panoptic PNG is COCO format (needs its JSON "
                                "segments_info); convert it to trainId * 1000 + instance first")
            else:
                frame.semantic, frame.instance = decode_cityscapes_panoptic(png, str(item.label))
        if item.depth is not None:
            png = read_png_matching(item.depth, frame.image.shape, item.image)
            frame.depth = decode_kitti_depth(png, str(item.depth))
        return frame
