"""Corpus pseudo-labeling on Ray: ``run_ray(cfg, input_spec, out)`` (the ``ray`` engine).

Same stages, same order of calls, same shards as ``pipelines/pseudolabel.py::run_local``,
bit for bit; what Ray adds is parallelism, bounded memory, and surviving failures.

Actor graph (one pool per kind, resources from ``cfg.ray.<kind>``)::

    driver reads frames ──PairBatch ref──▶ FlowActor ─▶ DepthActor (stream-pinned) ─▶ FeatureActor
                                                    \\________ refs only ________/        │
                                                                                          ▼
                                   TrackerActor (one per live stream, reorders by batch seq)
                                                                                          │ rows ref
                                                                                          ▼
                                   WriterActor pool (shard files per writer; the driver commits
                                   their entries to the manifest: pipelines/writer_pool.py)

The driver only moves ObjectRefs: cues go actor to actor through the object store. It keeps
``ray.max_videos_in_flight`` streams open, each with at most ``ray.max_frames_in_flight``
frames submitted and not yet labelled, so memory does not grow with the corpus.

Pass 1 sends each video's sampled frame pairs through flow -> depth -> features, which draw
each frame's seeded sample; the k-means Lloyd steps compute partial statistics per sample
block on the feature actors and merge them on the driver in key order, which is what
``stages.kmeans_step`` does in one process, so the centroids are identical.

Failures: stateless actors restart and Ray replays their calls (``ray.max_restarts``). A
stream whose depth or tracker state died with an actor is redone from its chunk start, up to
``ray.max_chunk_attempts`` times; the writer drops rows it already has. An input that cannot
be decoded (``DataError`` anywhere in its chunk) is recorded in the manifest under
``meta["skipped_videos"]`` with the reason, and the job goes on.
"""

from __future__ import annotations

import io
import logging
import os
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow.fs as pafs

from videocups_ray import __version__
from videocups_ray.actors.base import FailurePlan, StreamStateLost, device_for, remote_class
from videocups_ray.actors.cues import DepthActor, FeatureActor, FlowActor, PairBatch
from videocups_ray.actors.tracker import ChunkSpec, TrackerActor
from videocups_ray.actors.writer import SKIPPED_KEY
from videocups_ray.config import Config
from videocups_ray.data.sources import FrameSource
from videocups_ray.data.types import DataError, Frame
from videocups_ray.labeling import ThingStuffStats, init_centroids, merge_stats, merge_thing_stuff, update_centroids
from videocups_ray.pipelines.pseudolabel import (
    CENTROIDS_FILE,
    META_KEY,
    VIDEO_STATS_KEY,
    resolve_source,
)
from videocups_ray.pipelines.ray_chunks import plan_chunks, stitch_ids, to_global
from videocups_ray.pipelines.ray_runtime import ray_session
from videocups_ray.pipelines.stages import fit_positions
from videocups_ray.pipelines.writer_pool import WriterPool  # [writer pool]

log = logging.getLogger(__name__)

_STATE_LOST_MARKERS = ("StreamStateLost", "ActorDiedError", "RayActorError", "ActorUnavailableError")


# --------------------------------------------------------------------------- storage helpers
def _fs_path(out: str) -> tuple[pafs.FileSystem, str]:
    if "://" in out:
        return pafs.FileSystem.from_uri(out)
    return pafs.LocalFileSystem(), os.path.abspath(out)


def load_centroids_any(out: str, k: int) -> np.ndarray | None:
    """``<out>/centroids.npy`` on any ``pyarrow.fs`` filesystem, or None when absent."""
    fs, base = _fs_path(out)
    path = f"{base}/{CENTROIDS_FILE}"
    if fs.get_file_info(path).type != pafs.FileType.File:
        return None
    with fs.open_input_stream(path) as f:
        cents = np.load(io.BytesIO(f.read()), allow_pickle=False)
    if cents.ndim != 2 or cents.shape[0] != k:
        raise DataError(f"{out}/{CENTROIDS_FILE}: centroids of shape {cents.shape}, config asks for K={k}")
    return cents.astype(np.float32)


