"""WriterActor: the one owner of a shard directory (``data/shards.py``'s ``ShardWriter``).

Shards are committed every ``shards.rows_per_shard`` rows, atomically and recorded in the
manifest (``ShardWriter``). On top of it this actor gives the Ray engine exactly-once rows:

- rows the manifest already holds are skipped (resume), and so are rows added earlier in
  this run: a redone chunk (tracker or depth state lost) re-sends frames, bit-identical
  because every stage is deterministic, and they are dropped here;
- rows of a chunk whose track-ID stitching is not known yet are held until the driver sends
  the chunk's ID map (:meth:`set_id_map`); unchunked videos map IDs to themselves and are
  written at once;
- per-video thing/stuff histograms and skipped (poisoned) videos go to the manifest ``meta``
  under the same keys as the local engine, so either engine resumes the other's output.
"""

from __future__ import annotations

import logging
import os

import numpy as np

from videocups_ray.actors.base import FailureInjector, FailurePlan
from videocups_ray.config import ShardConfig
from videocups_ray.data.shards import ShardWriter, read_manifest
from videocups_ray.data.types import DataError

log = logging.getLogger(__name__)

SKIPPED_KEY = "skipped_videos"


def apply_id_map(instance: np.ndarray, id_map: dict[int, int]) -> np.ndarray:
    """Track IDs renamed by ``id_map`` (IDs not in it keep their value; 0 stays 0)."""
    if not id_map:
        return instance
    top = max(int(instance.max(initial=0)), max(id_map)) + 1
    lut = np.arange(top, dtype=np.int32)
    for old, new in id_map.items():
        lut[old] = new
    return lut[instance]


class WriterActor:
    """Exactly-once shard writing for one output directory (see the module docstring)."""

    kind = "writer"

    def __init__(self, out: str, shards: ShardConfig, config_hash: str, code_version: str,
                 failures: tuple[FailurePlan, ...] = ()):
        self._out, self._cfg = os.fspath(out), shards
        self._hash, self._version = config_hash, code_version
        self._writer: ShardWriter | None = None
        self._added: set[tuple[str, int]] = set()
        self._held: dict[str, list[dict]] = {}  # chunk key -> rows waiting for the ID map
        self._maps: dict[str, dict[int, int]] = {}
        self._meta: dict = {}
        self.duplicates = 0
        self._fail = FailureInjector(self.kind, failures)

    def setup(self) -> dict[str, list[int]]:
        """Open (or resume) the directory; returns the committed frame indices per video."""
        self._writer = ShardWriter(self._out, self._cfg, self._hash, self._version)
        self._meta = dict(read_manifest(self._out).get("meta", {})) if self._has_manifest() else {}
        done: dict[str, list[int]] = {}
        for vid, idx in sorted(self._writer.committed_keys()):
            done.setdefault(vid, []).append(idx)
        return done

    def _has_manifest(self) -> bool:
        try:
            read_manifest(self._out)
        except DataError:
            return False
        return True

    def meta(self, key: str, default=None):
        return self._meta.get(key, default)

    # ------------------------------------------------------------------ rows
    def write(self, chunk_key: str, rows: list[dict], mapped: bool) -> int:
        """Add rows of ``chunk_key``; held until :meth:`set_id_map` unless ``mapped``."""
        self._fail.tick()
        if not mapped and chunk_key not in self._maps:
            self._held.setdefault(chunk_key, []).extend(rows)
            return 0
        return self._add(rows, self._maps.get(chunk_key, {}))

    def set_id_map(self, chunk_key: str, id_map: dict[int, int]) -> int:
        """The chunk's local -> global track IDs; releases its held rows."""
        self._maps[chunk_key] = {int(k): int(v) for k, v in id_map.items()}
        return self._add(self._held.pop(chunk_key, []), self._maps[chunk_key])

    def release(self, chunk_key: str) -> None:
        """The chunk is complete and written: forget its ID map."""
        if chunk_key in self._held:
            raise DataError(f"writer: chunk {chunk_key} released with {len(self._held[chunk_key])} rows held")
        self._maps.pop(chunk_key, None)

    def _add(self, rows: list[dict], id_map: dict[int, int]) -> int:
        n = 0
        for row in rows:
            key = (str(row["video_id"]), int(row["frame_index"]))
            if key in self._added:
                self.duplicates += 1
                continue
            self._added.add(key)
            if id_map:
                row = {**row, "instance": apply_id_map(row["instance"], id_map)}
            n += int(self._writer.add(**row))
        return n

    # ------------------------------------------------------------------ manifest meta
    def set_meta(self, key: str, value) -> None:
        self._meta[key] = value
        self._writer.set_meta(key, value)

    def record_video(self, stats_key: str, video_id: str, entry: dict) -> None:
        """Per-video thing/stuff histogram (the local engine's ``thingstuff_per_video``)."""
        per_video = dict(self._meta.get(stats_key, {}))
        per_video[video_id] = entry
        self.set_meta(stats_key, per_video)
        skipped = dict(self._meta.get(SKIPPED_KEY, {}))
        if skipped.pop(video_id, None) is not None:
            self.set_meta(SKIPPED_KEY, skipped)

    def record_skipped(self, video_id: str, reason: str) -> None:
        """A poisoned input: recorded with its reason, the job goes on."""
        skipped = dict(self._meta.get(SKIPPED_KEY, {}))
        skipped[video_id] = reason
        self.set_meta(SKIPPED_KEY, skipped)

    def finish(self) -> dict:
        """Commit the last partial shard; returns the run's counts."""
        if self._held:
            raise DataError(f"writer: rows still held for chunks {sorted(self._held)} (no ID map came)")
        self._writer.flush()
        s = self._writer.summary
        return {"written": s.written, "skipped": s.skipped, "shards": s.shards, "duplicates": self.duplicates}

    def ready(self) -> bool:
        return self._writer is not None
