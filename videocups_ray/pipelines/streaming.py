"""Online pseudo-labeling: frames pushed as they arrive, labels out with bounded latency.

:class:`StreamingPseudoLabeler` runs the same stages as the corpus engines, one frame pair at
a time, through the shared per-stream scheduler (``videocups_ray/stages``). Frame t gets
a *provisional* label (``final=False``) first, then, when its clip closes, the *final* one
(clip-level class alignment, short tracks dropped). Final frames equal the corpus engines'
rows bit for bit in both latency modes (``stream.latency``):

- ``"one_frame"`` (default): t is labelled when t+1 arrives. The vote window of t needs t+1,
  whose real proposal needs t+1's forward flow, i.e. frame t+2; so t+1 is stood in by cues of
  the pair (t, t+1) alone (depth/motion of t carried to t+1 along the backward flow, as for a
  video's last frame; features of t+1 on that depth) and only its semantics enter the vote
  (:meth:`~videocups_ray.labeling.VideoTracker.preview`, which leaves the tracker untouched).
  Track IDs of a provisional frame are the exact ones; only its voted semantics can differ.
  When t+2 arrives, t+1's cues are computed exactly and the tracker advances as in corpus
  mode. Latency: one frame period plus processing. The stand-in costs a second features +
  semantics pass and a second association per frame (bench_ray.py reports both modes: latency,
  processing time, STQ of first and final labels). Running it in a helper thread beside t's
  proposal measured no gain on 2 busy cores, so it runs in line;
- ``"exact"``: the tracker's own online emission, t labelled when t+2 arrives (two periods
  plus processing), provisional labels with exact cues.

:class:`StreamRunner` adds arrival-time decoupling: a bounded queue between the producer
(camera, file, watched folder) and a worker thread. When processing is slower than arrival,
``stream.backpressure`` decides: ``block`` (the producer waits; frames are never lost;
waits counted) or ``drop`` (the newest frame is discarded, counted, logged once, and a dropped
frame ends the current video segment, since the tracker needs consecutive frames). Both are
reported in the summary, with latency (arrival -> first label, so waits count) and the
per-frame processing time that separates machine load from design.

``run_stream(cfg, source, out)`` wires one source (camera index, stream URL, video file, or a
folder to watch) to the runner in this process and writes final frames to shards. Several
streams at once, on the Ray actor graph or locally: ``pipelines/stream_service.py``, whose Ray
labeler (``pipelines/ray_streaming.py``) is driven by the same :class:`StreamRunner`.
"""

from __future__ import annotations

import itertools
import logging
import os
import queue
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from videocups_ray import __version__
from videocups_ray.config import Config
from videocups_ray.cues import DepthResult, FlowResult
from videocups_ray.data.types import DataError, Frame
from videocups_ray.labeling import FrameProposal, LabelledFrame, VideoTracker
from videocups_ray.stages import ChunkSpec, CueStages, DepthStream, LabelStage, LabelStream, PairBatcher
from videocups_ray.stages.centroids import fit_centroids

log = logging.getLogger(__name__)
LATENCY_MODES = ("one_frame", "exact")
STREAM_URL_SCHEMES = ("rtsp", "rtsps", "rtmp", "http", "https", "udp", "tcp", "srt")  # opened by OpenCV/FFmpeg


