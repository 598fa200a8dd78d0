"""KITTI-MOTS and MOTSChallenge (MOTS20): reader of both annotation formats, and a PNG writer.

The formats, as the benchmark's own tooling (``mots_tools``, TrackEval) defines them:

- text: one line per object and frame, ``<frame> <id> <class_id> <height> <width> <rle>``,
  where ``rle`` is a COCO compressed run-length string (column-major, as pycocotools
  writes it), ``id = class_id * 1000 + instance``, class 1 = car, 2 = pedestrian, and
  class 10 (id 10000) marks ignore regions. Masks of one frame do not overlap.
- PNG: one 16-bit PNG per frame with the same ids per pixel, 0 = background, 10000 = ignore.

Layouts:

- KITTI-MOTS: ``DIR/instances_txt/<seq>.txt`` or ``DIR/instances/<seq>/<frame:06d>.png``;
  images in ``DIR/image_02/<seq>/`` or ``DIR/images/<seq>/`` (optional).
- MOTSChallenge: ``DIR/<seq>/gt/gt.txt`` with images in ``DIR/<seq>/img1/`` (frames numbered
  from 1, as the files are).

Frames are panoptic in Cityscapes train IDs, as the paper evaluates MOTS: car -> 13,
pedestrian -> 11, instance = ``id % 1000``; everything else (background, ignore regions) is
void (255), so only the annotated classes are scored. Without images the frames are the
ones the annotation lists (a text file has no line for a frame without objects).
RLE strings are decoded with pycocotools (the COCO reference implementation).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from videocups_ray.data.encodings import read_image, read_png, write_png
from videocups_ray.data.predictions import no_image
from videocups_ray.data.sources import IMAGE_EXTENSIONS, VideoListSource, check_same_size
from videocups_ray.data.types import DataError, Frame

MOTS_DIVISOR = 1000
MOTS_IGNORE_CLASS = 10
#: MOTS class -> Cityscapes train ID (1 car -> 13 car, 2 pedestrian -> 11 person).
MOTS_TO_TRAIN = {1: 13, 2: 11}
TRAIN_TO_MOTS = {v: k for k, v in MOTS_TO_TRAIN.items()}
IMAGE_DIRS = ("image_02", "images")


def looks_like_mots(root: Path) -> bool:
    """KITTI-MOTS ``instances_txt/`` / ``instances/``, or MOTSChallenge ``<seq>/gt/gt.txt``."""
    if (root / "instances_txt").is_dir() or (root / "instances").is_dir():
        return True
    return any((d / "gt" / "gt.txt").is_file() for d in root.iterdir() if d.is_dir())


@dataclass
class _Object:
    track_id: int
    class_id: int
    height: int
    width: int
    rle: str
    line: str  # "file:lineno" for errors


@dataclass
class _Item:
    frame_index: int
    image: Path | None
    label: Path | None = None  # PNG format
    objects: list[_Object] = field(default_factory=list)  # text format


def read_mots_txt(path: Path) -> dict[int, list[_Object]]:
    """Objects per frame of a MOTS text file; DataError names the line of a malformed entry."""
    frames: dict[int, list[_Object]] = {}
    for lineno, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split(" ")
        where = f"{path}:{lineno}"
        if len(parts) != 6:
            raise DataError(f"{where}: expected 'frame id class_id height width rle', got {len(parts)} fields")
        try:
            frame, track, cls, h, w = (int(v) for v in parts[:5])
        except ValueError:
            raise DataError(f"{where}: frame, id, class, height and width must be integers") from None
        if cls != MOTS_IGNORE_CLASS and track // MOTS_DIVISOR != cls:
            raise DataError(f"{where}: id {track} does not encode class {cls} (id = class * 1000 + instance)")
        frames.setdefault(frame, []).append(_Object(track, cls, h, w, parts[5], where))
    return frames


def decode_objects(objects: list[_Object], what: str) -> tuple[np.ndarray, np.ndarray]:
    """(semantic, instance) of one frame's objects, decoded with pycocotools."""
    from pycocotools import mask as coco_mask

    h, w = objects[0].height, objects[0].width
    semantic = np.full((h, w), 255, np.uint8)
    instance = np.zeros((h, w), np.int32)
    taken = np.zeros((h, w), bool)
    for obj in objects:
        if (obj.height, obj.width) != (h, w):
            raise DataError(f"{obj.line}: size {obj.width}x{obj.height} differs from the frame's other objects")
        try:
            m = coco_mask.decode({"size": [h, w], "counts": obj.rle.encode("ascii")}).astype(bool)
        except (ValueError, TypeError, UnicodeError) as exc:
            raise DataError(f"{obj.line}: bad RLE string ({exc})") from None
        if (m & taken).any():
            raise DataError(f"{obj.line}: mask of id {obj.track_id} overlaps another mask of {what}")
        taken |= m
        if obj.class_id in MOTS_TO_TRAIN:
            semantic[m] = MOTS_TO_TRAIN[obj.class_id]
            instance[m] = obj.track_id % MOTS_DIVISOR
        elif obj.class_id != MOTS_IGNORE_CLASS:
            raise DataError(f"{obj.line}: unknown MOTS class {obj.class_id} (1 car, 2 pedestrian, 10 ignore)")
    return semantic, instance


