"""Corpus pseudo-labeling on Ray: ``run_ray(cfg, input_spec, out)`` (the ``ray`` engine).

The same stages and the same per-video scheduler as ``pipelines/pseudolabel.py::run_local``
(``videocups_ray/stages``), placed in actors; the shards are bit-identical. What Ray adds is
parallelism, bounded memory, and surviving failures.

Actor graph (one pool per kind, resources from ``cfg.ray.<kind>``)::

    ReaderActor ──PairBatch ref──▶ FlowActor ─▶ DepthActor (stream-pinned) ─▶ FeatureActor
     (decodes next to the data)  \\______________ refs only ______________/        │
                                                                                     ▼
                               TrackerActor (one per stream in flight, reorders by seq)
                                                                                     │ rows ref
                                                                                     ▼
                               WriterActor pool (shard files; the driver commits them)

The driver moves only ids, ObjectRefs and small metadata (frame counts, chunk results): it
never decodes a frame, never fetches a cue, never touches a row. It keeps
``ray.max_videos_in_flight`` streams open, each with at most ``ray.max_frames_in_flight``
frames submitted and not yet labelled, so memory does not grow with the corpus.

Pass 1 asks a reader for each video's sampled pairs (``stages.centroids.fit_batches``), runs
them through flow -> depth -> features, which draw each frame's seeded sample; the Lloyd
steps compute per-block statistics on the feature actors and merge them on the driver in key
order (``fit_centroids_from_samples`` with a distributed ``partial``), so the centroids equal
the local engine's.

Failures: stateless actors restart and Ray replays their calls (``ray.max_restarts``). A
stream whose reader, depth or tracker state died with an actor is redone from its chunk start
(pass 1: the video's samples are redrawn), up to ``ray.max_chunk_attempts`` times; the writer
drops rows it already has. An input that cannot be decoded (``DataError`` anywhere in its
chunk) is skipped and recorded in the manifest under ``meta["skipped_videos"]`` with the
reason, and the job goes on: the same policy as the local engine.
"""

from __future__ import annotations

import gc
import logging
import os
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from videocups_ray.actors.base import FailurePlan, StreamStateLost, device_for, remote_class
from videocups_ray.actors.cues import DepthActor, FeatureActor, FlowActor
from videocups_ray.actors.reader import ReaderActor
from videocups_ray.actors.tracker import TrackerActor
from videocups_ray.config import Config
from videocups_ray.data.pseudolabels import (
    CENTROIDS_FILE,
    META_KEY,
    SKIPPED_KEY,
    VIDEO_STATS_KEY,
    join_uri,
    output_fs,
    save_output_centroids,
)
from videocups_ray.data.sources import FrameSource
from videocups_ray.data.types import DataError
from videocups_ray.labeling import KMeansStats
from videocups_ray.pipelines.ray_runtime import get_each, ray_session
from videocups_ray.pipelines.pool_autoscaler import PoolAutoscaler
from videocups_ray.pipelines.ray_progress import Progress
from videocups_ray.pipelines.writer_pool import WriterPool
from videocups_ray.stages import ChunkSpec
from videocups_ray.stages.centroids import FitRecord, fit_centroids_from_samples, fit_positions
from videocups_ray.stages.chunks import VideoStitcher, chunk_key, plan_chunks
from videocups_ray.stages.corpus import check_any_sampled, corpus_meta, reusable_centroids, skip_reason, video_done
from videocups_ray.stages.cues import depth_reads_flow, features_read_depth
from videocups_ray.stages.payload import PayloadPlan

log = logging.getLogger(__name__)

_STATE_LOST_MARKERS = ("StreamStateLost", "ActorDiedError", "RayActorError", "ActorUnavailableError")


# --------------------------------------------------------------------------- actor pools
@dataclass
class Pools:
    readers: list
    flow: list
    depth: list
    features: list
    trackers: list
    writer: WriterPool  # driver-side handle of the shard writer pool (pipelines/writer_pool.py)
    wiring: "CueWiring | None" = None  # set with the cue pools
    _rr: dict = field(default_factory=lambda: {"readers": 0, "flow": 0, "depth": 0, "features": 0})

    def next(self, kind: str):
        pool = getattr(self, kind)
        self._rr[kind] = (self._rr[kind] + 1) % len(pool)
        return pool[self._rr[kind]]

    def all(self) -> list:
        return self.readers + self.flow + self.depth + self.features + self.trackers