class StreamingPseudoLabeler:
    """``push(frame) -> labelled frames`` for one live stream at a time (see the module doc).

    The stream runs through the shared scheduler objects (``stages.scheduler``): a
    :class:`PairBatcher` of one pair per batch, a :class:`DepthStream` and a
    :class:`LabelStream` with an open-ended chunk, so its final rows are the corpus engines'.
    Final rows wait in :meth:`take_rows` for the caller to write them.
    """

    def __init__(self, cfg: Config, centroids: np.ndarray, *, stages: CueStages | None = None,
                 latency: Literal["one_frame", "exact"] | None = None):
        self.cfg = cfg
        self.latency = cfg.stream.latency if latency is None else latency
        if self.latency not in LATENCY_MODES:
            raise ValueError(f"stream latency must be one of {LATENCY_MODES}, got {self.latency!r}")
        self.stages = stages or CueStages.from_config(cfg)
        self.stages.setup()
        # one_frame: provisional frames come from preview(); the tracker itself emits finals only
        self.label = LabelStage(cfg, centroids, emit="online" if self.latency == "exact" else "clip")
        self.label.setup()
        self._warned_stand_in = False
        self._rows: list[dict] = []
        self._reset_stream()

    @property
    def tracker(self) -> VideoTracker:
        return self.label.tracker

    def _reset_stream(self) -> None:
        self.video_id: str | None = None
        self._batcher: PairBatcher | None = None
        self._depth: DepthStream | None = None
        self._ls: LabelStream | None = None

    def push(self, frame: Frame) -> list[LabelledFrame]:
        """Add the next frame; a new ``video_id`` ends the previous video first."""
        out: list[LabelledFrame] = []
        if self.video_id is not None and frame.video_id != self.video_id:
            out += self.end()
        if self.video_id is None:
            self.video_id = frame.video_id
            stream = f"{frame.video_id}@{frame.frame_index}"
            self._batcher = PairBatcher(stream, 1)
            self._depth = DepthStream(self.stages.depth, stream)
            self._ls = LabelStream(self.label, ChunkSpec(str(frame.video_id), int(frame.frame_index), None), stream)
        for batch in self._batcher.push(frame):
            out += self._run(batch)
            if self.latency == "one_frame":
                prev, flow, prev_depth = self._depth.prev
                labelled = self.tracker.preview(self._stand_in(frame, prev, flow, prev_depth))
                out += [] if labelled is None else [labelled]
        return out

    def _run(self, batch) -> list[LabelledFrame]:
        flow = None if batch.last else self.stages.flow.process(batch.frames_t, batch.frames_t1)
        dr = self._depth.process(batch, flow)
        fe = self.stages.features.process(batch.frames_t, dr.depth)
        out = self._ls.process(batch, flow, dr, fe)
        self._rows += self._ls.take_rows()
        return out

    def take_rows(self) -> list[dict]:
        """Final shard rows labelled so far and not yet taken."""
        rows, self._rows = self._rows, []
        return rows

    def _stand_in(self, frame: Frame, prev: Frame, flow: FlowResult, prev_depth: DepthResult) -> FrameProposal:
        """Frame t+1 (``frame``) from the pair (t, t+1) alone, for the vote of t; see the module
        docstring. Depth carry-over, features and semantics only: region growing is skipped, as
        the preview uses no instances of t+1 (cProfile, 256x512: ~0.025 s of a ~0.23 s push)."""
        if not self._warned_stand_in:
            log.warning("stream %s: stream_latency 'one_frame': provisional labels of frame t vote with a stand-in "
                        "for t+1 (depth/motion carried from t along the backward flow, the last-frame fallback); "
                        "final labels are exact", frame.video_id)
            self._warned_stand_in = True
        dr = self.stages.depth.process_last(frame, prev, flow, prev_depth)
        fe = self.stages.features.process([frame], dr.depth)
        semantic = self.tracker.semantics(fe.high[0], fe.low[0], dr.depth[0])
        no_instances = np.zeros(semantic.shape, np.int32)  # preview() uses the stand-in's semantics only
        return FrameProposal(frame.video_id, int(frame.frame_index), no_instances, semantic,
                             None, flow.bw[0], None, flow.occlusion_bw[0])

    def close(self) -> None:
        """Release the cue stages' resources (models, OpenCV objects)."""
        self.stages.teardown()

    def end(self) -> list[LabelledFrame]:
        """The stream (or video) ended or was interrupted: label the last frame, close the open
        clip early (its frames become final), reset."""
        out: list[LabelledFrame] = []
        if self._batcher is not None:
            if self._batcher.seq == 0:
                log.warning("stream %s ended after a single frame; it has no optical flow and gets no labels",
                            self.video_id)
            else:
                for batch in self._batcher.end(with_last=True):
                    out += self._run(batch)
                out += self._ls.finish()
                self._rows += self._ls.take_rows()
        self._reset_stream()
        return out