def decode_mots_png(png: np.ndarray, what: str) -> tuple[np.ndarray, np.ndarray]:
    """(semantic, instance) of a MOTS PNG (``class * 1000 + instance``, 0 background, 10000 ignore)."""
    if png.ndim != 2:
        raise DataError(f"{what}: MOTS PNG must be single-channel, got shape {png.shape}")
    v = png.astype(np.int64)
    cls = v // MOTS_DIVISOR
    bad = ~np.isin(cls, (0, MOTS_IGNORE_CLASS, *MOTS_TO_TRAIN))
    if bad.any():
        raise DataError(f"{what}: unknown MOTS class {int(cls[bad][0])} (1 car, 2 pedestrian, 10 ignore)")
    lut = np.full(MOTS_IGNORE_CLASS + 1, 255, np.uint8)
    for k, t in MOTS_TO_TRAIN.items():
        lut[k] = t
    semantic = lut[cls]
    instance = np.where(semantic != 255, v % MOTS_DIVISOR, 0).astype(np.int32)
    return semantic, instance


def encode_mots_png(semantic: np.ndarray, instance: np.ndarray) -> np.ndarray:
    """Inverse of :func:`decode_mots_png` for frames holding only car, person and void."""
    semantic, instance = np.asarray(semantic), np.asarray(instance)
    if semantic.shape != instance.shape:
        raise ValueError(f"semantic {semantic.shape} and instance {instance.shape} differ")
    allowed = (*TRAIN_TO_MOTS, 255)
    bad = ~np.isin(semantic, allowed)
    if bad.any():
        raise ValueError(f"MOTS holds only classes {sorted(TRAIN_TO_MOTS)} and void 255, got {int(semantic[bad][0])}")
    if instance.min(initial=0) < 0 or instance.max(initial=0) >= MOTS_DIVISOR:
        raise ValueError("MOTS instance IDs must lie in [0, 999]")
    if (instance[semantic == 255] != 0).any():
        raise ValueError("MOTS void pixels cannot carry instance IDs")
    lut = np.zeros(256, np.int64)
    for t, k in TRAIN_TO_MOTS.items():
        lut[t] = k
    return (lut[semantic] * MOTS_DIVISOR + np.where(semantic != 255, instance, 0)).astype(np.uint16)


def write_mots_png_prediction(out_dir: str | os.PathLike, video_id: str, frame_index: int,
                              semantic: np.ndarray, instance: np.ndarray) -> Path:
    """``out_dir/instances/<video>/<frame:06d>.png`` in the MOTS PNG format (atomic write)."""
    path = Path(out_dir) / "instances" / str(video_id) / f"{int(frame_index):06d}.png"
    try:
        png = encode_mots_png(semantic, instance)
    except ValueError as exc:
        raise DataError(f"{path}: cannot encode prediction for {video_id!r} frame {frame_index}: {exc}") from None
    write_png(path, png)
    return path