def save_centroids_any(out: str, cents: np.ndarray) -> str:
    fs, base = _fs_path(out)
    fs.create_dir(base, recursive=True)
    buf = io.BytesIO()
    np.save(buf, np.asarray(cents, np.float32), allow_pickle=False)
    tmp, path = f"{base}/{CENTROIDS_FILE}.{os.getpid()}.tmp", f"{base}/{CENTROIDS_FILE}"
    with fs.open_output_stream(tmp) as f:
        f.write(buf.getvalue())
    fs.move(tmp, path)
    return path if "://" not in out else f"{out.rstrip('/')}/{CENTROIDS_FILE}"


# --------------------------------------------------------------------------- actor pools
@dataclass
class Pools:
    flow: list
    depth: list
    features: list
    trackers: list
    writer: WriterPool  # [writer pool] driver-side handle of the shard writer actors
    _rr: dict = field(default_factory=lambda: {"flow": 0, "depth": 0, "features": 0})

    def next(self, kind: str):
        pool = getattr(self, kind)
        self._rr[kind] = (self._rr[kind] + 1) % len(pool)
        return pool[self._rr[kind]]


def make_pools(ray, cfg: Config, out: str, failures: tuple[FailurePlan, ...] = ()) -> Pools:
    """Create the writer; cue pools and trackers come later, only if there is work."""
    # [writer pool] Writers are not restarted: rows one buffered would be lost without the driver
    # knowing, so a writer's death fails the job (WriterLost, one line) and the rerun resumes.
    return Pools([], [], [], [], WriterPool(ray, cfg, out, failures))


def add_cue_pools(ray, pools: Pools, cfg: Config, failures: tuple[FailurePlan, ...] = ()) -> None:
    """Flow, depth and feature pools (``ray.<kind>.replicas`` each), set up and ready."""
    rc = cfg.ray
    flow_cls = remote_class(FlowActor, rc, "flow")
    depth_cls = remote_class(DepthActor, rc, "depth")
    feat_cls = remote_class(FeatureActor, rc, "features")
    pools.flow = [flow_cls.remote(cfg, device_for(rc.flow, cfg.cues.flow.device), failures)
                  for _ in range(rc.flow.replicas)]
    pools.depth = [depth_cls.remote(cfg, device_for(rc.depth, cfg.cues.depth.device), failures)
                   for _ in range(rc.depth.replicas)]
    pools.features = [feat_cls.remote(cfg, device_for(rc.features, cfg.cues.features.device), failures)
                      for _ in range(rc.features.replicas)]
    ray.get([a.setup.remote() for a in pools.flow + pools.depth + pools.features])


def add_trackers(ray, pools: Pools, cfg: Config, centroids: np.ndarray,
                 failures: tuple[FailurePlan, ...] = ()) -> None:
    tracker_cls = remote_class(TrackerActor, cfg.ray, "tracker")
    pools.trackers = [tracker_cls.remote(cfg, centroids, failures) for _ in range(cfg.ray.max_videos_in_flight)]
    ray.get([t.setup.remote() for t in pools.trackers])


def kill_pools(ray, pools: Pools) -> None:
    for a in pools.flow + pools.depth + pools.features + pools.trackers:
        ray.kill(a, no_restart=True)
    pools.writer.kill()  # [writer pool]


