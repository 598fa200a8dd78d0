"""Evaluation pipeline: STQ / AQ / SQ and VPQ of predicted frames against ground truth,
optionally after the unsupervised cluster-to-class matching.

Inputs are two sources of :class:`~videocups_ray.data.types.Frame` (``semantic`` +
``instance`` set), matched by ``(video_id, frame_index)``. A source is an iterable of frames
or a callable returning a fresh iterable. Ground-truth frames must come in temporal order
per video (videos may interleave); prediction frames may come in any order (ones not yet
needed are buffered, so the same order as the ground truth keeps memory flat).

Unsupervised evaluation needs two passes (fit the matching, then score). A callable or a
list/tuple source is simply iterated twice; a one-shot iterator is read once and the label
maps of the matched pairs are held zlib-compressed in memory (about 20-40 KB per KITTI frame)
for the second pass.
"""

from __future__ import annotations

import logging
import re
import zlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np

from videocups_ray.config import EvalConfig
from videocups_ray.data.encodings import (
    decode_cityscapes_panoptic,
    decode_kitti_panoptic,
    read_png,
)
from videocups_ray.data.types import DataError, Frame, UnknownFormatError
from videocups_ray.metrics import STQ, VPQ, UnsupervisedMatcher

log = logging.getLogger(__name__)

FrameSource = Iterable[Frame] | Callable[[], Iterable[Frame]]
LabelFormat = Literal["kitti-step", "cityscapes-vps"]

CITYSCAPES_CLASS_NAMES = (
    "road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign",
    "vegetation", "terrain", "sky", "person", "rider", "car", "truck", "bus", "train",
    "motorcycle", "bicycle",
)


# --------------------------------------------------------------------------- pairing
def _iterate(source: FrameSource) -> Iterator[Frame]:
    return iter(source() if callable(source) else source)


def _key(frame: Frame) -> tuple[str, int]:
    return str(frame.video_id), int(frame.frame_index)


def paired_frames(gt_frames: Iterable[Frame], pred_frames: Iterable[Frame]) -> Iterator[tuple[Frame, Frame]]:
    """Yield ``(gt, pred)`` for every ground-truth frame, in ground-truth order.

    Raises :class:`DataError` for a ground-truth frame without a prediction or a duplicate
    key. Prediction frames without ground truth are skipped with one warning giving their count.
    """
    pending: dict[tuple[str, int], Frame] = {}
    preds = iter(pred_frames)
    pred_videos: set[str] = set()
    seen_gt: set[tuple[str, int]] = set()
    exhausted = False
    for gt in gt_frames:
        key = _key(gt)
        if key in seen_gt:
            raise DataError(f"video {key[0]!r} frame {key[1]}: ground-truth frame given twice")
        seen_gt.add(key)
        while key not in pending and not exhausted:
            try:
                pred = next(preds)
            except StopIteration:
                exhausted = True
                break
            pkey = _key(pred)
            if pkey in pending:
                raise DataError(f"video {pkey[0]!r} frame {pkey[1]}: prediction frame given twice")
            pending[pkey] = pred
            pred_videos.add(pkey[0])
        if key not in pending:
            shown = sorted(pred_videos)[:5]
            raise DataError(f"video {key[0]!r} frame {key[1]}: no prediction frame for this ground-truth "
                            f"frame (prediction videos: {shown}{' ...' if len(pred_videos) > 5 else ''})")
        yield gt, pending.pop(key)
    extra = len(pending) + sum(1 for _ in preds)
    if extra:
        log.warning("%d prediction frame(s) have no ground-truth frame and were not evaluated", extra)


def _panoptic(frame: Frame, label_divisor: int, what: str) -> np.ndarray:
    where = f"{what} video {frame.video_id!r} frame {frame.frame_index}"
    if frame.semantic is None or frame.instance is None:
        raise DataError(f"{where}: no semantic/instance labels")
    if frame.semantic.shape != frame.instance.shape:
        raise DataError(f"{where}: semantic {frame.semantic.shape} and instance {frame.instance.shape} differ")
    inst = frame.instance
    if inst.size and (int(inst.min()) < 0 or int(inst.max()) >= label_divisor):
        raise DataError(f"{where}: instance IDs must be in [0, label_divisor={label_divisor}), "
                        f"got range [{int(inst.min())}, {int(inst.max())}]")
    if frame.semantic.size and int(frame.semantic.min()) < 0:
        raise DataError(f"{where}: negative semantic class {int(frame.semantic.min())}")
    return frame.panoptic(label_divisor)


