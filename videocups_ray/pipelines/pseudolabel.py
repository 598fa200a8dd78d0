"""Corpus pseudo-labeling on one process (the ``local`` engine).

``run_local(cfg, input_spec, out)`` runs the shared stages (``videocups_ray/stages``) in this
process, in exactly the order the Ray engines run them in actors:

1. Pass 1 (``stages.centroids``): every video's sampled frame pairs -> cues -> seeded feature
   samples -> cosine k-means. The centroids and the record of the corpus they were fitted on
   go to ``out/centroids.npy`` / ``centroids.json``; a rerun reuses them if the corpus is the
   same (``stages.corpus.check_fit_record``: refit if nothing was labelled yet, else refuse).
2. Pass 2: each video is cut into chunks (``stages.chunks.plan_chunks``; one chunk unless the
   video is longer than ``ray.chunk_frames``), each chunk runs through
   ``stages.scheduler.run_chunk``, track IDs are stitched across chunks
   (``VideoStitcher``), rows go to the :class:`ShardWriter`. Per-video thing/stuff histograms
   go to the manifest when the video ends, so a resumed run skips finished videos
   (``stages.corpus.video_done``) and the writer drops frames already committed.
3. ``meta["pseudolabel"]`` gets the corpus split (``stages.corpus.corpus_meta``).

Bad input, one policy for every engine: a video that cannot be decoded (``DataError`` while
reading or labelling it) is skipped and recorded in the manifest under
``meta["skipped_videos"]`` with the reason (the summary lists it too); the other videos are
labelled and the run exits 0. Repairing the input and rerunning labels the video, unless the
skip left it out of the centroid fit, in which case the rerun refuses (see step 1).

``input_spec`` is anything :func:`~videocups_ray.data.formats.open_source` opens, a
:class:`FrameSource`, or ``"synth:"``: SynthDrive generated in memory from ``cfg.synth``
(the only form that carries the backward ground-truth flow the ``oracle`` flow backend needs).
Shard and pseudo-label reading lives in ``data/pseudolabels.py``.
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any

import numpy as np

from videocups_ray import __version__
from videocups_ray.config import Config
from videocups_ray.data.pseudolabels import (  # noqa: F401 - re-exported for callers of this engine
    CENTROIDS_FILE,
    META_KEY,
    SKIPPED_KEY,
    VIDEO_STATS_KEY,
    is_shard_dir,
    join_uri,
    load_output_centroids,
    output_fs,
    pseudolabel_meta,
    read_pseudolabels,
    save_output_centroids,
)
from videocups_ray.data.shards import ShardWriter
from videocups_ray.data.inputs import SYNTH_SPEC, MemorySource, open_input, synth_source  # noqa: F401 - re-exported
from videocups_ray.data.sources import FrameSource
from videocups_ray.data.types import DataError, Frame
from videocups_ray.stages import CueStages, LabelStage, run_chunk
from videocups_ray.stages.centroids import FitRecord, fit_centroids_from_samples, sample_video
from videocups_ray.stages.chunks import VideoStitcher, apply_id_map, chunk_key, plan_chunks
from videocups_ray.stages.corpus import check_any_sampled, corpus_meta, fit_pair_frames, reusable_centroids, skip_reason, video_done

log = logging.getLogger(__name__)

# --------------------------------------------------------------------------- sources
def resolve_source(cfg: Config, input_spec: str | os.PathLike | FrameSource) -> FrameSource:
    """The input opened in this process (the local engine decodes here)."""
    return open_input(input_spec, cfg.synth)


# --------------------------------------------------------------------------- pass 1
def fit_source_centroids(cfg: Config, source: FrameSource, stages: CueStages,
                         skipped: dict[str, str]) -> tuple[np.ndarray, FitRecord]:
    """Pass 1 in this process; undecodable videos go to ``skipped``."""
    samples, used = [], {}
    for vid in source.videos():
        try:
            frames = fit_pair_frames(source, vid, cfg.labeling.kmeans_frames_per_video)
            if frames:
                samples += sample_video(stages, vid, frames, cfg)
                used[vid] = source.num_frames(vid)
        except DataError as exc:
            skipped[vid] = skip_reason(exc)
            log.warning("pass 1: skipping video %s: %s", vid, skipped[vid])
    check_any_sampled(samples, skipped)
    return fit_centroids_from_samples(samples, cfg.labeling), FitRecord(used)


def _decodable(cfg: Config, source: FrameSource, vid: str) -> bool:
    try:
        fit_pair_frames(source, vid, cfg.labeling.kmeans_frames_per_video)
    except DataError:
        return False
    return True


# --------------------------------------------------------------------------- pass 2
def label_video(cfg: Config, source: FrameSource, vid: str, stages: CueStages, label: LabelStage,
                writer: ShardWriter) -> dict:
    """Every chunk of one video in turn; returns its per-video statistics entry."""
    n = source.num_frames(vid)
    chunks = plan_chunks(vid, n, cfg)
    stitcher = VideoStitcher(vid, chunks, cfg.labeling.tau_m)
    held: dict[str, list[dict]] = {}
    for k, chunk in enumerate(chunks):
        start, stop, _ = chunk.read_range(n)
        on_rows = ((lambda rows: [writer.add(**r) for r in rows]) if k == 0
                   else held.setdefault(chunk_key(chunk), []).extend)
        result = run_chunk(stages, label, source.frames(vid, start, stop), chunk, n, cfg.cues.flow.batch_size,
                           on_rows)
        for key, id_map in stitcher.finish(k, result):
            for row in held.pop(key, []):
                writer.add(**{**row, "instance": apply_id_map(row["instance"], id_map)})
    return stitcher.stats_entry(n)


def run_local(cfg: Config, input_spec: str | os.PathLike | FrameSource, out: str | os.PathLike, *,
              progress: bool = True, stages: CueStages | None = None) -> dict[str, Any]:
    """Pseudo-label every video of ``input_spec`` into shards under ``out``; resumable.

    ``stages`` (optional): cue stages to use, e.g. a :class:`~videocups_ray.stages.CachedCueStages`
    shared by many labeling variants in a benchmark (the caller sets them up and tears them down).
    Returns a summary: videos, frames (labelled this run), written / skipped rows, shards,
    thing_classes, centroids path, seconds, frames_per_s, skipped_videos.
    """
    from tqdm import tqdm

    t0 = time.perf_counter()
    out = os.fspath(out)
    output_fs(out)  # an unusable --out (s3:// without an endpoint, ...) is one line, before any work
    source = resolve_source(cfg, input_spec)
    writer = ShardWriter(out, cfg.shards, cfg.hash(), __version__)  # checks the config hash first
    own_stages = stages is None
    stages = stages or CueStages.from_config(cfg)
    if own_stages:
        stages.setup()
    videos = source.videos()
    # resume checks the committed shards of these videos (shards.verify_on_resume); a damaged
    # one is retracted and its frames labelled again (issue 17 #2)
    writer.repair(videos, cfg.shards.verify_on_resume)
    meta = writer.manifest.meta()
    per_video: dict[str, dict] = dict(meta.get(VIDEO_STATS_KEY, {}))
    skipped: dict[str, str] = {}
    committed = writer.committed_counts()
    total = sum(source.num_frames(v) for v in videos)
    bar = tqdm(total=total, desc="pseudolabel", unit="frame", disable=not progress)
    labelled = 0
    try:
        centroids = reusable_centroids(cfg, {v: source.num_frames(v) for v in videos}, out,
                                       sum(committed.values()), lambda v: _decodable(cfg, source, v))
        cent_path = None
        if centroids is None:
            centroids, record = fit_source_centroids(cfg, source, stages, skipped)
            cent_path = save_output_centroids(out, centroids, record.to_json())
        label = LabelStage(cfg, centroids)
        label.setup()
        t_label = time.perf_counter()
        for vid in videos:
            n = source.num_frames(vid)
            if vid in skipped or video_done(per_video.get(vid), committed.get(vid, 0), n):
                bar.update(n)
                continue
            before = writer.summary.written + writer.summary.skipped
            try:
                per_video[vid] = label_video(cfg, source, vid, stages, label, writer)
            except DataError as exc:
                skipped[vid] = skip_reason(exc)
                log.warning("skipping video %s: %s", vid, skipped[vid])
                continue
            finally:
                done = writer.summary.written + writer.summary.skipped - before
                labelled += done
                bar.update(done)
            writer.set_video_meta(VIDEO_STATS_KEY, vid, per_video[vid])  # one record per video
            if vid in meta.get(SKIPPED_KEY, {}):
                writer.set_video_meta(SKIPPED_KEY, vid, None)  # labelled now: no longer skipped
        writer.flush()
    finally:
        bar.close()
        if own_stages:
            stages.teardown()
    for vid, reason in skipped.items():
        writer.set_video_meta(SKIPPED_KEY, vid, reason)
    skipped_all = {**{v: r for v, r in meta.get(SKIPPED_KEY, {}).items() if v not in per_video}, **skipped}
    result = corpus_meta(cfg, per_video, videos)
    writer.set_meta(META_KEY, result)
    return {"out": out, "videos": len(videos), "frames": labelled, "written": writer.summary.written,
            "skipped": writer.summary.skipped, "shards": writer.summary.shards,
            "thing_classes": result["thing_classes"], "centroids": cent_path or join_uri(out, CENTROIDS_FILE),
            "seconds": round(time.perf_counter() - t0, 2),
            "frames_per_s": round(labelled / max(time.perf_counter() - t_label, 1e-9), 3),
            "skipped_videos": skipped_all}
