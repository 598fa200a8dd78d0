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
import zlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from videocups_ray.config import DatasetsConfig, EvalConfig
from videocups_ray.data.types import DataError, Frame
from videocups_ray.metrics import DVPQ, STQ, VPQ, UnsupervisedMatcher
from videocups_ray.metrics.aq_split import TrackMotion, aq_split

log = logging.getLogger(__name__)

FrameSource = Iterable[Frame] | Callable[[], Iterable[Frame]]
LabelFormat = str  # a name of videocups_ray.data.formats.FORMATS

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


def _check_supervised_classes(frame: Frame, cfg: EvalConfig) -> None:
    """Without the matching, predicted classes must be ground-truth classes; pseudo-classes
    (e.g. pseudo-label shards, K = 27) are the common reason they are not."""
    sem = frame.semantic
    bad = (sem >= cfg.num_classes) & (sem != cfg.ignore_label)
    if bad.any():
        raise DataError(f"prediction video {frame.video_id!r} frame {frame.frame_index}: class "
                        f"{int(sem[bad].flat[0])} is not in [0, {cfg.num_classes}) and not the ignore label "
                        f"{cfg.ignore_label}; for pseudo-classes (unsupervised predictions, pseudo-label "
                        "shards) pass --unsupervised to match them to ground-truth classes first")


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


def _pack_depth(depth: np.ndarray | None) -> bytes | tuple | None:
    if depth is None:
        return None
    d = np.ascontiguousarray(depth, np.float32)
    return zlib.compress(d.tobytes(), 1), d.shape


def _unpack_depth(packed: tuple | None) -> np.ndarray | None:
    if packed is None:
        return None
    data, shape = packed
    return np.frombuffer(zlib.decompress(data), np.float32).reshape(shape)


