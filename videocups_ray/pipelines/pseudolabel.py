"""Corpus pseudo-labeling on one process (the ``local`` engine), and reading the result.

``run_local(cfg, input_spec, out)``:

1. Pass 1: the cue stages run on ``labeling.kmeans_frames_per_video`` sampled frame pairs
   per video; features are sampled and cosine k-means is fitted (``stages.fit_centroids``).
   The centroids are saved as ``out/centroids.npy`` (a rerun loads them instead).
2. Pass 2: every video streams through the stages (``VideoCueRunner`` -> ``LabelStage``) and
   its final frames are written with :class:`~videocups_ray.data.shards.ShardWriter`.
   Thing/stuff histograms are accumulated per video and stored in the manifest ``meta`` when
   the video ends, so a resumed run skips a video whose frames are all committed *and* whose
   histograms are stored; a partly written video is recomputed from its first frame (the
   tracker needs its history) and the writer drops the frames already committed.
3. The corpus split (``thing_classes``, ``ratios``), the centroid file name, K and the
   config hash go to ``meta["pseudolabel"]``.

Where thing/stuff is applied: shards keep the tracker's output (pseudo-class, 255 on the
ignore mask; track IDs on every class), because the split needs the whole corpus and is
decided only after the last video. Whoever reads pseudo-labels applies the manifest's split:
training at read time (DESIGN.md section 2), evaluation through :func:`read_pseudolabels`
(which ``pipelines.evaluate.evaluate_paths`` uses when ``--pred`` is a shard directory).

``input_spec`` is anything :func:`~videocups_ray.data.sources.open_source` opens, a
:class:`FrameSource`, or ``"synth:"``: SynthDrive generated in memory from ``cfg.synth``
(the only form that carries the backward ground-truth flow the ``oracle`` flow backend needs).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from videocups_ray import __version__
from videocups_ray.config import Config, EvalConfig, SynthConfig
from videocups_ray.data.shards import ShardWriter, read_manifest, read_shards
from videocups_ray.data.shards import is_shard_dir as shards_is_shard_dir
from videocups_ray.data.sources import FrameSource, VideoListSource, open_source
from videocups_ray.data.types import DataError, Frame
from videocups_ray.labeling import FrameCues, ThingStuffStats, apply_thing_stuff, load_centroids, merge_thing_stuff, save_centroids
from videocups_ray.pipelines.stages import (
    CueStages,
    LabelStage,
    VideoCueRunner,
    fit_centroids,
    fit_centroids_from_samples,
    fit_positions,
    labelled_to_row,
    sample_frame_features,
)

log = logging.getLogger(__name__)

CENTROIDS_FILE = "centroids.npy"
META_KEY = "pseudolabel"
VIDEO_STATS_KEY = "thingstuff_per_video"
SYNTH_SPEC = "synth:"

CueProvider = Callable[[str], Iterable[tuple[Frame, FrameCues]]]  # video_id -> ordered (frame, cues)


# --------------------------------------------------------------------------- sources
class MemorySource(VideoListSource):
    """Frames held in memory, grouped by video (tests, benchmarks, generated corpora)."""

    def __init__(self, frames: list[Frame], has_labels: bool | None = None):
        self._videos: dict[str, list[Frame]] = {}
        for f in frames:
            self._videos.setdefault(str(f.video_id), []).append(f)
        for vid, fs in self._videos.items():
            fs.sort(key=lambda f: f.frame_index)
        self.has_labels = (all(f.semantic is not None and f.instance is not None for f in frames)
                           if has_labels is None else has_labels)

    def __repr__(self) -> str:
        return f"MemorySource({len(self._videos)} videos)"

    def frames(self, video_id: str, start: int = 0, stop: int | None = None) -> Iterator[Frame]:
        for _, frame in self._items(video_id, start, stop, repr(self)):
            yield frame


def synth_source(cfg: SynthConfig) -> MemorySource:
    """All SynthDrive sequences of ``cfg`` rendered into memory (ground truth included)."""
    from videocups_ray.data.synthdrive import generate_sequence

    return MemorySource([f for s in range(cfg.sequences) for f in generate_sequence(cfg, s)])


def resolve_source(cfg: Config, input_spec: str | os.PathLike | FrameSource) -> FrameSource:
    if isinstance(input_spec, FrameSource):
        return input_spec
    if os.fspath(input_spec) == SYNTH_SPEC:
        return synth_source(cfg.synth)
    return open_source(input_spec)


# --------------------------------------------------------------------------- pass 1
def _fit_pairs(source: FrameSource, video: str, per_video: int) -> list[Frame]:
    positions = fit_positions(source.num_frames(video), per_video)
    out: list[Frame] = []
    for p in positions:
        out.extend(source.frames(video, p, p + 2))
    return out


def fit_source_centroids(cfg: Config, source: FrameSource, stages: CueStages) -> np.ndarray:
    """Pass 1 over ``source`` (see the module docstring)."""
    per_video = cfg.labeling.kmeans_frames_per_video
    videos = (_fit_pairs(source, v, per_video) for v in source.videos())
    return fit_centroids((v for v in videos if v), stages, cfg)


# --------------------------------------------------------------------------- pass 2
def _stats_entry(stats: ThingStuffStats) -> dict:
    return {"in_instance": stats.in_instance.tolist(), "total": stats.total.tolist()}


def fit_cue_centroids(cfg: Config, cues: CueProvider, source: FrameSource) -> np.ndarray:
    """Pass 1 from precomputed cues: the same frames and samples as :func:`fit_source_centroids`."""
    samples = []
    for vid in source.videos():
        picks = set(fit_positions(source.num_frames(vid), cfg.labeling.kmeans_frames_per_video))
        for pos, (frame, c) in enumerate(cues(vid)):
            if pos in picks:
                key = (str(vid), int(frame.frame_index))
                samples.append((key, sample_frame_features(*key, c.features_high, cfg.labeling)))
    samples.sort(key=lambda kv: kv[0])
    return fit_centroids_from_samples([s for _, s in samples], cfg.labeling)


def label_cues(cues: Iterable[tuple[Frame, FrameCues]], label: LabelStage) -> Iterator[dict]:
    """Final shard rows of one video from its ordered ``(frame, cues)`` stream."""
    images: dict[int, np.ndarray] = {}
    label.reset()
    for frame, c in cues:
        images[frame.frame_index] = frame.image
        for lf in label.push(c):
            yield labelled_to_row(lf, images.pop(lf.frame_index))
    for lf in label.flush():
        yield labelled_to_row(lf, images.pop(lf.frame_index))


def run_local(cfg: Config, input_spec: str | os.PathLike | FrameSource, out: str | os.PathLike, *,
              progress: bool = True, cues: CueProvider | None = None) -> dict[str, Any]:
    """Pseudo-label every video of ``input_spec`` into shards under ``out``; resumable.

    ``cues`` (optional): ``video_id -> ordered (frame, FrameCues)`` computed elsewhere, e.g.
    once for many labeling variants in a benchmark; the cue stages are then not run.
    Returns a summary: videos, frames (labelled this run), written / skipped rows, shards,
    thing_classes, centroids path, seconds, frames_per_s (labeling + writing only when
    ``cues`` is given).
    """
    from tqdm import tqdm

    t0 = time.perf_counter()
    source = resolve_source(cfg, input_spec)
    out = Path(out)
    k = cfg.labeling.num_clusters
    writer = ShardWriter(out, cfg.shards, cfg.hash(), __version__)  # checks the config hash first
    stages = CueStages.from_config(cfg)
    own_cues = cues is None
    if cues is None:
        stages.setup()

        def cues(vid: str) -> Iterator[tuple[Frame, FrameCues]]:
            return VideoCueRunner(stages, cfg.cues.flow.batch_size).run(source.frames(vid))

    cent_path = out / CENTROIDS_FILE
    if cent_path.is_file():
        centroids = load_centroids(cent_path, k)
        log.info("pseudolabel: reusing centroids %s", cent_path)
    else:
        centroids = (fit_source_centroids(cfg, source, stages) if own_cues
                     else fit_cue_centroids(cfg, cues, source))
        save_centroids(cent_path, centroids)
    label = LabelStage(cfg, centroids)
    label.setup()

    videos = source.videos()
    # [shards] resume checks the committed shards of these videos (shards.verify_on_resume); a
    # damaged one is retracted and its frames labelled again. Counts and stats per video only.
    writer.repair(videos, cfg.shards.verify_on_resume)
    per_video: dict[str, dict] = dict(writer.manifest.meta().get(VIDEO_STATS_KEY, {}))
    committed_per_video = writer.committed_counts()
    total = sum(source.num_frames(v) for v in videos)
    bar = tqdm(total=total, desc="pseudolabel", unit="frame", disable=not progress)
    labelled = 0
    t_label = time.perf_counter()
    try:
        for vid in videos:
            n = source.num_frames(vid)
            if vid in per_video and per_video[vid]["frames"] == n and committed_per_video.get(vid, 0) >= n:
                bar.update(n)
                continue
            stats = ThingStuffStats(k)
            for row in label_cues(cues(vid), label):
                stats.add(row["semantic"], row["instance"], row["ignore"], where=f"{vid} frame {row['frame_index']}")
                writer.add(**row)
                labelled += 1
                bar.update(1)
            per_video[vid] = {**_stats_entry(stats), "frames": n}
            writer.set_video_meta(VIDEO_STATS_KEY, vid, per_video[vid])  # [shards] one record per video
        writer.flush()
    finally:
        bar.close()
        stages.teardown()
    seconds = time.perf_counter() - t0

    merged = merge_thing_stuff([ThingStuffStats(k, np.array(e["in_instance"], np.int64), np.array(e["total"], np.int64))
                                for v, e in sorted(per_video.items()) if v in set(videos)] or [ThingStuffStats(k)])
    things = merged.thing_classes(cfg.labeling.psi)
    meta = {"thing_classes": list(things), "ratios": [round(float(r), 6) for r in merged.ratios()],
            "psi": cfg.labeling.psi, "num_clusters": k, "centroids": CENTROIDS_FILE,
            "ignore_label": cfg.labeling.ignore_label, "config_hash": cfg.hash(),
            "code_version": __version__, "videos": videos}
    writer.set_meta(META_KEY, meta)
    return {"out": str(out), "videos": len(videos), "frames": labelled, "written": writer.summary.written,
            "skipped": writer.summary.skipped, "shards": writer.summary.shards,
            "thing_classes": list(things), "centroids": str(cent_path), "seconds": round(seconds, 2),
            "frames_per_s": round(labelled / max(time.perf_counter() - t_label, 1e-9), 3)}


# --------------------------------------------------------------------------- reading
def pseudolabel_meta(shard_dir: str | os.PathLike) -> dict:
    """``meta["pseudolabel"]`` of a pseudo-label shard directory (DataError if absent)."""
    manifest = read_manifest(shard_dir)
    meta = manifest.get("meta", {}).get(META_KEY)
    if meta is None:
        raise DataError(f"{shard_dir}: manifest has no meta[{META_KEY!r}] (not a finished pseudo-label "
                        "run: rerun `videocups pseudolabel` on the same output to finish it)")
    return meta


def read_pseudolabels(shard_dir: str | os.PathLike, *, apply_split: bool = True, void_ignored: bool = False,
                      verify: bool = True) -> Iterator[Frame]:
    """Frames of a pseudo-label shard directory with the manifest's thing/stuff split applied
    (:func:`~videocups_ray.labeling.apply_thing_stuff`: no instances on stuff classes,
    uncovered thing pixels get the ignore label); ``extra["ignore"]`` is the resulting mask.

    ``void_ignored=False`` (evaluation): pixels of the stored ignore mask (occluded for the
    flow) keep their pseudo-class; ``True`` voids them too, as training does.
    """
    meta = pseudolabel_meta(shard_dir)
    things, ignore_label = tuple(meta["thing_classes"]), int(meta["ignore_label"])
    for frame in read_shards(shard_dir, verify=verify):
        if apply_split:
            stored = frame.extra["ignore"]
            ign = stored if void_ignored else np.zeros_like(stored)
            sem, inst, ign = apply_thing_stuff(frame.semantic, frame.instance, ign, things,
                                               ignore_label=ignore_label)
            frame.semantic, frame.instance, frame.extra["ignore"] = sem, inst, ign | stored
        yield frame


def is_shard_dir(path: str | os.PathLike) -> bool:
    return shards_is_shard_dir(path)  # [shards] the commit log or an old manifest.json


def evaluate_pseudolabels(shard_dir: str | os.PathLike, gt: FrameSource, cfg: EvalConfig) -> dict[str, Any]:
    """STQ / AQ / SQ / VPQ of a pseudo-label shard directory against a labelled source, with the
    unsupervised cluster-to-class matching (what ``evaluate_paths`` computes for shard dirs)."""
    from videocups_ray.pipelines.evaluate import evaluate

    if not gt.has_labels:
        raise DataError(f"{gt!r}: has no ground-truth labels to evaluate against")
    return evaluate(lambda: iter(gt), lambda: read_pseudolabels(shard_dir), cfg=cfg, unsupervised=True)