def make_pools(ray, cfg: Config, input_spec, out: str, failures: tuple[FailurePlan, ...] = ()) -> Pools:
    """Readers and the writer pool; cue pools and trackers come later, only if there is work."""
    # Writers are not restarted: rows one buffered would be lost without the driver knowing, so
    # a writer's death fails the job (WriterLost, one line) and the rerun resumes.
    writer = WriterPool(ray, cfg, out, failures)
    spec = ray.put(input_spec) if isinstance(input_spec, FrameSource) else os.fspath(input_spec)
    reader_cls = remote_class(ReaderActor, cfg.ray, "reader")
    readers = [reader_cls.remote(spec, cfg.synth, failures) for _ in range(cfg.ray.reader.replicas)]
    return Pools(readers, [], [], [], [], writer)


_CUE_ACTORS = {"flow": (FlowActor, "cues.flow"), "depth": (DepthActor, "cues.depth"),
               "features": (FeatureActor, "cues.features")}


def _new_cue_actor(cfg: Config, kind: str, failures: tuple[FailurePlan, ...]):
    cls, stage = _CUE_ACTORS[kind]
    res = getattr(cfg.ray, kind)
    device = device_for(res, getattr(cfg.cues, kind).device, actor=kind, stage=stage)
    return remote_class(cls, cfg.ray, kind).remote(cfg, device, failures)


@dataclass(frozen=True)
class CueWiring:
    """Which part of a batch each cue actor gets (``stages.payload``), and which cue results it
    waits for: depth waits for flow and features for depth only where the backend reads them;
    otherwise they run at the same time (``simulated``/``oracle`` cues)."""

    plan: PayloadPlan
    depth_after_flow: bool
    features_after_depth: bool

    @classmethod
    def from_config(cls, cfg: Config) -> "CueWiring":
        return cls(PayloadPlan.from_config(cfg), depth_reads_flow(cfg.cues.depth),
                   features_read_depth(cfg.cues.features))

    def parts(self, ref) -> list:
        """The part refs of one reader ``batch`` / ``put`` call (a single ref when one part)."""
        return list(ref) if self.plan.num_parts > 1 else [ref]

    def gt(self, parts: list, kind: str):
        i = self.plan.part_of[kind]
        return None if i is None else parts[1 + i]


def add_cue_pools(ray, pools: Pools, cfg: Config, failures: tuple[FailurePlan, ...] = ()) -> None:
    """Flow, depth and feature pools (``ray.<kind>.replicas`` each), set up and ready."""
    pools.wiring = CueWiring.from_config(cfg)
    for kind in _CUE_ACTORS:
        setattr(pools, kind, [_new_cue_actor(cfg, kind, failures) for _ in range(getattr(cfg.ray, kind).replicas)])
    ray.get([a.setup.remote() for a in pools.flow + pools.depth + pools.features])


def replace_dead_cue_actors(ray, pools: Pools, cfg: Config, failures: tuple[FailurePlan, ...] = (),
                            timeout_s: float = 120.0) -> int:
    """Replace cue actors that are dead for good (restarts spent, or a death Ray did not
    recover from); returns how many were replaced. Live ones answer a ping."""
    from ray.exceptions import GetTimeoutError, RayActorError

    replaced = 0
    for kind in _CUE_ACTORS:
        pool = getattr(pools, kind)
        for i, actor in enumerate(pool):
            try:
                ray.get(actor.ready.remote(), timeout=timeout_s)
            except (RayActorError, GetTimeoutError) as exc:
                log.warning("%s actor %d is gone (%s); starting a new one", kind, i, type(exc).__name__)
                ray.kill(actor, no_restart=True)
                pool[i] = _new_cue_actor(cfg, kind, failures)
                ray.get(pool[i].setup.remote())
                replaced += 1
    return replaced


