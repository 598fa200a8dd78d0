"""Inference: a trained checkpoint over videos -> panoptic prediction PNGs (+ overlay videos).

Frames of one video go through :class:`VideoPanopticPredictor` ``infer.batch_size`` at a time
(one batched forward, then MaskTrack association and panoptic fusion in frame order).

Engines: ``local`` (one process, videos in turn) and ``ray`` (a Ray Data job over the corpus:
one row per video, ``map_batches`` with an actor pool of ``infer.actors`` actors that
each load the checkpoint once and predict whole videos, since tracking needs frame order).

Output layout (both formats): ``out/panoptic/<video_id>/<frame:06d>.png``; ``kitti-step`` is
RGB (R = class, G * 256 + B = track ID), ``cityscapes-vps`` 16-bit ``class * 1000 + track``.
Classes are the checkpoint's: pseudo-classes for an unsupervised model (score with
``videocups eval --unsupervised``), ground-truth train IDs for a fine-tuned one.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from videocups_ray.config import Config, ModelConfig
from videocups_ray.data import formats
from videocups_ray.data.sources import FrameSource
from videocups_ray.data.types import DataError, Frame, UnknownFormatError
from videocups_ray.model import ClassMeta, PanopticFrame, VideoPanopticPredictor, load_checkpoint

log = logging.getLogger(__name__)

OutputFormat = str  # a writable format of videocups_ray.data.formats
FORMATS = tuple(formats.writable_formats())


# --------------------------------------------------------------------------- prediction
def predict_video(model: torch.nn.Module, meta: ClassMeta, cfg: ModelConfig, frames: Iterable[Frame], *,
                  batch_size: int = 4, device: str = "cpu") -> Iterator[tuple[Frame, PanopticFrame]]:
    """(input frame, prediction) for every frame of one video, in order, track IDs consistent:
    :class:`VideoPanopticPredictor` fed ``batch_size`` frames per forward."""
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size} must be >= 1")
    predictor = VideoPanopticPredictor(model, meta, cfg, device=device)
    pending: list[Frame] = []

    def flush() -> Iterator[tuple[Frame, PanopticFrame]]:
        try:
            preds = predictor.push_batch([f.image for f in pending])
        except DataError as exc:
            raise DataError(f"video {pending[0].video_id!r} frames {pending[0].frame_index}-{pending[-1].frame_index}: "
                            f"{exc}") from None
        for f, pred in zip(pending, preds):
            yield f, dataclasses.replace(pred, frame_index=f.frame_index)
        pending.clear()

    last = None
    for frame in frames:
        if last is not None and frame.frame_index <= last:
            raise DataError(f"video {frame.video_id!r}: frame {frame.frame_index} after {last}; "
                            "frames must come in temporal order for tracking")
        last = frame.frame_index
        pending.append(frame)
        if len(pending) == batch_size:
            yield from flush()
    if pending:
        yield from flush()


def write_prediction(out: str | os.PathLike, fmt: str, video_id: str, pred: PanopticFrame) -> Path:
    """Write one predicted frame in ``fmt`` (any writable format of the registry); DataError
    naming the frame if it cannot be encoded."""
    return formats.write_prediction(fmt, out, video_id, pred.frame_index, pred.semantic, pred.instance)


class _OverlayWriter:
    """An mp4 (mp4v) of panoptic overlays, opened at the first frame."""

    def __init__(self, path: Path, fps: float):
        self.path, self.fps, self._writer = path, fps, None

    def add(self, image: np.ndarray, pred: PanopticFrame) -> None:
        import cv2

        from videocups_ray.viz.overlays import colorize_panoptic

        rgb = colorize_panoptic(pred.semantic, pred.instance, image=image)
        if self._writer is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            h, w = rgb.shape[:2]
            self._writer = cv2.VideoWriter(str(self.path), cv2.VideoWriter_fourcc(*"mp4v"), self.fps, (w, h))
            if not self._writer.isOpened():
                raise DataError(f"{self.path}: OpenCV cannot open an mp4v video writer")
        self._writer.write(np.ascontiguousarray(rgb[..., ::-1]))

    def close(self) -> None:
        if self._writer is not None:
            self._writer.release()


def infer_video(model, meta: ClassMeta, cfg: Config, source: FrameSource, video_id: str, out: Path, fmt: str,
                overlay: bool, device: str = "cpu") -> dict[str, Any]:
    """Predict and write one video; returns video_id, frames, seconds, overlay path."""
    t0 = time.perf_counter()
    writer = _OverlayWriter(out / "overlays" / f"{video_id}.mp4", fps=cfg.synth.fps) if overlay else None
    n = 0
    try:
        for frame, pred in predict_video(model, meta, cfg.model, source.frames(video_id),
                                         batch_size=cfg.infer.batch_size, device=device):
            write_prediction(out, fmt, video_id, pred)
            if writer is not None:
                writer.add(frame.image, pred)
            n += 1
    finally:
        if writer is not None:
            writer.close()
    return {"video_id": video_id, "frames": n, "seconds": round(time.perf_counter() - t0, 3),
            "overlay": str(writer.path) if writer is not None else None}


class VideoInferenceActor:
    """Ray Data callable class: loads the checkpoint once, predicts whole videos per row."""

    def __init__(self, cfg_data: dict, checkpoint: str, input_spec: Any, out: str, fmt: str, overlay: bool,
                 device: str = "cpu"):
        from videocups_ray.pipelines.pseudolabel import resolve_source

        self.cfg = Config.model_validate(cfg_data)
        self.model, model_cfg, self.meta, _ = load_checkpoint(checkpoint)
        self.cfg = self.cfg.model_copy(update={"model": model_cfg})
        self.source = resolve_source(self.cfg, input_spec)
        self.out, self.fmt, self.overlay, self.device = Path(out), fmt, overlay, device

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        rows = [infer_video(self.model, self.meta, self.cfg, self.source, str(v), self.out, self.fmt, self.overlay,
                            self.device) for v in batch["video_id"]]
        return {"video_id": np.asarray([r["video_id"] for r in rows]),
                "frames": np.asarray([r["frames"] for r in rows], dtype=np.int64),
                "seconds": np.asarray([r["seconds"] for r in rows], dtype=np.float64),
                "overlay": np.asarray([r["overlay"] or "" for r in rows])}


def run_infer(cfg: Config, checkpoint: str | os.PathLike, input_spec: str | os.PathLike | FrameSource,
              out: str | os.PathLike, fmt: str = "kitti-step", *, engine: Literal["local", "ray"] = "local",
              overlay: bool = False, videos: list[str] | None = None, device: str = "cpu") -> dict[str, Any]:
    """Predict every video (or ``videos``) of ``input_spec`` with ``checkpoint`` into ``out``.

    ``input_spec``: anything ``open_source`` opens, a ``FrameSource``, or ``"synth:"``.
    Returns out, format, engine, videos, frames, seconds, frames_per_s, per_video (list of
    video_id / frames / seconds / overlay) and class_meta.
    """
    from videocups_ray.pipelines.pseudolabel import resolve_source

    if fmt not in FORMATS:
        raise UnknownFormatError(f"unknown prediction format {fmt!r}; known: {', '.join(FORMATS)}")
    if engine not in ("local", "ray"):
        raise ValueError(f"engine={engine!r} must be 'local' or 'ray'")
    t0 = time.perf_counter()
    out = Path(out)
    model, model_cfg, meta, _ = load_checkpoint(checkpoint)  # before creating --out: a bad file leaves nothing
    cfg = cfg.model_copy(update={"model": model_cfg})  # the checkpoint's architecture and inference knobs
    source = resolve_source(cfg, input_spec)
    out.mkdir(parents=True, exist_ok=True)
    wanted = source.videos() if videos is None else list(videos)
    unknown = sorted(set(wanted) - set(source.videos()))
    if unknown:
        raise DataError(f"{input_spec}: unknown videos {unknown[:5]} (known: {source.videos()[:10]})")
    if engine == "local":
        per_video = [infer_video(model, meta, cfg, source, v, out, fmt, overlay, device) for v in wanted]
    else:
        per_video = _infer_ray(cfg, checkpoint, source if isinstance(input_spec, FrameSource) else input_spec,
                               wanted, out, fmt, overlay, device)
    frames = sum(int(r["frames"]) for r in per_video)
    seconds = time.perf_counter() - t0
    return {"out": str(out), "format": fmt, "engine": engine, "videos": len(per_video), "frames": frames,
            "seconds": round(seconds, 2), "frames_per_s": round(frames / max(seconds, 1e-9), 3),
            "per_video": per_video, "class_meta": meta.to_dict()}


def _infer_ray(cfg: Config, checkpoint, input_spec, videos: list[str], out: Path, fmt: str, overlay: bool,
               device: str) -> list[dict]:
    import ray.data
    from ray.data import ActorPoolStrategy

    from videocups_ray.pipelines.ray_runtime import ray_session

    ic = cfg.infer
    with ray_session(cfg.ray):
        ds = ray.data.from_items([{"video_id": v} for v in videos], override_num_blocks=max(1, len(videos)))
        ds = ds.map_batches(
            VideoInferenceActor, batch_size=1, batch_format="numpy",
            fn_constructor_kwargs={"cfg_data": cfg.model_dump(mode="json"), "checkpoint": str(Path(checkpoint).resolve()),
                                   "input_spec": input_spec, "out": str(out.resolve()), "fmt": fmt,
                                   "overlay": overlay, "device": device},
            compute=ActorPoolStrategy(size=min(ic.actors, len(videos))),
            num_cpus=ic.cpus_per_actor, num_gpus=ic.gpus_per_actor or None,
        )
        rows = ds.take_all()
    return [{"video_id": str(r["video_id"]), "frames": int(r["frames"]), "seconds": float(r["seconds"]),
             "overlay": str(r["overlay"]) or None} for r in sorted(rows, key=lambda r: str(r["video_id"]))]