# --------------------------------------------------------------------------- runner with backpressure
@dataclass
class StreamStats:
    """Counts and timings of one :class:`StreamRunner` (all times in seconds)."""

    received: int = 0
    dropped: int = 0  # ``drop`` policy: frames discarded because the queue was full
    blocked: int = 0  # ``block`` policy: offers that had to wait for room in the queue
    blocked_s: float = 0.0  # total time producers waited (counted in the latencies too)
    provisional: int = 0
    final: int = 0
    latencies_s: list[float] = field(default_factory=list)  # arrival -> first label (provisional or final)
    processing_s: list[float] = field(default_factory=list)  # labeler time per pushed frame

    def summary(self) -> dict[str, Any]:
        def pct(values: list[float], q: float) -> float:
            return round(float(np.percentile(values, q)), 4) if values else float("nan")

        return {"received": self.received, "dropped": self.dropped, "blocked": self.blocked,
                "blocked_s": round(self.blocked_s, 3), "provisional": self.provisional, "final": self.final,
                "latency_p50_s": pct(self.latencies_s, 50), "latency_p95_s": pct(self.latencies_s, 95),
                "processing_p50_s": pct(self.processing_s, 50), "processing_p95_s": pct(self.processing_s, 95)}


class StreamRunner:
    """A worker thread feeding a :class:`StreamingPseudoLabeler` from a bounded queue."""

    _END = object()

    def __init__(self, labeler: StreamingPseudoLabeler, on_labels: Callable[[LabelledFrame], None], *,
                 max_pending: int, policy: str):
        if policy not in ("block", "drop"):
            raise ValueError(f"backpressure policy must be 'block' or 'drop', got {policy!r}")
        self.labeler, self.on_labels, self.policy = labeler, on_labels, policy
        self.stats = StreamStats()
        self._queue: queue.Queue = queue.Queue(maxsize=max_pending)
        self._arrival: dict[tuple[str, int], float] = {}
        self._segment = 0  # bumped after a drop: frames after a gap start a new video segment
        self._error: BaseException | None = None
        self._warned_drop = False
        self._thread = threading.Thread(target=self._work, name="stream-labeler", daemon=True)
        self._thread.start()

    def offer(self, frame: Frame) -> bool:
        """Hand a frame over; False if it was dropped (``drop`` policy and the queue is full)."""
        if self._error is not None:
            raise self._error
        self.stats.received += 1
        t = time.perf_counter()
        if self.policy == "block":
            try:
                self._queue.put_nowait((frame, t, self._segment))
            except queue.Full:
                self.stats.blocked += 1
                self._put_waiting((frame, t, self._segment))
                self.stats.blocked_s += time.perf_counter() - t
            return True
        try:
            self._queue.put_nowait((frame, t, self._segment))
            return True
        except queue.Full:
            self.stats.dropped += 1
            self._segment += 1
            if not self._warned_drop:
                log.warning("stream: processing is slower than arrival; dropping frames (policy 'drop', queue of "
                            "%d); each drop starts a new tracking segment", self._queue.maxsize)
                self._warned_drop = True
            return False

    def _put_waiting(self, item: tuple) -> None:
        """Wait for room, but not for a worker that has died (its error is raised instead)."""
        while True:
            try:
                self._queue.put(item, timeout=0.2)
                return
            except queue.Full:
                if self._error is not None or not self._thread.is_alive():
                    raise self._error or RuntimeError("stream worker stopped")

    def close(self) -> StreamStats:
        if self._thread.is_alive():
            self._put_waiting((self._END, 0.0, 0))  # raises the worker's error if it died meanwhile
        self._thread.join()
        if self._error is not None:
            raise self._error
        return self.stats

    def _next(self) -> tuple:
        """The next queued frame. A pipelined labeler (the Ray engine's: ``pending`` replies)
        is polled for replies while no frame waits, so labels are delivered as they come."""
        while getattr(self.labeler, "pending", 0):
            try:
                return self._queue.get(timeout=self.labeler.poll_s)
            except queue.Empty:
                self._deliver(self.labeler.poll(self.labeler.poll_s))
                self.stats.processing_s += self.labeler.take_processing()
        return self._queue.get()

    def _work(self) -> None:
        seg_video: tuple[str, int] | None = None
        pipelined = hasattr(self.labeler, "take_processing")
        try:
            while True:
                frame, t, seg = self._next()
                if frame is self._END:
                    self._deliver(self.labeler.end())
                    if pipelined:
                        self.stats.processing_s += self.labeler.take_processing()
                    return
                if seg_video is not None and seg_video != (frame.video_id, seg):
                    self._deliver(self.labeler.end())
                seg_video = (frame.video_id, seg)
                self._arrival[(frame.video_id, frame.frame_index)] = t
                start = time.perf_counter()
                labelled = self.labeler.push(frame)
                if pipelined:  # submit -> reply of each frame, not the time of this call
                    self.stats.processing_s += self.labeler.take_processing()
                else:
                    self.stats.processing_s.append(time.perf_counter() - start)
                self._deliver(labelled)
        except BaseException as exc:  # noqa: BLE001 - handed to the producer thread and re-raised there
            self._error = exc

    def _deliver(self, labelled: list[LabelledFrame]) -> None:
        now = time.perf_counter()
        for lf in labelled:
            t = self._arrival.get((lf.video_id, lf.frame_index))
            if t is not None:
                self.stats.latencies_s.append(now - t)
                del self._arrival[(lf.video_id, lf.frame_index)]
            if lf.final:
                self.stats.final += 1
            else:
                self.stats.provisional += 1
            self.on_labels(lf)