def add_trackers(ray, pools: Pools, cfg: Config, centroids: np.ndarray,
                 failures: tuple[FailurePlan, ...] = ()) -> None:
    tracker_cls = remote_class(TrackerActor, cfg.ray, "tracker")
    pools.trackers = [tracker_cls.remote(cfg, centroids, failures) for _ in range(cfg.ray.max_videos_in_flight)]
    ray.get([t.setup.remote() for t in pools.trackers])


def kill_pools(ray, pools: Pools) -> None:
    try:  # readers delete what they copied from remote storage
        ray.get([r.teardown.remote() for r in pools.readers], timeout=30)
    except Exception as exc:  # noqa: BLE001 - cleanup after the run: reported, never masks the run's own error
        log.warning("readers did not clean up their staging folders: %s", type(exc).__name__)
    for a in pools.all():
        ray.kill(a, no_restart=True)
    pools.writer.kill()


def is_state_lost(exc: BaseException) -> bool:
    """A stream's state died with an actor (redo the chunk), as opposed to bad input or a bug.

    Ray re-raises a remote error as a class deriving from both ``RayTaskError`` and the
    original exception's class, and actor deaths as ``RayActorError`` subclasses.
    """
    if isinstance(exc, StreamStateLost):
        return True
    return bool({c.__name__ for c in type(exc).__mro__} & set(_STATE_LOST_MARKERS))


def submit_cues(pools: Pools, parts: list, stream_depth, progress: Progress | None):
    """flow, depth, features for one batch (``parts``: its base part ref, then its ground-truth
    part refs, ``CueWiring``); returns the three result refs (no fetch). Each actor gets the base
    part and its own ground-truth part; depth waits for flow, and features for depth, only where
    the backend reads them (otherwise the three run at once)."""
    w, base = pools.wiring, parts[0]
    flow_ref, flow_busy = pools.next("flow").process.options(num_returns=2).remote(base, w.gt(parts, "flow"))
    depth_ref, depth_busy = stream_depth.process.options(num_returns=2).remote(
        base, flow_ref if w.depth_after_flow else None, w.gt(parts, "depth"))
    feat_ref, feat_busy = pools.next("features").process.options(num_returns=2).remote(
        base, depth_ref if w.features_after_depth else None, w.gt(parts, "features"))
    if progress is not None:
        for kind, ref in (("flow", flow_busy), ("depth", depth_busy), ("features", feat_busy)):
            progress.add_busy_ref(kind, ref)
    return flow_ref, depth_ref, feat_ref


# --------------------------------------------------------------------------- pass 1
class RayPartial:
    """The ``partial`` hook of ``fit_centroids_from_samples``: per-block k-means statistics on
    the feature actors (blocks shipped once), returned in block order."""

    def __init__(self, ray, actors: list):
        self.ray, self.actors = ray, actors
        self._blocks: list | None = None
        self._groups: list = []

    def __call__(self, blocks: list[np.ndarray], centroids: np.ndarray) -> list[KMeansStats]:
        if self._blocks is not blocks:
            self._blocks = blocks
            groups = np.array_split(np.arange(len(blocks)), len(self.actors))
            self._groups = [self.ray.put([blocks[i] for i in g]) for g in groups if len(g)]
        parts = self.ray.get([self.actors[i % len(self.actors)].partial_stats.remote(ref, centroids)
                              for i, ref in enumerate(self._groups)])
        return [s for part in parts for s in part]