def _numbered(folder: Path, suffixes: tuple[str, ...]) -> dict[int, Path]:
    out = {}
    for p in folder.iterdir():
        if p.is_file() and p.suffix.lower() in suffixes:
            if not p.stem.isdigit():
                raise DataError(f"{p}: MOTS frame files are named <frame number>{p.suffix}")
            out[int(p.stem)] = p
    return out


class MotsSource(VideoListSource):
    """Frames of a KITTI-MOTS or MOTSChallenge folder (see the module docstring)."""

    has_labels = True

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        if not self.root.is_dir():
            raise DataError(f"{self.root}: MOTS folder not found")
        self._videos: dict[str, list[_Item]] = {}
        if (self.root / "instances_txt").is_dir():
            for txt in sorted((self.root / "instances_txt").glob("*.txt")):
                self._add_txt(txt.stem, txt, self._kitti_images(txt.stem))
        elif (self.root / "instances").is_dir():
            for seq in sorted(d for d in (self.root / "instances").iterdir() if d.is_dir()):
                self._add_png(seq.name, seq, self._kitti_images(seq.name))
        else:
            for seq in sorted(d for d in self.root.iterdir() if (d / "gt" / "gt.txt").is_file()):
                img = seq / "img1"
                images = _numbered(img, IMAGE_EXTENSIONS) if img.is_dir() else None
                self._add_txt(seq.name, seq / "gt" / "gt.txt", images)
        if not self._videos:
            raise DataError(f"{self.root}: no MOTS sequences (instances_txt/*.txt, instances/<seq>/, <seq>/gt/gt.txt)")

    def __repr__(self) -> str:
        return f"MotsSource({str(self.root)!r})"

    def _kitti_images(self, seq: str) -> dict[int, Path] | None:
        for d in IMAGE_DIRS:
            folder = self.root / d / seq
            if folder.is_dir():
                return _numbered(folder, IMAGE_EXTENSIONS)
        return None

    def _add_txt(self, seq: str, txt: Path, images: dict[int, Path] | None) -> None:
        objects = read_mots_txt(txt)
        if images is None:
            indices = sorted(objects)
        else:
            orphans = sorted(set(objects) - set(images))
            if orphans:
                raise DataError(f"{txt}: frame {orphans[0]} is annotated but has no image")
            indices = sorted(images)
        self._videos[seq] = [_Item(i, images[i] if images else None, objects=objects.get(i, []))
                             for i in indices]

    def _add_png(self, seq: str, folder: Path, images: dict[int, Path] | None) -> None:
        labels = _numbered(folder, (".png",))
        if images is not None:
            missing = sorted(set(images) - set(labels))
            if missing:
                raise DataError(f"{folder / f'{missing[0]:06d}.png'}: label missing for image {images[missing[0]]}")
        self._videos[seq] = [_Item(i, images[i] if images else None, label=labels[i]) for i in sorted(labels)]

    def frames(self, video_id: str, start: int = 0, stop: int | None = None) -> Iterator[Frame]:
        for _, item in self._items(video_id, start, stop, str(self.root)):
            image = read_image(item.image) if item.image is not None else None
            what = f"{self.root} video {video_id!r} frame {item.frame_index}"
            if item.label is not None:
                semantic, instance = decode_mots_png(read_png(item.label), str(item.label))
                label_path = item.label
            elif item.objects:
                semantic, instance = decode_objects(item.objects, what)
                label_path = Path(item.objects[0].line)
            elif image is not None:  # no object in this frame: all void
                semantic = np.full(image.shape[:2], 255, np.uint8)
                instance = np.zeros(image.shape[:2], np.int32)
                label_path = item.image
            else:
                raise DataError(f"{what}: no annotation and no image to take the size from")
            if image is not None:
                check_same_size(semantic.shape, image.shape, label_path, item.image)
            yield Frame(video_id=video_id, frame_index=item.frame_index,
                        image=image if image is not None else no_image(semantic.shape),
                        semantic=semantic, instance=instance)
