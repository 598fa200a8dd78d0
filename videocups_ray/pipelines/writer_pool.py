"""The shard writer pool, driver side: routes rows to ``ray.writer.replicas`` WriterActors and
commits what they wrote (the directory's one committer). Contract: ``WRITER_API.md``.

Commit protocol (exactly once across writer, driver and node failures):

1. Open: :func:`~videocups_ray.data.shards.open_for_commit` checks the config hash and deletes
   debris (temp files, shard files no generation lists), before any writer starts.
2. Writers publish whole shard files under their own names and return the files' entries.
3. The driver commits the entries it has received, with the metadata queued since the last
   commit (per-video statistics, skipped videos, global meta), as one manifest generation:
   one small object. Nothing else makes a shard visible to readers.
4. The driver moves the committed files from ``_pending/`` into the directory, so directory
   scans (``pyarrow.dataset``, ``ray.data.read_parquet`` of the folder) see them too.

A shard file whose entry was not committed (its writer, its node or the driver died first) is
debris: invisible to readers, deleted and rewritten by the next run. A writer that dies ends
the job with :class:`WriterLost` (a one-line error) after committing everything the surviving
writers returned; the rerun resumes from the manifest. Writers are not restarted in-run: the
rows buffered in a dead writer would be lost without the driver knowing which ones.
"""

from __future__ import annotations

import logging
from typing import Any

from videocups_ray import __version__
from videocups_ray.actors.base import FailurePlan, remote_class
from videocups_ray.actors.writer import SKIPPED_KEY, WriterActor
from videocups_ray.config import Config
from videocups_ray.data.shard_store import Store
from videocups_ray.data.shards import CommittedFrames, open_for_commit, publish, retract_damaged
from videocups_ray.data.types import DataError
from videocups_ray.pipelines.ray_runtime import get_each

log = logging.getLogger(__name__)

_ACTOR_DIED = ("ActorDiedError", "RayActorError", "ActorUnavailableError", "OwnerDiedError", "OutOfMemoryError",
               "NodeDiedError", "WorkerCrashedError")  # the writer process is gone


class WriterLost(DataError):
    """A shard writer died: what was committed is intact; rerun the same command to resume."""


def _is_actor_death(exc: BaseException) -> bool:
    return bool({c.__name__ for c in type(exc).__mro__} & set(_ACTOR_DIED))