# --------------------------------------------------------------------------- compact cache
class _Packed:
    """A label map held zlib-compressed in its smallest integer dtype."""

    __slots__ = ("data", "dtype", "shape")

    def __init__(self, arr: np.ndarray):
        hi = int(arr.max(initial=0))
        self.dtype = np.min_scalar_type(hi)
        self.shape = arr.shape
        self.data = zlib.compress(np.ascontiguousarray(arr.astype(self.dtype)).tobytes(), 1)

    def unpack(self) -> np.ndarray:
        return np.frombuffer(zlib.decompress(self.data), self.dtype).reshape(self.shape).astype(np.int64)


# --------------------------------------------------------------------------- evaluate
def _metrics(cfg: EvalConfig) -> tuple[STQ, VPQ]:
    common = dict(num_classes=cfg.num_classes, things=cfg.things, ignore_label=cfg.ignore_label,
                  label_divisor=cfg.label_divisor)
    return STQ(**common), VPQ(**common, window_sizes=cfg.window_sizes)


def _is_reiterable(source: FrameSource) -> bool:
    return callable(source) or isinstance(source, Sequence)


def evaluate(gt_frames: FrameSource, pred_frames: FrameSource, *, cfg: EvalConfig,
             unsupervised: bool = False) -> dict[str, Any]:
    """Score predictions against ground truth; returns a JSON-able dict.

    Keys: ``STQ``, ``AQ``, ``SQ``, ``VPQ``, ``VPQ_thing``, ``VPQ_stuff`` (fractions in [0, 1];
    a VPQ value is None when no class has any segment), ``per_sequence`` (video id ->
    STQ/AQ/SQ/num_frames/num_tracks), ``per_class_iou`` (list over classes, None where a class
    is absent), ``per_window`` (window size -> PQ/PQ_thing/PQ_stuff/SQ/RQ/num_windows/per_class),
    ``num_frames``, ``num_tracks``, ``config`` and, when ``unsupervised``, ``mapping``.
    """
    div = cfg.label_divisor
    stq, vpq = _metrics(cfg)
    matcher: UnsupervisedMatcher | None = None
    cache: list[tuple[str, int, _Packed, _Packed]] | None = None

    if unsupervised:
        matcher = UnsupervisedMatcher(cfg.num_classes, cfg.things, cfg.ignore_label, div)
        keep = not (_is_reiterable(gt_frames) and _is_reiterable(pred_frames))
        cache = [] if keep else None
        for gt, pred in paired_frames(_iterate(gt_frames), _iterate(pred_frames)):
            g, p = _panoptic(gt, div, "ground truth"), _panoptic(pred, div, "prediction")
            matcher.update_panoptic(g, p, where=f"video {gt.video_id!r} frame {gt.frame_index}")
            if cache is not None:
                cache.append((str(gt.video_id), int(gt.frame_index), _Packed(g), _Packed(p)))
        mapping = matcher.fit()
        log.info("unsupervised matching: %d Hungarian, %d majority, %d void-only pseudo-classes",
                 len(mapping.hungarian), len(mapping.majority), len(mapping.unmatched))

    def scored_pairs() -> Iterator[tuple[str, int, np.ndarray, np.ndarray]]:
        if cache is not None:
            for video, index, g, p in cache:
                yield video, index, g.unpack(), p.unpack()
            return
        for gt, pred in paired_frames(_iterate(gt_frames), _iterate(pred_frames)):
            yield (str(gt.video_id), int(gt.frame_index),
                   _panoptic(gt, div, "ground truth"), _panoptic(pred, div, "prediction"))

    num_frames = 0
    for video, index, g, p in scored_pairs():
        if matcher is not None:
            p = matcher.apply(p, where=f"video {video!r} frame {index}")
        stq.update(g, p, video, frame_index=index)
        vpq.update(g, p, video, frame_index=index)
        num_frames += 1
    if num_frames == 0:
        raise DataError("no ground-truth frames to evaluate")

    s, v = stq.result(), vpq.result()
    result: dict[str, Any] = {
        "STQ": s["STQ"], "AQ": s["AQ"], "SQ": s["SQ"],
        "VPQ": v["VPQ"], "VPQ_thing": v["VPQ_thing"], "VPQ_stuff": v["VPQ_stuff"],
        "per_sequence": {str(k): val for k, val in s["per_sequence"].items()},
        "per_class_iou": s["per_class_iou"],
        "per_window": v["per_window"],
        "num_frames": num_frames, "num_tracks": s["num_tracks"],
        "config": {"num_classes": cfg.num_classes, "things": list(cfg.things),
                   "ignore_label": cfg.ignore_label, "label_divisor": div,
                   "window_sizes": list(cfg.window_sizes), "unsupervised": unsupervised},
    }
    if matcher is not None and matcher.mapping is not None:
        result["mapping"] = matcher.mapping.to_dict()
    return result


