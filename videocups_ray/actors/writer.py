"""WriterActor: one member of the shard writer pool (driver side: ``pipelines/writer_pool.py``).

A writer encodes rows and publishes whole shard files (``data/shards.py``'s
:class:`ShardFileWriter`) under names of its own, and **commits nothing**: every call returns
the entries of the shard files it finished, and the driver, the directory's one committer,
commits them to the manifest. A shard file whose entry never reached a commit (the writer, its
node or the driver died first) is debris: readers never see it, the next run deletes it and
writes its frames again. That is the whole exactly-once argument; see ``WRITER_API.md``.

On top of that the actor drops rows it must not write:

- rows the manifest already held when it was set up (resume), looked up per video, only for
  videos with committed frames;
- rows added earlier in this run: a redone chunk (tracker or depth state lost) re-sends frames,
  bit-identical because every stage is deterministic. The driver routes every call of one chunk
  to one writer, so that writer sees the repeat;
- rows of a chunk whose track-ID stitching is not known yet are held until the driver sends
  the chunk's ID map (:meth:`set_id_map`); a video's first chunk keeps its IDs and is written at
  once. The map is computed on the driver from the trackers' overlap frames, so the chunks of
  one video may land on different writers.
"""

from __future__ import annotations

import logging
import os
import uuid

from videocups_ray.actors.base import FailureInjector, FailurePlan
from videocups_ray.config import ShardConfig
from videocups_ray.data.manifest import Manifest
from videocups_ray.data.shard_store import Store
from videocups_ray.data.shards import CommittedFrames, ShardFileWriter
from videocups_ray.data.pseudolabels import SKIPPED_KEY
from videocups_ray.data.types import DataError
from videocups_ray.stages.chunks import apply_id_map

log = logging.getLogger(__name__)

__all__ = ["SKIPPED_KEY", "WriterActor", "apply_id_map"]


class WriterActor:
    """Writes shard files for the chunks routed to it; returns their entries (see module doc)."""

    kind = "writer"

    def __init__(self, out: str, shards: ShardConfig, index: int = 0, failures: tuple[FailurePlan, ...] = ()):
        self._out, self._cfg, self.index = os.fspath(out), shards, index
        self._files: ShardFileWriter | None = None
        self._committed: CommittedFrames | None = None
        self._added: set[tuple[str, int]] = set()
        self._held: dict[str, list[dict]] = {}  # chunk key -> rows waiting for the ID map
        self._maps: dict[str, dict[int, int]] = {}
        self.written = self.skipped = self.duplicates = 0
        self._fail = FailureInjector(self.kind, failures)

    def setup(self) -> str:
        """Read the committed state (the driver has opened the directory); returns this writer's token.

        The token names this incarnation's files (``part-<token>-<seq>.parquet``).
        """
        store = Store(self._out)
        manifest = Manifest.open(store) if Manifest.exists(store) else None
        self._committed = CommittedFrames(manifest)
        self._files = ShardFileWriter(store, self._cfg, token=f"w{self.index:02d}{uuid.uuid4().hex[:8]}")
        return self._files.token

    def ready(self) -> bool:
        return self._files is not None

    # ------------------------------------------------------------------ rows
    def write(self, chunk_key: str, rows: list[dict], mapped: bool) -> list[dict]:
        """Add rows of ``chunk_key`` (held until :meth:`set_id_map` unless ``mapped``).

        Returns the entries of the shard files this call finished, for the driver to commit.
        """
        self._fail.tick()
        if not mapped and chunk_key not in self._maps:
            self._held.setdefault(chunk_key, []).extend(rows)
            return []
        return self._add(rows, self._maps.get(chunk_key, {}))

    def set_id_map(self, chunk_key: str, id_map: dict[int, int]) -> list[dict]:
        """The chunk's local -> global track IDs; writes its held rows (returns finished entries)."""
        self._maps[chunk_key] = {int(k): int(v) for k, v in id_map.items()}
        return self._add(self._held.pop(chunk_key, []), self._maps[chunk_key])

    def release(self, chunk_key: str) -> None:
        """The chunk is complete and written: forget its ID map."""
        if chunk_key in self._held:
            raise DataError(f"writer {self.index}: chunk {chunk_key} released with "
                            f"{len(self._held[chunk_key])} rows held")
        self._maps.pop(chunk_key, None)

    def _add(self, rows: list[dict], id_map: dict[int, int]) -> list[dict]:
        entries = []
        for row in rows:
            key = (str(row["video_id"]), int(row["frame_index"]))
            if key in self._added:
                self.duplicates += 1
                continue
            self._added.add(key)
            if key in self._committed:
                self.skipped += 1
                continue
            if id_map:
                row = {**row, "instance": apply_id_map(row["instance"], id_map)}
            fields = {k: v for k, v in row.items() if k not in ("video_id", "frame_index")}
            entry = self._files.add_encoded(key, self._files.encode(*key, **fields))
            self.written += 1
            if entry is not None:
                entries.append(entry)
        return entries

    def finish(self) -> dict:
        """Publish the last partial shard; returns ``{"entries": [...], written, skipped, duplicates}``."""
        if self._held:
            raise DataError(f"writer {self.index}: rows still held for chunks {sorted(self._held)} (no ID map came)")
        entry = self._files.flush()
        return {"entries": [entry] if entry else [], "written": self.written, "skipped": self.skipped,
                "duplicates": self.duplicates}