# --------------------------------------------------------------------------- sources
def _camera_frames(index: int | str, video_id: str) -> Iterator[Frame]:
    """Frames of a camera index or of a URL OpenCV/FFmpeg opens (rtsp://, http://, ...)."""
    import cv2

    cap = cv2.VideoCapture(index)
    if not cap.isOpened():
        raise DataError(f"{'camera ' if isinstance(index, int) else ''}{index}: cannot be opened")
    try:
        i = 0
        while True:
            ok, bgr = cap.read()
            if not ok:
                return
            yield Frame(video_id, i, np.ascontiguousarray(bgr[..., ::-1]))
            i += 1
    finally:
        cap.release()


def _watch_folder(folder: Path, video_id: str, idle_timeout_s: float, poll_s: float = 0.2) -> Iterator[Frame]:
    """Images appearing in ``folder`` (sorted by name), until none arrives for ``idle_timeout_s``."""
    from videocups_ray.data.encodings import read_image
    from videocups_ray.data.sources import IMAGE_EXTENSIONS

    seen: set[str] = set()
    i, last_new = 0, time.monotonic()
    while time.monotonic() - last_new < idle_timeout_s:
        new = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS and p.name not in seen)
        for p in new:
            seen.add(p.name)
            yield Frame(video_id, i, read_image(p))
            i += 1
            last_new = time.monotonic()
        if not new:
            time.sleep(poll_s)