def fit_centroids_ray(ray, cfg: Config, counts: dict[str, int], pools: Pools, skipped: dict[str, str],
                      failures: tuple[FailurePlan, ...] = ()) -> tuple[np.ndarray, FitRecord]:
    """Pass 1 on the reader and cue pools; identical to the local engine's (module doc).

    A video whose sampled frames cannot be decoded is skipped (recorded in ``skipped``); one
    whose depth state died with an actor is sampled again, up to ``ray.max_chunk_attempts``.
    """
    lab, bp = cfg.labeling, cfg.cues.flow.batch_size
    todo = {v: fit_positions(n, lab.kmeans_frames_per_video) for v, n in counts.items()}
    todo = {v: p for v, p in todo.items() if p}
    attempts = dict.fromkeys(todo, 0)
    samples: dict[str, list] = {}
    while todo:
        refs: dict[str, list] = {}
        for k, (vid, positions) in enumerate(sorted(todo.items())):
            w = pools.wiring
            nb, np_ = -(-len(positions) // bp), w.plan.num_parts
            part_refs = pools.next("readers").fit_batches.options(num_returns=nb * np_).remote(
                vid, positions, bp, attempts[vid], w.plan)
            part_refs = list(part_refs) if nb * np_ > 1 else [part_refs]
            depth = pools.depth[k % len(pools.depth)]
            refs[vid] = []
            for b in range(nb):
                parts = part_refs[b * np_:(b + 1) * np_]
                flow_ref, _ = pools.next("flow").process.options(num_returns=2).remote(parts[0], w.gt(parts, "flow"))
                depth_ref, _ = depth.process.options(num_returns=2).remote(
                    parts[0], flow_ref if w.depth_after_flow else None, w.gt(parts, "depth"))
                refs[vid].append(pools.next("features").sample.remote(
                    parts[0], depth_ref if w.features_after_depth else None, lab, 0, w.gt(parts, "features")))
            depth.drop.remote(f"fit:{vid}#{attempts[vid]}")  # runs after the batches (same caller, same actor)
        todo = {}
        for vid, vid_refs in refs.items():
            try:
                samples[vid] = [s for part in ray.get(vid_refs) for s in part]
            except DataError as exc:
                skipped[vid] = skip_reason(exc)
                log.warning("pass 1: skipping video %s: %s", vid, skipped[vid])
            except Exception as exc:  # noqa: BLE001 - classified: state lost is retried, anything else re-raised
                if not is_state_lost(exc) or attempts[vid] + 1 >= cfg.ray.max_chunk_attempts:
                    raise
                attempts[vid] += 1
                log.warning("pass 1: video %s: %s; sampling it again (attempt %d)", vid, type(exc).__name__,
                            attempts[vid] + 1)
                todo[vid] = fit_positions(counts[vid], lab.kmeans_frames_per_video)
        if todo:
            replace_dead_cue_actors(ray, pools, cfg, failures)
    all_samples = [s for part in samples.values() for s in part]
    check_any_sampled(all_samples, skipped)
    cents = fit_centroids_from_samples(all_samples, lab, 0, partial=RayPartial(ray, pools.features))
    return cents, FitRecord({v: counts[v] for v in samples})


# --------------------------------------------------------------------------- pass 2 scheduling
@dataclass
class ChunkJob:
    """One chunk of one video in flight: its actors and outstanding tracker calls."""

    video_id: str
    index: int  # chunk number within the video
    chunk: ChunkSpec
    num_frames: int
    attempt: int = 0
    stream: str = ""
    final_seq: int = 0
    submitted: int = 0
    reader: Any = None
    tracker: Any = None
    depth: Any = None
    inflight: dict = field(default_factory=dict)  # info ref -> (rows ref, frames in batch)
    frames_inflight: int = 0

    @property
    def key(self) -> str:
        return chunk_key(self.chunk)


class Pass2:
    """The streaming scheduler of pass 2 (see the module docstring)."""

    def __init__(self, ray, cfg: Config, counts: dict[str, int], pools: Pools, progress: Progress,
                 failures: tuple[FailurePlan, ...] = (), centroids: np.ndarray | None = None):
        self.ray, self.cfg, self.counts, self.pools, self.progress = ray, cfg, counts, pools, progress
        self.failures, self.centroids = failures, centroids
        self.batch_pairs = cfg.cues.flow.batch_size
        self.free_trackers = deque(pools.trackers)
        self.videos: dict[str, VideoStitcher] = {}
        self.queue: deque[ChunkJob] = deque()
        self.active: list[ChunkJob] = []
        self.retries = 0
        self.labelled = 0
        self.skipped: dict[str, str] = {}
        self._depth_rr = 0
        self.autoscaler = PoolAutoscaler(
            ray, pools, cfg.ray, lambda kind: _new_cue_actor(cfg, kind, failures), progress.in_flight,
        ) if PoolAutoscaler.wanted(cfg.ray) else None

    def add_video(self, vid: str) -> None:
        try:
            chunks = plan_chunks(vid, self.counts[vid], self.cfg)
        except DataError as exc:
            self.skip_video(vid, skip_reason(exc))
            return
        self.videos[vid] = VideoStitcher(vid, chunks, self.cfg.labeling.tau_m)
        for k, c in enumerate(chunks):
            self.queue.append(ChunkJob(vid, k, c, self.counts[vid]))

    # ------------------------------------------------------------------ job lifecycle
    def _start(self, job: ChunkJob) -> None:
        job.stream = f"{job.key}#{job.attempt}"
        job.final_seq = job.chunk.num_batches(job.num_frames, self.batch_pairs) - 1
        job.submitted = 0
        job.reader = self.pools.next("readers")
        job.reader.open.remote(job.stream, job.chunk, job.num_frames, self.batch_pairs)
        job.tracker = self.free_trackers.popleft()
        job.depth = self.pools.depth[self._depth_rr % len(self.pools.depth)]
        self._depth_rr += 1
        self.active.append(job)

    def _fill(self, job: ChunkJob) -> None:
        cap = self.cfg.ray.max_frames_in_flight
        while job.submitted <= job.final_seq and (job.frames_inflight == 0 or job.frames_inflight < cap):
            w = self.pools.wiring
            parts = w.parts(job.reader.batch.options(num_returns=w.plan.num_parts).remote(
                job.stream, job.submitted, w.plan))
            flow_ref, depth_ref, feat_ref = submit_cues(self.pools, parts, job.depth, self.progress)
            rows_ref, info_ref = job.tracker.process.options(num_returns=2).remote(
                parts[0], flow_ref, depth_ref, feat_ref, job.chunk, job.final_seq)
            job.inflight[info_ref] = (rows_ref, self.batch_pairs)
            job.frames_inflight += self.batch_pairs
            job.submitted += 1

    def _release(self, job: ChunkJob) -> None:
        self.active.remove(job)
        job.reader.close.remote(job.stream)
        job.depth.drop.remote(job.stream)
        self.free_trackers.append(job.tracker)

    def _abort(self, job: ChunkJob, exc: BaseException) -> None:
        """Drop the job's stream; redo it (state lost) or skip the video (bad input)."""
        if is_state_lost(exc):
            self._replace_dead(job)
        self._release(job)
        job.tracker.drop.remote(job.stream)
        job.inflight.clear()
        job.frames_inflight = 0
        if isinstance(exc, DataError):
            self.skip_video(job.video_id, skip_reason(exc))
            return
        if not is_state_lost(exc):
            raise exc  # a bug, not a bad input or a lost actor: stop loudly
        if job.attempt + 1 >= self.cfg.ray.max_chunk_attempts:
            self.skip_video(job.video_id, f"{skip_reason(exc)} (after {job.attempt + 1} attempts)")
            return
        self.retries += 1
        log.warning("chunk %s: %s; redoing it from frame %d (attempt %d)", job.key,
                    type(exc).__name__, job.chunk.start, job.attempt + 2)
        job.attempt += 1
        self.queue.appendleft(job)

    def _replace_dead(self, job: ChunkJob) -> None:
        """Actors dead for good (restarts spent) are replaced before the chunk is redone."""
        from ray.exceptions import GetTimeoutError, RayActorError

        replace_dead_cue_actors(self.ray, self.pools, self.cfg, self.failures)
        try:
            self.ray.get(job.tracker.ready.remote(), timeout=120)
        except (RayActorError, GetTimeoutError):
            log.warning("tracker of chunk %s is gone; starting a new one", job.key)
            i = self.pools.trackers.index(job.tracker)
            cls = remote_class(TrackerActor, self.cfg.ray, "tracker")
            self.pools.trackers[i] = cls.remote(self.cfg, self.centroids, self.failures)
            self.ray.get(self.pools.trackers[i].setup.remote())
            job.tracker = self.pools.trackers[i]

    def skip_video(self, vid: str, reason: str) -> None:
        log.warning("skipping video %s: %s", vid, reason)
        self.skipped[vid] = reason
        self.videos.pop(vid, None)
        self.queue = deque(j for j in self.queue if j.video_id != vid)
        for other in [j for j in self.active if j.video_id == vid]:
            self._release(other)
            other.tracker.drop.remote(other.stream)
        self.pools.writer.record_skipped(vid, reason)

    def _finished(self, job: ChunkJob, info: dict) -> None:
        self._release(job)
        stitcher = self.videos.get(job.video_id)
        if stitcher is None:
            return  # the video was skipped meanwhile
        for key, id_map in stitcher.finish(job.index, info["result"]):
            if not key.endswith("@0"):
                self.pools.writer.set_id_map(key, id_map)
            self.pools.writer.release(key)
        if stitcher.done:
            entry = stitcher.stats_entry(job.num_frames)
            self.pools.writer.record_video(VIDEO_STATS_KEY, job.video_id, entry)

    # ------------------------------------------------------------------ main loop
    def run(self) -> None:
        """Until every chunk is labelled: start chunks, keep each one's batches in flight, and
        handle every tracker reply that is ready, in one ``wait`` and one ``get`` per round (the
        driver's CPU per frame is a handful of remote calls per batch, nothing per pixel)."""
        ray = self.ray
        while self.queue or self.active:
            while self.queue and self.free_trackers:
                self._start(self.queue.popleft())
            for job in list(self.active):
                self._fill(job)
            owner = {r: j for j in self.active for r in j.inflight}
            if not owner:
                continue
            ready, _ = ray.wait(list(owner), num_returns=len(owner), timeout=0)
            if not ready:
                ready, _ = ray.wait(list(owner), num_returns=1)
            for ref, info in zip(ready, get_each(ray, ready)):
                self._reply(owner[ref], ref, info)
            if self.autoscaler is not None and self.autoscaler.due():
                self.progress.collect(ray, timeout=0)
                self.autoscaler.step()
            # backpressure on the writers; commits what they returned as one generation
            self.pools.writer.drain(keep=self.cfg.ray.write_drain_keep * self.cfg.ray.writer.replicas)
        self.pools.writer.drain(keep=0)  # errors there are fatal (WriterLost)

    def _reply(self, job: ChunkJob, ref, info) -> None:
        """One tracker reply (its info dict, or the exception its ``get`` raised)."""
        if job not in self.active or ref not in job.inflight:
            return  # the job was aborted, skipped or redone earlier in this round
        rows_ref, n_frames = job.inflight.pop(ref)
        job.frames_inflight -= n_frames
        if isinstance(info, BaseException):
            self._abort(job, info)  # classified there: redone, recorded, or re-raised
            return
        if info["rows"]:
            self.pools.writer.write(job.key, rows_ref, job.index == 0)
            self.labelled += info["rows"]
            self.progress.update(self.ray, info["rows"])
        self.progress.add_busy("tracker", info["busy_s"])
        if info["done"]:
            self._finished(job, info)


# --------------------------------------------------------------------------- entry point
def run_ray(cfg: Config, input_spec: str | os.PathLike | FrameSource, out: str | os.PathLike, *,
            progress: bool = True, failures: tuple[FailurePlan, ...] = ()) -> dict[str, Any]:
    """Pseudo-label every video of ``input_spec`` into shards under ``out`` on Ray; resumable.

    Starts a local Ray instance (or joins ``cfg.ray.address``) unless one is running. Returns
    ``run_local``'s summary plus ``chunks``, ``retries``, ``duplicates`` and ``utilisation``.
    ``failures`` injects actor deaths (tests, chaos runs).
    """
    t0, c0 = time.perf_counter(), time.process_time()
    out = os.fspath(out)
    output_fs(out)  # an unusable --out is one line, before Ray starts
    with ray_session(cfg.ray) as ray:
        pools = make_pools(ray, cfg, input_spec, out, failures)
        try:
            return _run(ray, cfg, out, pools, failures, progress, t0, c0)
        finally:
            kill_pools(ray, pools)


def _run(ray, cfg: Config, out: str, pools: Pools, failures: tuple[FailurePlan, ...], progress: bool,
         t0: float, c0: float) -> dict[str, Any]:
    counts: dict[str, int] = ray.get(pools.readers[0].describe.remote())
    videos = list(counts)
    # the config hash was checked when the pool opened the directory; resume verifies the
    # committed shards of this corpus and retracts damaged ones (issue 17 #2)
    pools.writer.repair(videos)
    pools.writer.setup()
    committed = pools.writer.committed_counts()
    per_video = dict(pools.writer.meta(VIDEO_STATS_KEY, {}))
    todo = [v for v in videos if not video_done(per_video.get(v), committed.get(v, 0), counts[v])]
    skipped: dict[str, str] = {}

    def decodable(vid: str) -> bool:
        positions = fit_positions(counts[vid], cfg.labeling.kmeans_frames_per_video)
        try:
            ray.get(pools.readers[0].fit_batches.remote(vid, positions, len(positions), 0))
        except DataError:
            return False
        return True

    labelled_before = sum(committed.values())
    centroids = reusable_centroids(cfg, counts, out, labelled_before, decodable)
    if todo or centroids is None:
        add_cue_pools(ray, pools, cfg, failures)
    cent_path = join_uri(out, CENTROIDS_FILE)
    if centroids is None:
        centroids, record = fit_centroids_ray(ray, cfg, counts, pools, skipped, failures)
        cent_path = save_output_centroids(out, centroids, record.to_json())
    if todo:
        add_trackers(ray, pools, cfg, centroids, failures)
    rc = cfg.ray
    bar = Progress(sum(counts.values()), {"flow": rc.flow.replicas, "depth": rc.depth.replicas,
                                          "features": rc.features.replicas, "tracker": rc.max_videos_in_flight},
                   progress)
    sched = Pass2(ray, cfg, counts, pools, bar, failures, centroids)
    if cfg.ray.freeze_driver_gc:
        gc.collect()  # what is garbage now is freed, not frozen
        gc.freeze()
    t_label, c_label, m_label = time.perf_counter(), time.process_time(), time.thread_time()
    try:
        for vid, reason in skipped.items():
            sched.skip_video(vid, reason)
        for vid in videos:
            if vid in skipped:
                continue
            if vid not in todo:
                bar.update(ray, counts[vid])
                continue
            sched.add_video(vid)
        sched.run()
        bar.collect(ray, timeout=None)
        counts_w = pools.writer.finish()
    finally:
        if cfg.ray.freeze_driver_gc:
            gc.unfreeze()
        bar.close()
        if sched.autoscaler is not None:
            sched.autoscaler.close()
    label_s = time.perf_counter() - t_label
    # the driver's own cost: all its threads (Ray's RPC and timer threads included) and the
    # scheduling thread alone, for the labelling phase; setup (actors, pass 1) separately
    driver_cpu = {"setup_s": round(c_label - c0, 4), "label_s": round(time.process_time() - c_label, 4),
                  "label_main_thread_s": round(time.thread_time() - m_label, 4), "label_wall_s": round(label_s, 3)}

    per_video = dict(pools.writer.meta(VIDEO_STATS_KEY, {}))
    skipped_all = dict(pools.writer.meta(SKIPPED_KEY, {}))
    meta = corpus_meta(cfg, per_video, videos)
    pools.writer.set_meta(META_KEY, meta)
    pools.writer.commit()
    return {"out": out, "videos": len(videos), "frames": sched.labelled, "written": counts_w["written"],
            "skipped": counts_w["skipped"], "shards": counts_w["shards"], "thing_classes": meta["thing_classes"],
            "centroids": cent_path, "seconds": round(time.perf_counter() - t0, 2),
            "frames_per_s": round(sched.labelled / max(label_s, 1e-9), 3),
            "skipped_videos": skipped_all, "chunks": sum(len(s.chunks) for s in sched.videos.values()),
            "retries": sched.retries, "duplicates": counts_w["duplicates"],
            "utilisation": {kd: round(u, 3) for kd, u in bar.utilisation().items()}, "driver_cpu": driver_cpu,
            "pools": sched.autoscaler.summary() if sched.autoscaler is not None else {}}