# --------------------------------------------------------------------------- report
def _fmt(value: float | None, width: int = 7) -> str:
    return f"{100 * value:{width}.1f}" if value is not None else f"{'-':>{width}}"


def format_report(result: dict[str, Any]) -> str:
    """A readable table of an :func:`evaluate` result (values in percent)."""
    names = CITYSCAPES_CLASS_NAMES if len(result["per_class_iou"]) == len(CITYSCAPES_CLASS_NAMES) else ()
    lines = [f"frames {result['num_frames']}, GT tracks {result.get('num_tracks', '-')}",
             f"{'':12s}{'STQ':>7s}{'AQ':>7s}{'SQ':>7s}{'VPQ':>7s}",
             f"{'all':12s}{_fmt(result['STQ'])}{_fmt(result['AQ'])}{_fmt(result['SQ'])}{_fmt(result['VPQ'])}",
             "", "per sequence", f"{'video':16s}{'frames':>7s}{'STQ':>7s}{'AQ':>7s}{'SQ':>7s}"]
    for video, r in result["per_sequence"].items():
        lines.append(f"{video[:16]:16s}{r['num_frames']:7d}{_fmt(r['STQ'])}{_fmt(r['AQ'])}{_fmt(r['SQ'])}")
    lines += ["", "VPQ per window", f"{'frames':12s}{'PQ':>7s}{'thing':>7s}{'stuff':>7s}{'SQ':>7s}{'RQ':>7s}{'windows':>8s}"]
    for n, w in result["per_window"].items():
        lines.append(f"{str(n):12s}{_fmt(w['PQ'])}{_fmt(w['PQ_thing'])}{_fmt(w['PQ_stuff'])}"
                     f"{_fmt(w['SQ'])}{_fmt(w['RQ'])}{w['num_windows']:8d}")
    lines += ["", "IoU per class", f"{'class':18s}{'IoU':>7s}"]
    for c, iou in enumerate(result["per_class_iou"]):
        if iou is not None:
            label = f"{c} {names[c]}" if names else str(c)
            lines.append(f"{label[:18]:18s}{_fmt(iou)}")
    mapping = result.get("mapping")
    if mapping:
        lines += ["", "pseudo-class -> GT class (H = Hungarian, M = majority, V = void only)"]
        kind = {**{p: "H" for p in mapping["hungarian"]}, **{p: "M" for p in mapping["majority"]},
                **{p: "V" for p in mapping["unmatched"]}}
        entries = [f"{p}->{g}{kind.get(int(p), '?')}" for p, g in mapping["pseudo_to_gt"].items()]
        lines += ["  " + " ".join(entries[i:i + 10]) for i in range(0, len(entries), 10)]
    return "\n".join(lines)


# --------------------------------------------------------------------------- label folders
_CITYSCAPES_VPS_NAME = re.compile(r"^(\d+)_(\d+)_")


def _frame_key(path: Path, video: str, fmt: str, nested: bool) -> tuple[str, int]:
    stem = path.stem
    if stem.isdigit():
        return video, int(stem)
    m = _CITYSCAPES_VPS_NAME.match(stem) if fmt == "cityscapes-vps" else None
    if m:
        return (video if nested else m.group(1)), int(m.group(2))
    expected = "<frame>.png" + (" or <video>_<frame>_*.png" if fmt == "cityscapes-vps" else "")
    raise DataError(f"{path}: cannot read a frame index from the file name (expected {expected})")