# --------------------------------------------------------------------------- evaluate
def _metrics(cfg: EvalConfig) -> tuple[STQ, VPQ, DVPQ]:
    common = dict(num_classes=cfg.num_classes, things=cfg.things, ignore_label=cfg.ignore_label,
                  label_divisor=cfg.label_divisor)
    return (STQ(**common), VPQ(**common, window_sizes=cfg.window_sizes, protocol=cfg.protocol),
            DVPQ(**common, window_sizes=cfg.window_sizes, thresholds=cfg.depth_thresholds, protocol=cfg.protocol))


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
    When every ground-truth frame and its prediction carry depth, ``DVPQ`` (see
    :class:`~videocups_ray.metrics.DVPQ`: ``DVPQ``, ``DVPQ_thing``, ``DVPQ_stuff``,
    ``per_threshold``, ``depth``) is added; VPQ follows ``cfg.protocol``.
    When every ground-truth frame carries a motion mask (``extra["motion"]``, SynthDrive),
    ``AQ_split`` (:func:`~videocups_ray.metrics.aq_split.aq_split`: ``static`` / ``moving`` ->
    ``AQ``, ``num_tracks``; moving = ``cfg.moving_fraction`` of the track on the mask) is added.
    """
    div = cfg.label_divisor
    stq, vpq, dvpq = _metrics(cfg)
    matcher: UnsupervisedMatcher | None = None
    cache: list[tuple] | None = None

    if unsupervised:
        matcher = UnsupervisedMatcher(cfg.num_classes, cfg.things, cfg.ignore_label, div)
        keep = not (_is_reiterable(gt_frames) and _is_reiterable(pred_frames))
        cache = [] if keep else None
        for gt, pred in paired_frames(_iterate(gt_frames), _iterate(pred_frames)):
            g, p = _panoptic(gt, div, "ground truth"), _panoptic(pred, div, "prediction")
            matcher.update_panoptic(g, p, where=f"video {gt.video_id!r} frame {gt.frame_index}")
            if cache is not None:
                motion = gt.extra.get("motion")
                cache.append((str(gt.video_id), int(gt.frame_index), _Packed(g), _Packed(p),
                               _pack_depth(gt.depth), _pack_depth(pred.depth),
                               None if motion is None else _Packed(np.asarray(motion, bool))))
        mapping = matcher.fit()
        log.info("unsupervised matching: %d Hungarian, %d majority, %d void-only pseudo-classes",
                 len(mapping.hungarian), len(mapping.majority), len(mapping.unmatched))

    def scored_pairs() -> Iterator[tuple]:
        if cache is not None:
            for video, index, g, p, dg, dp, m in cache:
                yield (video, index, g.unpack(), p.unpack(), _unpack_depth(dg), _unpack_depth(dp),
                       None if m is None else m.unpack().astype(bool))
            return
        for gt, pred in paired_frames(_iterate(gt_frames), _iterate(pred_frames)):
            if not unsupervised:
                _check_supervised_classes(pred, cfg)
            yield (str(gt.video_id), int(gt.frame_index), _panoptic(gt, div, "ground truth"),
                   _panoptic(pred, div, "prediction"), gt.depth, pred.depth, gt.extra.get("motion"))

    num_frames, with_depth, any_depth, no_depth = 0, True, False, ""
    track_motion: TrackMotion | None = TrackMotion(cfg.moving_fraction)
    for video, index, g, p, depth_gt, depth_pred, motion in scored_pairs():
        if matcher is not None:
            p = matcher.apply(p, where=f"video {video!r} frame {index}")
        stq.update(g, p, video, frame_index=index)
        vpq.update(g, p, video, frame_index=index)
        any_depth = any_depth or depth_gt is not None or depth_pred is not None
        if with_depth and (depth_gt is None or depth_pred is None):
            with_depth = False
            side = "ground truth" if depth_gt is None else "prediction"
            no_depth = f"video {video!r} frame {index}: {side} has no depth"
        if with_depth:
            dvpq.update(g, p, depth_gt, depth_pred, video, frame_index=index)
        if track_motion is not None and motion is None:
            if num_frames:  # some frames had a mask: say why there is no split
                log.warning("AQ split not computed: video %r frame %d has no motion mask", video, index)
            track_motion = None
        if track_motion is not None:
            track_motion.update(g, motion, video, frame_index=index)
        num_frames += 1
    if num_frames == 0:
        raise DataError("no ground-truth frames to evaluate")
    if any_depth and not with_depth:  # one side has depth: say why there is no DVPQ
        log.warning("DVPQ not computed (%s); it needs depth on both sides for every frame", no_depth)

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
                   "window_sizes": list(cfg.window_sizes), "unsupervised": unsupervised,
                   "protocol": cfg.protocol},
    }
    if with_depth:
        result["DVPQ"] = dvpq.result()
    if track_motion is not None:
        result["AQ_split"] = aq_split(stq, track_motion.is_moving)
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
    split = result.get("AQ_split")
    if split:
        lines += ["", "AQ by ground-truth track motion"]
        lines += [f"  {kind:8s}AQ{_fmt(r['AQ'])}  ({r['num_tracks']} tracks)" for kind, r in split.items()]
    dv = result.get("DVPQ")
    if dv:
        lines += ["", f"DVPQ {_fmt(dv['DVPQ'])} (thing {_fmt(dv['DVPQ_thing']).strip()}, stuff "
                  f"{_fmt(dv['DVPQ_stuff']).strip()}); per depth threshold:"]
        lines += [f"  lambda {t:6s}{_fmt(r['VPQ'])}" for t, r in dv["per_threshold"].items()]
        d = dv["depth"]
        lines.append("  depth: " + ", ".join(f"{k} {d[k]:.4f}" for k in ("AbsRel", "SqRel", "SILog", "delta1")
                                             if d[k] is not None))
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


# --------------------------------------------------------------------------- folders
def load_label_dir(path: str | Path, format: LabelFormat) -> Iterator[Frame]:  # noqa: A002 (CLI name)
    """Frames of a folder in ``format`` (:mod:`videocups_ray.data.formats`), sorted by
    (video, frame). KITTI-STEP and Cityscapes-VPS folders are read as label-only folders
    (``DIR/panoptic/<seq>/<frame:06d>.png`` or flat ``DIR/panoptic/*.png``; see
    :mod:`videocups_ray.data.predictions`), even where images sit next to them."""
    from videocups_ray.data.formats import open_source
    from videocups_ray.data.predictions import CityscapesVpsPredictions, KittiStepPredictions

    label_only = {"kitti-step": KittiStepPredictions, "cityscapes-vps": CityscapesVpsPredictions}
    source = label_only[format](path) if format in label_only else open_source(path, format)
    return iter(source)


def _open_frames(path: str | Path, fmt: str | None, role: str, options: DatasetsConfig | None) -> FrameSource:
    """A re-iterable source of ``path`` read in ``fmt`` (detected when None), checked to hold
    labels; ``role`` names it in errors."""
    from videocups_ray.data.formats import detect_format, open_source

    fmt = fmt or detect_format(path)
    source = open_source(path, fmt, options)
    if not source.has_labels:
        raise DataError(f"{role} {path} (format {fmt}): has no labels to evaluate")
    log.info("%s %s: format %s", role, path, fmt)
    return lambda: iter(source)


def evaluate_paths(gt: str | Path, pred: str | Path, *, cfg: EvalConfig, fmt: LabelFormat | None = None,
                   gt_format: str | None = None, pred_format: str | None = None,
                   unsupervised: bool = False, datasets: DatasetsConfig | None = None) -> dict[str, Any]:
    """:func:`evaluate` on two paths, each read with the format registry
    (:mod:`videocups_ray.data.formats`): ``gt_format`` / ``pred_format`` name the formats
    (``fmt`` sets both at once); None detects each. ``datasets`` holds the readers' options.

    ``pred`` may also be a pseudo-label shard directory (it holds a shard manifest), read
    with :func:`videocups_ray.data.pseudolabels.read_pseudolabels`.
    """
    from videocups_ray.data.pseudolabels import is_shard_dir, read_pseudolabels

    gt_format, pred_format = gt_format or fmt, pred_format or fmt
    if is_shard_dir(pred):  # pseudo-label shards: the manifest's thing/stuff split is applied
        pred_frames: FrameSource = lambda: read_pseudolabels(pred)  # noqa: E731
    else:
        pred_frames = _open_frames(pred, pred_format, "prediction", datasets)  # fail early
    gt_frames = _open_frames(gt, gt_format, "ground truth", datasets)
    return evaluate(gt_frames, pred_frames, cfg=cfg, unsupervised=unsupervised)


def evaluate_pseudolabels(shard_dir: str | Path, gt: FrameSource, cfg: EvalConfig) -> dict[str, Any]:
    """STQ / AQ / SQ / VPQ of a pseudo-label shard directory against a labelled source, with the
    unsupervised cluster-to-class matching (what ``evaluate_paths`` computes for shard dirs)."""
    from videocups_ray.data.pseudolabels import read_pseudolabels

    if not gt.has_labels:
        raise DataError(f"{gt!r}: has no ground-truth labels to evaluate against")
    return evaluate(lambda: iter(gt), lambda: read_pseudolabels(shard_dir), cfg=cfg, unsupervised=True)