def open_stream(source: str | int, *, idle_timeout_s: float = 5.0) -> Iterator[Frame]:
    """Frames of a camera index, a stream URL, a video file, or a folder to watch."""
    if isinstance(source, int) or (isinstance(source, str) and source.isdigit()):
        return _camera_frames(int(source), f"camera{int(source)}")
    if "://" in source and source.split("://", 1)[0].lower() in STREAM_URL_SCHEMES:
        name = source.split("://", 1)[1].strip("/").replace("/", "_") or "stream"
        return _camera_frames(source, name)
    path = Path(source)
    if path.is_dir():
        return _watch_folder(path, path.name or "stream", idle_timeout_s)
    if path.is_file():
        from videocups_ray.data.formats import open_source

        return iter(open_source(str(path)))
    raise DataError(f"stream source {source!r}: not a camera index, a stream URL, a video file or a folder")


# --------------------------------------------------------------------------- entry point
def warmup_centroids(cfg: Config, frames: list[Frame], stages: CueStages) -> np.ndarray:
    """Centroids fitted on the first frames of the stream (when none are given)."""
    pairs = [f for a, b in zip(frames, frames[1:]) for f in (a, b)]
    if not pairs:
        raise DataError("stream: need at least 2 frames to fit centroids; pass centroids=...")
    log.warning("stream: no centroids given; fitting them on the first %d frames of the stream", len(frames))
    return fit_centroids([(str(frames[0].video_id), pairs)], stages, cfg)


def run_stream(cfg: Config, source: str | int | Iterator[Frame], out: str | os.PathLike, *,
               centroids: np.ndarray | str | None = None, fps: float | None = None,
               max_frames: int | None = None, idle_timeout_s: float = 5.0,
               on_labels: Callable[[LabelledFrame], None] | None = None) -> dict[str, Any]:
    """Label a live stream into shards under ``out`` (final frames only); returns a summary.

    ``fps`` paces a recorded source at that arrival rate (a camera paces itself). ``centroids``
    is an array, a ``.npy`` path, or None (fit on the first frames, logged).
    """
    from videocups_ray.data.shards import ShardWriter
    from videocups_ray.labeling import load_centroids

    frames = open_stream(source, idle_timeout_s=idle_timeout_s) if isinstance(source, (str, int)) else iter(source)
    stages = CueStages.from_config(cfg)
    stages.setup()
    head: list[Frame] = []
    if isinstance(centroids, (str, os.PathLike)):
        centroids = load_centroids(centroids, cfg.labeling.num_clusters)
    if centroids is None:
        for f in frames:
            head.append(f)
            if len(head) >= 2 * cfg.labeling.kmeans_frames_per_video:
                break
        centroids = warmup_centroids(cfg, head, stages)
    labeler = StreamingPseudoLabeler(cfg, centroids, stages=stages)
    writer = ShardWriter(out, cfg.shards, cfg.hash(), __version__)

    def deliver(lf: LabelledFrame) -> None:
        if on_labels is not None:
            on_labels(lf)
        if lf.final:
            for row in labeler.take_rows():
                writer.add(**row)

    runner = StreamRunner(labeler, deliver, max_pending=cfg.stream.max_pending, policy=cfg.stream.backpressure)
    t0 = time.perf_counter()
    n = 0
    interrupted = False
    try:
        for frame in itertools.chain(head, frames):
            if max_frames is not None and n >= max_frames:
                break
            if fps:
                time.sleep(max(0.0, t0 + n / fps - time.perf_counter()))
            runner.offer(frame)
            n += 1
    except KeyboardInterrupt:
        # Ctrl-C: stop taking frames, but label what was taken, close the open clip early and
        # commit it (issue 17 #7: nothing already seen is lost)
        interrupted = True
        log.warning("stream: interrupted after %d frames; closing the open clip and committing it", n)
    try:
        stats = runner.close()
    finally:
        labeler.close()
    writer.close()
    summary = {"out": os.fspath(out), **stats.summary(), "policy": cfg.stream.backpressure,
               "stream_latency": labeler.latency,
               "seconds": round(time.perf_counter() - t0, 2), "written": writer.summary.written,
               "interrupted": interrupted}
    if stats.dropped:
        log.warning("stream: %d of %d frames dropped by backpressure", stats.dropped, stats.received)
    return summary