def _label_files(root: Path, fmt: str) -> list[tuple[str, int, Path]]:
    label_dirs = [root / d for d in ("panoptic", "panoptic_maps") if (root / d).is_dir()]
    base = label_dirs[0] if label_dirs else root
    if not base.is_dir():
        raise DataError(f"{root}: label folder not found")
    flat = sorted(base.glob("*.png"))
    subdirs = sorted(d for d in base.iterdir() if d.is_dir() and any(d.glob("*.png")))
    if flat and subdirs:
        raise DataError(f"{base}: holds both label PNGs and sequence folders; use one layout")
    if subdirs:
        files = [(*_frame_key(f, d.name, fmt, True), f) for d in subdirs for f in sorted(d.glob("*.png"))]
    else:
        # Single-sequence layout: the video ID is the dataset folder's name, as the KITTI-STEP
        # reader (data/kitti_step.py) names it, so pipeline predictions written under
        # panoptic/<video_id>/ pair with it (Cityscapes-VPS names carry their own video ID).
        name = root.parent.name if base == root and root.name in ("panoptic", "panoptic_maps") else root.name
        files = [(*_frame_key(f, name, fmt, False), f) for f in flat]
    if not files:
        raise DataError(f"{base}: no label PNGs found (expected panoptic/<seq>/<frame>.png or panoptic/*.png)")
    files.sort(key=lambda t: (t[0], t[1]))
    for (v0, i0, f0), (v1, i1, f1) in zip(files, files[1:]):
        if (v0, i0) == (v1, i1):
            raise DataError(f"{f1}: video {v1!r} frame {i1} also given by {f0}")
    return files


def load_label_dir(path: str | Path, format: LabelFormat) -> Iterator[Frame]:  # noqa: A002 (CLI name)
    """Frames with panoptic labels from a folder, sorted by (video, frame).

    Layouts: ``DIR/panoptic/<seq>/<frame:06d>.png`` or single-sequence ``DIR/panoptic/*.png``
    (``DIR`` itself may be the ``panoptic`` folder). ``kitti-step``: RGB PNG, R = class,
    instance = G * 256 + B. ``cityscapes-vps``: 16-bit ``trainId * 1000 + instance``; flat files
    may be named ``<video>_<frame>_*.png``. Frames carry no image (a zero-size-in-memory view).
    """
    if format not in ("kitti-step", "cityscapes-vps"):
        raise UnknownFormatError(f"unknown label format {format!r}; known: kitti-step, cityscapes-vps")
    decode = decode_kitti_panoptic if format == "kitti-step" else decode_cityscapes_panoptic
    for video, index, f in _label_files(Path(path), format):
        semantic, instance = decode(read_png(f), what=str(f))
        image = np.broadcast_to(np.zeros((1, 1, 3), np.uint8), (*semantic.shape, 3))
        yield Frame(video_id=video, frame_index=index, image=image, semantic=semantic, instance=instance)


def evaluate_paths(gt: str | Path, pred: str | Path, *, fmt: LabelFormat, cfg: EvalConfig,
                   unsupervised: bool = False) -> dict[str, Any]:
    """:func:`evaluate` on two folders (read twice when ``unsupervised``).

    ``pred`` may also be a pseudo-label shard directory (it holds ``manifest.json``), read
    with :func:`videocups_ray.data.pseudolabels.read_pseudolabels`.

    Ground truth is read with the dataset reader (:func:`videocups_ray.data.sources.open_source`)
    when the folder is a full dataset (images + labels); a labels-only folder and the
    predictions are read with :func:`load_label_dir`.
    """
    from videocups_ray.data.sources import open_source
    from videocups_ray.data.pseudolabels import is_shard_dir, read_pseudolabels

    if is_shard_dir(pred):  # pseudo-label shards: the manifest's thing/stuff split is applied
        pred_frames: FrameSource = lambda: read_pseudolabels(pred)  # noqa: E731
    else:
        _label_files(Path(pred), fmt)  # fail early, before any metric work
        pred_frames = lambda: load_label_dir(pred, fmt)  # noqa: E731
    try:
        source = open_source(gt, fmt)
        use_reader = source.has_labels
    except DataError as exc:  # e.g. no images/ folder: a labels-only ground truth
        log.info("ground truth %s: reading label PNGs only (%s)", gt, exc)
        use_reader = False
    if use_reader:
        gt_frames: FrameSource = lambda: iter(open_source(gt, fmt))  # noqa: E731
    else:
        _label_files(Path(gt), fmt)
        gt_frames = lambda: load_label_dir(gt, fmt)  # noqa: E731
    return evaluate(gt_frames, pred_frames, cfg=cfg, unsupervised=unsupervised)


def evaluate_pseudolabels(shard_dir: str | Path, gt: FrameSource, cfg: EvalConfig) -> dict[str, Any]:
    """STQ / AQ / SQ / VPQ of a pseudo-label shard directory against a labelled source, with the
    unsupervised cluster-to-class matching (what ``evaluate_paths`` computes for shard dirs)."""
    from videocups_ray.data.pseudolabels import read_pseudolabels

    if not gt.has_labels:
        raise DataError(f"{gt!r}: has no ground-truth labels to evaluate against")
    return evaluate(lambda: iter(gt), lambda: read_pseudolabels(shard_dir), cfg=cfg, unsupervised=True)