# --------------------------------------------------------------------------- progress
class Progress:
    """Frames/s, ETA (tqdm) and per-stage utilisation (busy seconds / wall / replicas)."""

    def __init__(self, total: int, replicas: dict[str, int], enabled: bool):
        from tqdm import tqdm

        self.bar = tqdm(total=total, desc="pseudolabel[ray]", unit="frame", disable=not enabled)
        self.replicas, self.busy = replicas, {k: 0.0 for k in replicas}
        self._refs: dict[str, list] = {k: [] for k in replicas}
        self.t0, self._last = time.perf_counter(), 0.0

    def add_busy_ref(self, kind: str, ref) -> None:
        self._refs[kind].append(ref)

    def add_busy(self, kind: str, seconds: float) -> None:
        self.busy[kind] += seconds

    def update(self, ray, frames: int) -> None:
        self.bar.update(frames)
        now = time.perf_counter()
        if now - self._last < 1.0:
            return
        self._last = now
        self.collect(ray, timeout=0)
        self.bar.set_postfix_str(" ".join(f"{k}={u:.0%}" for k, u in self.utilisation().items()))

    def collect(self, ray, timeout: float | None = 0) -> None:
        for kind, refs in self._refs.items():
            if not refs:
                continue
            ready, rest = ray.wait(refs, num_returns=len(refs), timeout=timeout, fetch_local=True)
            for r in ready:
                try:
                    self.busy[kind] += float(ray.get(r))
                except Exception as exc:  # noqa: BLE001 - a failed call has no busy time; counted elsewhere
                    log.debug("busy time of a failed %s call: %s", kind, type(exc).__name__)
            self._refs[kind] = rest

    def utilisation(self) -> dict[str, float]:
        wall = max(time.perf_counter() - self.t0, 1e-9)
        return {k: self.busy[k] / wall / max(self.replicas[k], 1) for k in self.busy}

    def close(self) -> None:
        self.bar.close()


# --------------------------------------------------------------------------- submitting a stream
def submit_cues(pools: Pools, batch_ref, stream_depth, progress: Progress):
    """flow -> depth -> features for one batch; returns the three result refs (no fetch)."""
    flow_ref, flow_busy = pools.next("flow").process.options(num_returns=2).remote(batch_ref)
    depth_ref, depth_busy = stream_depth.process.options(num_returns=2).remote(batch_ref, flow_ref)
    feat_ref, feat_busy = pools.next("features").process.options(num_returns=2).remote(batch_ref, depth_ref)
    for kind, ref in (("flow", flow_busy), ("depth", depth_busy), ("features", feat_busy)):
        progress.add_busy_ref(kind, ref)
    return flow_ref, depth_ref, feat_ref


def iter_pair_batches(stream: str, frames: Iterator[Frame], batch_pairs: int, with_last: bool
                      ) -> Iterator[PairBatch]:
    """Consecutive frames -> batches of pairs sharing one frame; then the last-frame batch.

    ``with_last``: the stream ends at the video's end, so its final frame gets a last-frame
    batch; otherwise the final frame is only the t+1 of the last pair (a chunk's lookahead).
    """
    pending: list[Frame] = []
    seq = 0
    for frame in frames:
        pending.append(frame)
        if len(pending) > batch_pairs:
            yield PairBatch(stream, seq, pending[:-1], pending[1:])
            seq += 1
            pending = pending[-1:]
    if len(pending) > 1:
        yield PairBatch(stream, seq, pending[:-1], pending[1:])
        seq += 1
        pending = pending[-1:]
    if with_last and pending:
        yield PairBatch(stream, seq, pending, [], last=True)