class WriterPool:
    """Driver-side handle of the writer pool and the manifest (see the module docstring).

    Every method is a plain call on the driver; row batches travel as ObjectRefs straight to a
    writer. Calls for one chunk key go to one writer, in submission order.
    """

    def __init__(self, ray, cfg: Config, out: str, failures: tuple[FailurePlan, ...] = ()):
        self.ray, self.out = ray, out
        self.manifest = open_for_commit(Store(out), cfg.shards, cfg.hash(), __version__)
        self._verify, self._verify_workers = cfg.shards.verify_on_resume, cfg.shards.verify_workers
        cls = remote_class(WriterActor, cfg.ray, "writer", max_restarts=0)
        self.actors = [cls.remote(out, cfg.shards, i, failures) for i in range(cfg.ray.writer.replicas)]
        self._route: dict[str, int] = {}
        self._rr = 0
        self._refs: list = []  # in-flight writer calls returning lists of entries
        self._ref_writer: dict = {}  # ref -> writer index
        self._entries: list[dict] = []  # received, not committed yet
        self._meta: dict[str, Any] = {}
        self._video_meta: dict[str, dict[str, Any]] = {}
        self._skipped: dict[str, str] = {}
        self._skipped_at_open: dict[str, str] | None = None
        self.commits = self.shards = 0

    # ------------------------------------------------------------------ setup and resume
    def setup(self) -> list[str]:
        """Start every writer; returns their tokens (file-name prefixes of this run)."""
        return self._get(list(range(len(self.actors))), [a.setup.remote() for a in self.actors])

    def committed_counts(self) -> dict[str, int]:
        """Committed frames per video (no frame ranges are loaded)."""
        return CommittedFrames(self.manifest).counts

    def meta(self, key: str, default: Any = None) -> Any:
        """``meta[key]`` as committed, including records queued on this driver."""
        self.commit()
        return self.manifest.meta().get(key, default)

    def repair(self, videos: list[str] | None = None) -> list[str]:
        """Verify the committed shards of ``videos`` (``shards.verify_on_resume``); retract damaged ones.

        Call before :meth:`setup` so the writers see the repaired state; their frames count as
        not written and are labelled again.
        """
        return retract_damaged(self.manifest, videos, self._verify, self._verify_workers)

    # ------------------------------------------------------------------ rows
    def _writer_of(self, chunk_key: str) -> int:
        if chunk_key not in self._route:
            self._route[chunk_key] = self._rr % len(self.actors)
            self._rr += 1
        return self._route[chunk_key]

    def write(self, chunk_key: str, rows_ref, mapped: bool) -> None:
        """Send a rows ref of ``chunk_key`` to its writer (held there until its ID map unless ``mapped``)."""
        i = self._writer_of(chunk_key)
        self._track(i, self.actors[i].write.remote(chunk_key, rows_ref, mapped))

    def set_id_map(self, chunk_key: str, id_map: dict[int, int]) -> None:
        i = self._writer_of(chunk_key)
        self._track(i, self.actors[i].set_id_map.remote(chunk_key, id_map))

    def release(self, chunk_key: str) -> None:
        i = self._route.pop(chunk_key, None)
        if i is not None:
            self._track(i, self.actors[i].release.remote(chunk_key))

    def _track(self, i: int, ref) -> None:
        self._refs.append(ref)
        self._ref_writer[ref] = i

    # ------------------------------------------------------------------ metadata
    def set_meta(self, key: str, value: Any) -> None:
        self._meta[key] = value

    def record_video(self, stats_key: str, video_id: str, entry: dict) -> None:
        """Per-video thing/stuff histogram: its own record, committed with the next generation."""
        self._video_meta.setdefault(stats_key, {})[video_id] = entry
        if self._skipped.pop(video_id, None) is not None or video_id in self._committed_skipped():
            self._video_meta.setdefault(SKIPPED_KEY, {})[video_id] = None  # no longer skipped

    def record_skipped(self, video_id: str, reason: str) -> None:
        """A poisoned input: recorded with its reason, the job goes on."""
        self._skipped[video_id] = reason
        self._video_meta.setdefault(SKIPPED_KEY, {})[video_id] = reason

    def _committed_skipped(self) -> dict:
        if self._skipped_at_open is None:
            self._skipped_at_open = dict(self.manifest.meta().get(SKIPPED_KEY, {}))
        return self._skipped_at_open

    # ------------------------------------------------------------------ commits
    def drain(self, keep: int = 0) -> None:
        """Wait until at most ``keep`` writer calls are in flight, then commit what came back."""
        if self._refs:  # collect what is done without waiting, so commits keep pace with writes
            self._collect(self.ray.wait(self._refs, num_returns=len(self._refs), timeout=0)[0])
        if len(self._refs) > keep:
            self._collect(self.ray.wait(self._refs, num_returns=len(self._refs) - keep)[0])
        self.commit()

    def _collect(self, ready: list) -> None:
        if not ready:
            return
        done = set(ready)
        self._refs = [r for r in self._refs if r not in done]
        writers = [self._ref_writer.pop(r) for r in ready]
        for got in self._get(writers, ready):
            self._entries.extend(got or [])

    def commit(self) -> int | None:
        """Commit received entries and queued metadata as one generation (None if nothing to commit)."""
        if not (self._entries or self._meta or self._video_meta):
            return None
        gen = self.manifest.commit(self._entries, meta=self._meta, video_meta=self._video_meta)
        publish(self.manifest.store, self._entries)  # _pending/ -> the directory (a rename locally)
        self.shards += len(self._entries)
        self.commits += 1
        self._entries, self._meta, self._video_meta = [], {}, {}
        return gen

    def finish(self) -> dict:
        """Drain, flush every writer's last shard and commit; returns the run's counts."""
        self.drain(0)
        results = self._get(list(range(len(self.actors))), [a.finish.remote() for a in self.actors])
        for r in results:
            self._entries.extend(r["entries"])
        self.commit()
        return {"written": sum(r["written"] for r in results), "skipped": sum(r["skipped"] for r in results),
                "shards": self.shards, "duplicates": sum(r["duplicates"] for r in results),
                "commits": self.commits, "writers": len(self.actors)}

    def _get(self, writers: list, refs: list) -> list:
        """``ray.get`` of writer calls; a dead writer ends the job with one line after a last commit."""
        out = []
        lost = None
        for w, got in zip(writers, get_each(self.ray, refs)):
            if isinstance(got, BaseException):
                if not _is_actor_death(got):
                    raise got
                lost = (w, got)
                got = None
            out.append(got)
        if lost is not None:
            self._refs = []
            self.commit()
            i, exc = lost
            raise WriterLost(f"{self.out}: shard writer {i} of {len(self.actors)} died ({type(exc).__name__}); "
                             f"the {self.manifest.generation} committed generations are intact; rerun the same "
                             "command to resume") from None
        return out

    def kill(self) -> None:
        for a in self.actors:
            self.ray.kill(a, no_restart=True)
