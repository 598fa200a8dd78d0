"""ReaderActor: decodes frames next to the data and hands pair batches to the cue actors.

The driver never decodes a frame nor holds one: it asks a reader for batch ``seq`` of a
stream and passes the returned ObjectRef on to the flow, depth, feature and tracker actors
(a top-level ref argument reaches them resolved from the object store). The reader opens the
input itself (:func:`~videocups_ray.data.inputs.open_input`: local paths, ``s3://`` and
``gs://`` through ``pyarrow.fs``, ``synth:``), keeps one open frame iterator per stream, and
cuts batches with the shared :class:`~videocups_ray.stages.scheduler.PairBatcher`, so the
batches are those of the local engine.

An undecodable frame raises :class:`DataError` from the batch call; every actor downstream
gets that error instead of a batch, and the driver records the video as skipped with the
reason. A restarted reader has lost its open streams and answers :class:`StreamStateLost`
(the driver redoes the chunk).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator

from videocups_ray.actors.base import FailureInjector, FailurePlan, StreamStateLost
from videocups_ray.config import SynthConfig
from videocups_ray.data.inputs import open_input
from videocups_ray.data.sources import FrameSource
from videocups_ray.stages import ChunkSpec, PairBatch, pair_batches
from videocups_ray.stages.centroids import fit_batches
from videocups_ray.stages.payload import PayloadPlan


class ReaderActor:
    """Decoding for any number of streams of one input (see the module docstring)."""

    kind = "reader"

    def __init__(self, spec: str | os.PathLike | FrameSource, synth: SynthConfig,
                 failures: tuple[FailurePlan, ...] = ()):
        self._spec, self._synth = spec, synth
        self._source: FrameSource | None = None
        self._staging: str | None = None
        self._streams: dict[str, tuple[Iterator[PairBatch], int]] = {}  # name -> (batches, next seq)
        self._fail = FailureInjector(self.kind, failures)

    def setup(self) -> bool:
        if self._source is None:
            self._staging = tempfile.mkdtemp(prefix="vcr-reader-")  # private (0700): remote inputs land here
            self._source = open_input(self._spec, self._synth, self._staging)
        return True

    def teardown(self) -> None:
        """Forget the streams and delete what was copied from remote storage."""
        self._streams.clear()
        if self._staging:
            shutil.rmtree(self._staging, ignore_errors=True)
        self._source = self._staging = None

    def describe(self) -> dict[str, int]:
        """``video -> frame count`` (metadata only; no frame is decoded)."""
        self.setup()
        return {v: self._source.num_frames(v) for v in self._source.videos()}

    def open(self, stream: str, chunk: ChunkSpec, num_frames: int, batch_pairs: int) -> int:
        """Start decoding ``chunk`` as ``stream``; returns its number of batches."""
        self.setup()
        start, stop, with_last = chunk.read_range(num_frames)
        frames = self._source.frames(chunk.video_id, start, stop)
        self._streams[stream] = (pair_batches(stream, frames, batch_pairs, with_last), 0)
        return chunk.num_batches(num_frames, batch_pairs)

    def batch(self, stream: str, seq: int, plan: PayloadPlan) -> PairBatch | list[PairBatch]:
        """Batch ``seq`` of an open stream (calls come in order from the one driver), cut into
        ``plan``'s parts (``num_returns=plan.num_parts``; one part: the base part itself), so the
        ground truth of the frames goes only to the cue actors whose backend reads it."""
        self._fail.tick()
        if stream not in self._streams:
            raise StreamStateLost(f"reader: stream {stream} is not open here (reader restarted?)")
        batches, expected = self._streams[stream]
        if seq != expected:
            raise StreamStateLost(f"reader: stream {stream} asked for batch {seq}, next is {expected}")
        batch = next(batches, None)  # DataError from an undecodable frame surfaces here
        if batch is None:
            raise StreamStateLost(f"reader: stream {stream} has no batch {seq}")
        self._streams[stream] = (batches, seq + 1)
        parts = plan.split(batch)
        return parts[0] if len(parts) == 1 else parts

    def close(self, stream: str) -> None:
        self._streams.pop(stream, None)

    def fit_batches(self, video_id: str, positions: list[int], batch_pairs: int, attempt: int,
                    plan: PayloadPlan | None = None) -> PairBatch | list[PairBatch]:
        """Pass 1: the sampled pairs of one video, cut as ``stages.centroids.fit_batches`` cuts
        them, each split into ``plan``'s parts (batch-major); called with ``num_returns`` = batches
        x parts (one object: the object itself). No ``plan``: whole batches (a decodability probe)."""
        self._fail.tick()
        self.setup()
        frames = [f for p in positions for f in self._source.frames(video_id, p, p + 2)]
        batches = fit_batches(video_id, frames, batch_pairs, attempt)
        out = batches if plan is None else [part for b in batches for part in plan.split(b)]
        return out[0] if len(out) == 1 else out

    def ready(self) -> bool:
        return self._source is not None