def count_batches(num_pairs: int, batch_pairs: int, with_last: bool) -> int:
    return -(-num_pairs // batch_pairs) + int(with_last)


# --------------------------------------------------------------------------- pass 1
def fit_centroids_ray(ray, cfg: Config, source: FrameSource, pools: Pools, progress_enabled: bool,
                      seed: int = 0, skipped: dict[str, str] | None = None) -> np.ndarray:
    """Pass 1 on the cue pools; identical to ``pseudolabel.fit_source_centroids`` (module doc).

    A video whose sampled frames cannot be read or processed (``DataError``) is left out and
    recorded in ``skipped`` (it is skipped in pass 2 as well).
    """
    lab = cfg.labeling
    batch_pairs = cfg.cues.flow.batch_size
    per_video: dict[str, list] = {}
    skipped = {} if skipped is None else skipped
    for k, vid in enumerate(source.videos()):
        positions = fit_positions(source.num_frames(vid), lab.kmeans_frames_per_video)
        if not positions:
            continue
        try:
            frames = [f for p in positions for f in source.frames(vid, p, p + 2)]
        except DataError as exc:
            skipped[vid] = f"DataError: {exc}"
            continue
        a, b = frames[0::2], frames[1::2]
        depth = pools.depth[k % len(pools.depth)]
        stream = f"fit:{vid}"
        refs = per_video[vid] = []
        for seq, s in enumerate(range(0, len(a), batch_pairs)):
            batch_ref = ray.put(PairBatch(stream, seq, a[s:s + batch_pairs], b[s:s + batch_pairs]))
            flow_ref, _ = pools.next("flow").process.options(num_returns=2).remote(batch_ref)
            depth_ref, _ = depth.process.options(num_returns=2).remote(batch_ref, flow_ref)
            refs.append(pools.next("features").sample.remote(batch_ref, depth_ref, lab, seed))
        depth.end_stream.remote(stream)
    parts = []
    for vid, refs in per_video.items():
        try:
            parts.extend(ray.get(refs))
        except DataError as exc:
            skipped[vid] = f"DataError: {str(exc).strip().splitlines()[-1][:300]}"
    for vid, reason in skipped.items():
        log.warning("pass 1: skipping video %s: %s", vid, reason)
    samples = sorted((kv for part in parts for kv in part), key=lambda kv: kv[0])
    if not samples:
        raise DataError("centroid fit: no frames were sampled (every video has fewer than 2 frames?)")
    blocks = [s for _, s in samples]
    cents = init_centroids(np.concatenate(blocks), lab.num_clusters, seed)
    groups = np.array_split(np.arange(len(blocks)), len(pools.features))
    group_refs = [ray.put([blocks[i] for i in g]) for g in groups if len(g)]
    for _ in range(lab.kmeans_iters):
        parts = ray.get([pools.features[i % len(pools.features)].partial_stats.remote(ref, cents)
                         for i, ref in enumerate(group_refs)])
        stats = merge_stats([s for part in parts for s in part])  # key order, as kmeans_step
        cents, _ = update_centroids(cents, stats)
    return cents.astype(np.float32)


# --------------------------------------------------------------------------- pass 2 scheduling
@dataclass
class ChunkJob:
    """One chunk of one video in flight: its batches, actors and outstanding tracker calls."""

    video_id: str
    index: int  # chunk number within the video
    chunk: ChunkSpec
    attempt: int = 0
    stream: str = ""
    batches: Iterator[PairBatch] | None = None
    final_seq: int = 0
    submitted: int = 0
    tracker: Any = None
    depth: Any = None
    inflight: dict = field(default_factory=dict)  # info ref -> (rows ref, frames in batch)
    frames_inflight: int = 0
    done_info: dict | None = None

    @property
    def key(self) -> str:
        return f"{self.video_id}@{self.chunk.start}"


@dataclass
class VideoState:
    chunks: list[ChunkSpec]
    finished: dict[int, dict] = field(default_factory=dict)  # chunk index -> tracker final info
    mapped: int = 0  # chunks whose IDs are stitched (in order)
    next_id: int = 1
    prev_tail: dict | None = None
    failed: str | None = None
    stats: list[ThingStuffStats] = field(default_factory=list)


def _is_state_lost(exc: BaseException) -> bool:
    """A stream's state died with an actor (redo the chunk), as opposed to bad input or a bug.

    Ray re-raises a remote error as a class deriving from both ``RayTaskError`` and the
    original exception's class, and actor deaths as ``RayActorError`` subclasses.
    """
    if isinstance(exc, StreamStateLost):
        return True
    return bool({c.__name__ for c in type(exc).__mro__} & set(_STATE_LOST_MARKERS))


class Pass2:
    """The streaming scheduler of pass 2 (see the module docstring)."""

    def __init__(self, ray, cfg: Config, source: FrameSource, pools: Pools, progress: Progress):
        self.ray, self.cfg, self.source, self.pools, self.progress = ray, cfg, source, pools, progress
        self.batch_pairs = cfg.cues.flow.batch_size
        self.free_trackers = deque(pools.trackers)
        self.videos: dict[str, VideoState] = {}
        self.queue: deque[ChunkJob] = deque()
        self.active: list[ChunkJob] = []
        self.retries = 0
        self.labelled = 0
        self.skipped: dict[str, str] = {}
        self._depth_rr = 0

    def add_video(self, vid: str) -> None:
        try:
            chunks = plan_chunks(vid, self.source.num_frames(vid), self.cfg)
        except DataError as exc:
            self._skip_video(vid, str(exc))
            return
        self.videos[vid] = VideoState(chunks)
        for k, c in enumerate(chunks):
            self.queue.append(ChunkJob(vid, k, c))

    # ------------------------------------------------------------------ job lifecycle
    def _start(self, job: ChunkJob) -> None:
        c = job.chunk
        n = self.source.num_frames(job.video_id)
        end = c.stop + c.tail  # frames with cues
        with_last = end == n
        stop_read = end if with_last else end + 1  # + lookahead frame for the last pair's flow
        job.stream = f"{job.key}#{job.attempt}"
        job.batches = iter_pair_batches(job.stream, self.source.frames(job.video_id, c.start, stop_read),
                                        self.batch_pairs, with_last)
        job.final_seq = count_batches(stop_read - c.start - 1, self.batch_pairs, with_last) - 1
        job.submitted = 0
        job.tracker = self.free_trackers.popleft()
        job.depth = self.pools.depth[self._depth_rr % len(self.pools.depth)]
        self._depth_rr += 1
        self.active.append(job)

    def _fill(self, job: ChunkJob) -> None:
        cap = self.cfg.ray.max_frames_in_flight
        while job.batches is not None and (job.frames_inflight == 0 or job.frames_inflight < cap):
            batch = next(job.batches, None)  # DataError from a corrupt frame surfaces here
            if batch is None:
                job.batches = None
                job.depth.end_stream.remote(job.stream)
                return
            batch_ref = self.ray.put(batch)
            flow_ref, depth_ref, feat_ref = submit_cues(self.pools, batch_ref, job.depth, self.progress)
            rows_ref, info_ref = job.tracker.process.options(num_returns=2).remote(
                batch_ref, flow_ref, depth_ref, feat_ref, job.chunk, job.final_seq)
            job.inflight[info_ref] = (rows_ref, len(batch.frames_t))
            job.frames_inflight += len(batch.frames_t)
            job.submitted += 1

    def _abort(self, job: ChunkJob, exc: BaseException) -> None:
        """Drop the job's stream; redo it (state lost) or give the video up (bad input)."""
        self.active.remove(job)
        job.tracker.drop.remote(job.stream)
        job.depth.drop.remote(job.stream)
        self.free_trackers.append(job.tracker)
        job.inflight.clear()
        job.frames_inflight = 0
        if _is_state_lost(exc) and job.attempt + 1 < self.cfg.ray.max_chunk_attempts:
            self.retries += 1
            log.warning("chunk %s: %s; redoing it from frame %d (attempt %d)", job.key,
                        type(exc).__name__, job.chunk.start, job.attempt + 2)
            job.attempt += 1
            self.queue.appendleft(job)
            return
        if not isinstance(exc, DataError) and not _is_state_lost(exc):
            raise exc  # a bug, not a bad input: stop loudly
        self._skip_video(job.video_id, f"{type(exc).__name__}: {str(exc).strip().splitlines()[-1][:300]}")

    def _skip_video(self, vid: str, reason: str) -> None:
        log.warning("skipping video %s: %s", vid, reason)
        self.skipped[vid] = reason
        state = self.videos.get(vid)
        if state is not None:
            state.failed = reason
        self.queue = deque(j for j in self.queue if j.video_id != vid)
        for other in [j for j in self.active if j.video_id == vid]:
            self.active.remove(other)
            other.tracker.drop.remote(other.stream)
            other.depth.drop.remote(other.stream)
            self.free_trackers.append(other.tracker)
        self.pools.writer.record_skipped(vid, reason)  # [writer pool]

    def _finished(self, job: ChunkJob, info: dict) -> None:
        self.active.remove(job)
        self.free_trackers.append(job.tracker)
        state = self.videos[job.video_id]
        state.finished[job.index] = info
        while state.mapped in state.finished:  # stitch in chunk order
            k = state.mapped
            fin = state.finished[k]
            key = f"{job.video_id}@{state.chunks[k].start}"
            id_map, state.next_id = stitch_ids(state.prev_tail, fin["head"], fin["ids"], state.next_id,
                                               self.cfg.labeling.tau_m, f"video {job.video_id!r}")
            state.prev_tail = to_global(fin["tail"], id_map)
            if k > 0:
                self.pools.writer.set_id_map(key, id_map)  # [writer pool]
            self.pools.writer.release(key)
            state.stats.append(ThingStuffStats.from_state_dict(fin["stats"]))
            state.mapped += 1
            del state.finished[k]
        if state.mapped == len(state.chunks) and state.failed is None:
            merged = merge_thing_stuff(state.stats)
            n = self.source.num_frames(job.video_id)
            entry = {"in_instance": merged.in_instance.tolist(), "total": merged.total.tolist(), "frames": n}
            self.pools.writer.record_video(VIDEO_STATS_KEY, job.video_id, entry)  # [writer pool]

    # ------------------------------------------------------------------ main loop
    def run(self) -> None:
        ray = self.ray
        while self.queue or self.active:
            while self.queue and self.free_trackers:
                self._start(self.queue.popleft())
            for job in list(self.active):
                try:
                    self._fill(job)
                except DataError as exc:
                    self._abort(job, exc)
            refs = [r for j in self.active for r in j.inflight]
            if not refs:
                continue
            ready, _ = ray.wait(refs, num_returns=1)
            job = next(j for j in self.active if ready[0] in j.inflight)
            rows_ref, n_frames = job.inflight.pop(ready[0])
            job.frames_inflight -= n_frames
            try:
                info = ray.get(ready[0])
            except Exception as exc:  # noqa: BLE001 - classified in _abort: retried or recorded, never ignored
                self._abort(job, exc)
                continue
            if info["rows"]:
                self.pools.writer.write(job.key, rows_ref, job.index == 0)  # [writer pool]
                self.labelled += info["rows"]
                self.progress.update(ray, info["rows"])
            self.progress.add_busy("tracker", info["busy_s"])
            self.pools.writer.drain(keep=self.cfg.ray.writer.replicas * 16)  # [writer pool] commits too
            if info["done"]:
                self._finished(job, info)
        self.pools.writer.drain(keep=0)  # [writer pool] errors there are fatal (WriterLost)


# --------------------------------------------------------------------------- entry point
def run_ray(cfg: Config, input_spec: str | os.PathLike | FrameSource, out: str | os.PathLike, *,
            progress: bool = True, failures: tuple[FailurePlan, ...] = ()) -> dict[str, Any]:
    """Pseudo-label every video of ``input_spec`` into shards under ``out`` on Ray; resumable.

    Starts a local Ray instance (or joins ``cfg.ray.address``) unless one is running. Returns
    ``run_local``'s summary plus ``skipped_videos``, ``chunks``, ``retries``, ``duplicates``
    and ``utilisation``. ``failures`` injects actor deaths (tests, chaos runs).
    """
    t0 = time.perf_counter()
    out = os.fspath(out)
    source = resolve_source(cfg, input_spec)
    k = cfg.labeling.num_clusters
    with ray_session(cfg.ray) as ray:
        pools = make_pools(ray, cfg, out, failures)
        try:
            return _run(ray, cfg, source, out, pools, progress, failures, t0, k)
        finally:
            kill_pools(ray, pools)


def _run(ray, cfg: Config, source: FrameSource, out: str, pools: Pools, progress: bool,
         failures: tuple[FailurePlan, ...], t0: float, k: int) -> dict[str, Any]:
    # [writer pool] the config hash was checked when the pool opened the directory; resume
    # verifies the committed shards of this corpus and retracts damaged ones (issue 17 #2)
    videos = source.videos()
    pools.writer.repair(videos)
    pools.writer.setup()
    committed = pools.writer.committed_counts()
    per_video = dict(pools.writer.meta(VIDEO_STATS_KEY, {}))
    todo = [v for v in videos if not (v in per_video and per_video[v].get("frames") == source.num_frames(v)
                                      and committed.get(v, 0) >= source.num_frames(v))]
    centroids = load_centroids_any(out, k)
    bad_inputs: dict[str, str] = {}
    if todo or centroids is None:
        add_cue_pools(ray, pools, cfg, failures)
    if centroids is None:
        centroids = fit_centroids_ray(ray, cfg, source, pools, progress, skipped=bad_inputs)
        cent_path = save_centroids_any(out, centroids)
    else:
        log.info("pseudolabel[ray]: reusing centroids in %s", out)
        cent_path = f"{out.rstrip('/')}/{CENTROIDS_FILE}"
    if todo:
        add_trackers(ray, pools, cfg, centroids, failures)
    total = sum(source.num_frames(v) for v in videos)
    rc = cfg.ray
    bar = Progress(total, {"flow": rc.flow.replicas, "depth": rc.depth.replicas, "features": rc.features.replicas,
                           "tracker": rc.max_videos_in_flight}, progress)
    sched = Pass2(ray, cfg, source, pools, bar)
    t_label = time.perf_counter()
    try:
        for vid, reason in bad_inputs.items():
            sched._skip_video(vid, reason)
        for vid in videos:
            if vid in bad_inputs:
                continue
            if vid not in todo:
                bar.update(ray, source.num_frames(vid))
                continue
            sched.add_video(vid)
        sched.run()
        bar.collect(ray, timeout=None)
        counts = pools.writer.finish()  # [writer pool]
    finally:
        bar.close()
    label_s = time.perf_counter() - t_label

    per_video = dict(pools.writer.meta(VIDEO_STATS_KEY, {}))  # [writer pool]
    entries = [ThingStuffStats(k, np.array(e["in_instance"], np.int64), np.array(e["total"], np.int64))
               for v, e in sorted(per_video.items()) if v in set(videos)]
    merged = merge_thing_stuff(entries or [ThingStuffStats(k)])
    things = merged.thing_classes(cfg.labeling.psi)
    skipped = dict(pools.writer.meta(SKIPPED_KEY, {}))  # [writer pool]
    meta = {"thing_classes": list(things), "ratios": [round(float(r), 6) for r in merged.ratios()],
            "psi": cfg.labeling.psi, "num_clusters": k, "centroids": CENTROIDS_FILE,
            "ignore_label": cfg.labeling.ignore_label, "config_hash": cfg.hash(),
            "code_version": __version__, "videos": videos}
    pools.writer.set_meta(META_KEY, meta)  # [writer pool]
    pools.writer.commit()
    return {"out": out, "videos": len(videos), "frames": sched.labelled, "written": counts["written"],
            "skipped": counts["skipped"], "shards": counts["shards"], "thing_classes": list(things),
            "centroids": cent_path, "seconds": round(time.perf_counter() - t0, 2),
            "frames_per_s": round(sched.labelled / max(label_s, 1e-9), 3),
            "skipped_videos": skipped, "chunks": sum(len(s.chunks) for s in sched.videos.values()),
            "retries": sched.retries, "duplicates": counts["duplicates"],
            "utilisation": {kd: round(u, 3) for kd, u in bar.utilisation().items()}}
