"""Parquet shards: atomic shard files, a commit log, resumable writes and verified reads.

A shard directory holds ``part-<writer>-<seq>.parquet`` files and the ``_manifest/`` commit
log (:mod:`videocups_ray.data.manifest`). A shard exists for readers only once a committed
generation lists it. Writing is split in two roles so several writers can share a directory:

- :class:`ShardFileWriter` (one per writer process or actor) encodes rows and publishes whole
  shard files under names no other writer uses (local disk: temp name, fsync, rename; object
  store: one upload). It commits nothing: it hands back each finished shard's entry.
- the one **committer** of the directory (:class:`ShardWriter` in one process, or the Ray
  driver for a pool of writers) commits entries to the manifest, one generation per commit,
  then moves the committed files from ``_pending/`` into the directory (:func:`publish`).

A job killed anywhere leaves committed shards plus debris: ``.tmp`` files and shard files no
generation lists. The next committer deletes the debris on open (and moves committed files
still under ``_pending/`` into place); those frames are not committed, so they are written
again: no frame is lost and none is stored twice.

Readers (:func:`read_shards`, :func:`shard_files` for ``ray.data.read_parquet`` and
``pyarrow.dataset``, ``read_pseudolabels``) see the committed generations only. A plain
directory scan (``pyarrow.dataset.dataset(dir)``, ``ray.data.read_parquet(dir)``) sees only
whole, committed shards: uncommitted ones wait under ``_pending/``, which scanners skip. It can
lag behind the manifest (a commit whose files are not moved yet), never run ahead of it.

Resume (:meth:`ShardWriter.repair`) verifies the committed shards it relies on against the
manifest's size and sha256; a damaged or missing shard is retracted (a commit record), moved
to ``_quarantine/``, and its frames are labelled again.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import uuid
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from videocups_ray import __version__
from videocups_ray.config import ShardConfig
from videocups_ray.data.manifest import (
    LEGACY_MANIFEST,
    MANIFEST_DIR,
    SHARD_NAME,
    Manifest,
    ShardIntegrityError,
    to_ranges,
)
from videocups_ray.data.shard_codec import SHARD_SCHEMA, decode_batch, encode_row, row_to_frame, rows_to_table
from videocups_ray.data.shard_store import Store
from videocups_ray.data.sources import FrameSource
from videocups_ray.data.types import DataError, Frame

__all__ = ["SHARD_SCHEMA", "CommittedFrames", "ShardFileWriter", "ShardIntegrityError", "ShardWriter",
           "WriteSummary", "decode_batch", "frames_to_shards", "is_shard_dir", "read_shard", "open_for_commit",
           "read_manifest", "read_shards", "shard_files"]

log = logging.getLogger(__name__)

QUARANTINE = "_quarantine"
PENDING = "_pending"  # shard files written, not committed yet (dataset scanners skip "_" folders)
Verify = Literal["checksum", "size", "none"]
_Store = Store  # the old private name (kept for code that patched it)


# --------------------------------------------------------------------------- verification
def shard_location(store: Store, entry: dict) -> str | None:
    """Where a committed shard is: its own name, or still under ``_pending/`` (committed, not
    yet moved into place: the committer died in between); None when it is in neither."""
    for name in (entry["file"], f"{PENDING}/{entry['file']}"):
        if store.info(name).is_file:
            return name
    return None


def check_entry(store: Store, entry: dict, mode: Verify = "checksum") -> str | None:
    """Why a committed shard cannot be trusted (None when it matches the manifest)."""
    if mode == "none":
        return None
    where = shard_location(store, entry)
    if where is None:
        return "shard listed in the manifest is missing"
    size = store.info(where).size
    if size != entry["bytes"]:
        return f"size {size} bytes, manifest says {entry['bytes']}"
    if mode == "checksum":
        digest = hashlib.sha256(store.read_bytes(where)).hexdigest()
        if digest != entry["sha256"]:
            return (f"sha256 {digest[:12]}... does not match the manifest's {entry['sha256'][:12]}... "
                    "(corrupt or replaced shard)")
    return None


def check_entries(store: Store, entries: list[dict], mode: Verify = "checksum",
                  workers: int = 4) -> list[tuple[dict, str]]:
    """``(entry, reason)`` of every damaged shard; files are read by ``workers`` threads (I/O bound)."""
    if mode == "none" or not entries:
        return []
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        reasons = list(pool.map(lambda e: check_entry(store, e, mode), entries))
    return [(e, r) for e, r in zip(entries, reasons) if r is not None]


def _read_verified(store: Store, entry: dict) -> bytes:
    reason = check_entry(store, entry, "size")
    if reason is None:
        data = store.read_bytes(shard_location(store, entry))
        digest = hashlib.sha256(data).hexdigest()
        if digest == entry["sha256"]:
            return data
        reason = (f"sha256 {digest[:12]}... does not match the manifest's {entry['sha256'][:12]}... "
                  "(corrupt or replaced shard)")
    raise ShardIntegrityError(f"{store.uri(entry['file'])}: {reason}")


# --------------------------------------------------------------------------- committed frames
class CommittedFrames:
    """Which frames the manifest holds, loaded one video at a time, only when asked.

    Opening costs one scan of the per-video counts; the frame indices of a video are read
    (from the row groups holding it) the first time a frame of that video is looked up, so a
    resume holds the keys of the videos it writes, not of the corpus.
    """

    def __init__(self, manifest: Manifest | None):
        self._manifest = manifest
        self.counts: dict[str, int] = manifest.committed_counts() if manifest is not None else {}
        self._frames: dict[str, set[int]] = {}

    def count(self, video_id: str) -> int:
        return self.counts.get(video_id, 0)

    def frames(self, video_id: str) -> set[int]:
        if video_id not in self._frames:
            found = (self._manifest.committed_frames([video_id])[video_id]
                     if self.counts.get(video_id) and self._manifest is not None else set())
            self._frames[video_id] = found
        return self._frames[video_id]

    def __contains__(self, key: tuple[str, int]) -> bool:
        vid, idx = key
        return bool(self.counts.get(vid)) and idx in self.frames(vid)

    def add(self, keys: Iterable[tuple[str, int]]) -> None:
        for vid, idx in keys:
            self.frames(vid).add(idx)
            self.counts[vid] = self.counts.get(vid, 0) + 1


# --------------------------------------------------------------------------- shard files
@dataclass
class WriteSummary:
    written: int = 0  # rows added by this run
    skipped: int = 0  # rows the manifest already held
    shards: int = 0  # shard files committed by this run


class ShardFileWriter:
    """Encodes rows and publishes one Parquet shard file per ``cfg.rows_per_shard`` rows.

    Rows are encoded on ``add`` and serialised a row group at a time into an in-memory Parquet
    file, so the memory held is about one compressed shard, not the decoded frames. Files are
    named ``part-<token>-<seq>.parquet``; ``token`` is unique per writer incarnation, so writers
    never collide and a rerun never overwrites debris it has not checked. They are published
    under ``_pending/`` (which directory scanners skip); nothing is committed here: ``add`` /
    ``flush`` return the entries of finished shards, and the committer commits them and moves
    the files into place (:func:`publish`).
    """

    def __init__(self, store: Store, cfg: ShardConfig, token: str | None = None):
        self.store, self.cfg = store, cfg
        self.token = token or uuid.uuid4().hex[:10]
        self._seq = 0
        self._group: list[dict[str, Any]] = []  # encoded rows of the row group being filled
        self._sink: io.BytesIO | None = None  # the shard being built, in memory
        self._parquet: pq.ParquetWriter | None = None
        self.pending: set[tuple[str, int]] = set()  # keys in the shard being built

    def add_encoded(self, key: tuple[str, int], row: dict[str, Any]) -> dict | None:
        """Buffer one encoded row; returns the shard entry when this row completes a shard."""
        self._group.append(row)
        self.pending.add(key)
        if len(self.pending) >= self.cfg.rows_per_shard:
            return self.flush()
        if len(self._group) >= self.cfg.rows_per_row_group:
            self._write_group()
        return None

    def encode(self, video_id: str, frame_index: int, image: np.ndarray, semantic: np.ndarray,
               instance: np.ndarray, ignore: np.ndarray, depth: np.ndarray | None = None,
               flow: np.ndarray | None = None, flow_valid: np.ndarray | None = None) -> dict[str, Any]:
        return encode_row(video_id, frame_index, image, semantic, instance, ignore, depth, flow, flow_valid,
                          image_codec=self.cfg.image_encoding, label_codec=self.cfg.label_encoding,
                          png_level=self.cfg.png_level)

    def flush(self) -> dict | None:
        """Publish the buffered rows as one shard file; returns its entry (None if nothing buffered)."""
        if not self.pending:
            return None
        self._write_group()
        self._parquet.close()
        data = self._sink.getvalue()
        self._sink = self._parquet = None
        name = f"part-{self.token}-{self._seq:06d}.parquet"
        self._seq += 1
        if self._seq == 1:
            self.store.makedirs(PENDING)
        self.store.write_atomic(f"{PENDING}/{name}", data)
        keys: dict[str, list[int]] = {}
        for vid, idx in self.pending:
            keys.setdefault(vid, []).append(idx)
        entry = {"file": name, "rows": len(self.pending), "bytes": len(data),
                 "sha256": hashlib.sha256(data).hexdigest(),
                 "keys": {v: to_ranges(ix) for v, ix in sorted(keys.items())}}
        self.pending = set()
        return entry

    def _write_group(self) -> None:
        if not self._group:
            return
        if self._parquet is None:
            compression = None if self.cfg.compression == "none" else self.cfg.compression
            level = self.cfg.compression_level if compression == "zstd" else None
            self._sink = io.BytesIO()
            self._parquet = pq.ParquetWriter(self._sink, SHARD_SCHEMA, compression=compression,
                                             compression_level=level)
        self._parquet.write_table(rows_to_table(self._group), row_group_size=len(self._group))
        self._group = []


def entry_keys(entry: dict) -> Iterator[tuple[str, int]]:
    for vid, ranges in entry["keys"].items():
        for lo, hi in ranges:
            for i in range(lo, hi + 1):
                yield vid, i


# --------------------------------------------------------------------------- the committer
def publish(store: Store, entries: Iterable[dict]) -> None:
    """Move committed shard files from ``_pending/`` into the directory (after their commit).

    A rename on a local disk; a server-side copy on object stores. A committer that dies before
    this leaves committed files under ``_pending/``: readers find them there, and the next
    committer moves them (:func:`open_for_commit`).
    """
    for e in entries:
        src = f"{PENDING}/{e['file']}"
        if store.info(src).is_file:
            store.move(src, e["file"])


def open_for_commit(out: str | os.PathLike | Store, cfg: ShardConfig, config_hash: str,
                    code_version: str) -> Manifest:
    """Open (or create) a directory's manifest as its one committer; removes debris.

    Checks the config hash, migrates an old single-file manifest, and deletes ``.tmp`` files and
    shard files no generation lists (left by a killed writer: their frames are written again).
    """
    store = _as_store(out)
    store.makedirs()
    kw = {"compact_every": cfg.manifest_compact_every, "fanout": cfg.manifest_fanout}
    if Manifest.exists(store):
        manifest = Manifest.open(store, **kw)
        if manifest.config_hash != config_hash:
            raise DataError(f"{store.uri(MANIFEST_DIR)}: shards were written with config hash "
                            f"{manifest.config_hash!r}, this run has {config_hash!r}; resume with the same "
                            "configuration or write to a new directory")
        manifest.migrate_legacy()
    else:
        manifest = Manifest.create(store, config_hash, code_version, **kw)
    manifest.collect_garbage()
    committed = manifest.committed_files()
    for name in store.list_names(PENDING):
        if name in committed:
            log.info("%s: moving committed shard %s into place (its committer died before)", store, name)
            store.move(f"{PENDING}/{name}", name)
        elif name.endswith(".tmp") or SHARD_NAME.match(name):
            log.warning("%s: removing %s/%s left by a writer killed before its commit; its frames will be "
                        "written again", store, PENDING, name)
            store.delete(f"{PENDING}/{name}")
    for name in store.list_names():
        if name.endswith(".tmp"):
            log.warning("%s: removing temporary file %s left by a killed writer", store, name)
            store.delete(name)
        elif SHARD_NAME.match(name) and name not in committed:
            log.warning("%s: removing shard %s that the manifest does not list (writer killed before "
                        "its commit); its frames will be written again", store, name)
            store.delete(name)
    return manifest


def retract_damaged(manifest: Manifest, videos: Iterable[str] | None, mode: Verify,
                    workers: int = 4) -> list[str]:
    """Verify the committed shards of ``videos`` (all when None); retract the damaged ones.

    A damaged shard is moved to ``_quarantine/`` (kept for inspection) and retracted in one
    commit, so its frames count as not written and the resumed run labels them again. Returns
    one ``"<file>: <reason>"`` line per retracted shard.
    """
    store = manifest.store
    bad = check_entries(store, manifest.shards(videos), mode, workers)
    if not bad:
        return []
    lines = []
    store.makedirs(QUARANTINE)
    for entry, reason in bad:
        lines.append(f"{store.uri(entry['file'])}: {reason}")
        log.warning("%s; retracting the shard and labelling its %d frames again", lines[-1], entry["rows"])
        where = shard_location(store, entry)
        if where is not None:
            store.move(where, f"{QUARANTINE}/{entry['file']}")
    manifest.commit(retract=[e["file"] for e, _ in bad])
    return lines


class ShardWriter:
    """One process that writes and commits: a :class:`ShardFileWriter` plus the manifest.

    Each finished shard is committed as its own generation (one small object). Use as a
    context manager: a clean exit commits the last partial shard; an exception commits
    nothing more (buffered rows are not committed, so a rerun redoes them).
    """

    def __init__(self, out: str | os.PathLike | Store, cfg: ShardConfig, config_hash: str, code_version: str):
        self.cfg, self.config_hash, self.code_version = cfg, config_hash, code_version
        self._store = _as_store(out)
        self._manifest = open_for_commit(self._store, cfg, config_hash, code_version)
        self._files = ShardFileWriter(self._store, cfg)
        self._committed = CommittedFrames(self._manifest)
        self.summary = WriteSummary()

    def __enter__(self) -> "ShardWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()

    @property
    def manifest(self) -> Manifest:
        return self._manifest

    # ----------------------------------------------------------------- public API
    def committed_keys(self) -> set[tuple[str, int]]:
        """(video_id, frame_index) of every committed row: O(corpus); prefer :meth:`committed_counts`."""
        return {k for e in self._manifest.shards() for k in entry_keys(e)}

    def committed_counts(self) -> dict[str, int]:
        """Committed frames per video."""
        return dict(self._committed.counts)

    def repair(self, videos: Iterable[str] | None = None, mode: Verify = "checksum") -> list[str]:
        """Verify what a resume relies on; retract damaged shards (:func:`retract_damaged`)."""
        lines = retract_damaged(self._manifest, videos, mode)
        if lines:
            self._committed = CommittedFrames(self._manifest)
        return lines

    def add(self, video_id: str, frame_index: int, image: np.ndarray, semantic: np.ndarray,
            instance: np.ndarray, ignore: np.ndarray, depth: np.ndarray | None = None,
            flow: np.ndarray | None = None, flow_valid: np.ndarray | None = None) -> bool:
        """Buffer one frame; False (and nothing written) if a committed shard already holds it."""
        key = (str(video_id), int(frame_index))
        if key in self._committed:
            self.summary.skipped += 1
            return False
        if key in self._files.pending:
            raise DataError(f"{self._store}: video {key[0]!r} frame {key[1]} added twice in one run")
        row = self._files.encode(*key, image, semantic, instance, ignore, depth, flow, flow_valid)
        self.summary.written += 1
        self._commit(self._files.add_encoded(key, row))
        return True

    def add_frame(self, frame: Frame, ignore: np.ndarray | None = None) -> bool:
        """Buffer a labelled Frame; ignore defaults to ``extra["ignore"]`` or ``semantic == 255``."""
        if frame.semantic is None or frame.instance is None:
            raise DataError(f"video {frame.video_id!r} frame {frame.frame_index}: no labels to shard")
        if ignore is None:
            ignore = frame.extra.get("ignore")
        if ignore is None:
            ignore = frame.semantic == 255
        return self.add(frame.video_id, frame.frame_index, frame.image, frame.semantic, frame.instance,
                        ignore, frame.depth, frame.flow, frame.flow_valid)

    def flush(self) -> str | None:
        """Commit the buffered rows as one shard; returns its file name (None if nothing buffered)."""
        entry = self._files.flush()
        self._commit(entry)
        return entry["file"] if entry else None

    def close(self) -> None:
        self.flush()

    def set_meta(self, key: str, value: Any) -> None:
        """Commit a JSON value under ``meta[key]`` (thing/stuff split, centroid file)."""
        self._manifest.commit(meta={key: value})

    def set_video_meta(self, key: str, video_id: str, value: Any) -> None:
        """Commit ``meta[key][video_id]`` as its own record (per-video statistics); None deletes it."""
        self._manifest.commit(video_meta={key: {str(video_id): value}})

    def _commit(self, entry: dict | None) -> None:
        if entry is None:
            return
        self._manifest.commit([entry])
        publish(self._store, [entry])
        self._committed.add(entry_keys(entry))
        self.summary.shards += 1


# --------------------------------------------------------------------------- readers
def _as_store(path: str | os.PathLike | Store) -> Store:
    return path if isinstance(path, Store) else Store(path)


def is_shard_dir(path: str | os.PathLike | Store) -> bool:
    """Whether ``path`` holds a shard manifest (the commit log or an old ``manifest.json``)."""
    return Manifest.exists(_as_store(path))


def manifest_dirs(path: str | os.PathLike | Store) -> list[Store]:
    """The directory itself if it holds a manifest, else its subdirectories that do."""
    store = _as_store(path)
    if Manifest.exists(store):
        return [store]
    if not store.is_dir():
        raise DataError(f"{store}: shard directory not found")
    subs = [s for s in (store.sub(d) for d in store.subdirs() if not d.startswith(("_", "."))) if Manifest.exists(s)]
    if not subs:
        raise DataError(f"{store}: no shard manifest ({MANIFEST_DIR}/ or {LEGACY_MANIFEST}) in it or in "
                        "its subdirectories")
    return subs


def read_manifest(path: str | os.PathLike | Store) -> dict:
    """The whole manifest of one shard directory in one dict (``meta``, ``shards``): O(corpus)."""
    return Manifest.open(_as_store(path)).as_dict()


def shard_files(path: str | os.PathLike | Store, verify: Verify = "size", workers: int = 4) -> list[str]:
    """Committed shard files (local paths or URIs) for ``ray.data.read_parquet`` / ``pyarrow.dataset``.

    Only committed files: a stray or uncommitted file in the directory is never read as data.
    ``verify``: ``"size"`` checks presence and size, ``"checksum"`` also the sha256 (reads each
    file once; ``workers`` threads); the first damaged shard raises ShardIntegrityError naming it.
    """
    out = []
    for store in manifest_dirs(path):
        entries = Manifest.open(store).shards()
        bad = check_entries(store, entries, verify, workers)
        if bad:
            entry, reason = bad[0]
            more = f" (and {len(bad) - 1} more damaged shards)" if len(bad) > 1 else ""
            raise ShardIntegrityError(f"{store.uri(entry['file'])}: {reason}{more}")
        out.extend(store.uri(shard_location(store, e) or e["file"]) for e in entries)
    return out


def read_shards(path: str | os.PathLike | Store, *, verify: bool = True, batch_rows: int = 16) -> Iterator[Frame]:
    """Decoded frames of every committed shard, in commit order (each shard checksummed first)."""
    for store in manifest_dirs(path):
        for entry in Manifest.open(store).shards():
            yield from read_shard(store, entry, verify=verify, batch_rows=batch_rows)


def read_shard(store: Store, entry: dict, *, verify: bool = True, batch_rows: int = 16) -> Iterator[Frame]:
    """Decoded frames of one committed shard (a manifest ``entry``), checksummed first when ``verify``."""
    data = (_read_verified(store, entry) if verify
            else store.read_bytes(shard_location(store, entry) or entry["file"]))
    pf = pq.ParquetFile(pa.BufferReader(data))
    what = store.uri(entry["file"])
    n = 0
    for batch in pf.iter_batches(batch_size=batch_rows):
        for row in batch.to_pylist():
            n += 1
            yield row_to_frame(row, what)
    if n != entry["rows"]:
        raise ShardIntegrityError(f"{what}: {n} rows, manifest says {entry['rows']}")


def frames_to_shards(source: FrameSource, out: str | os.PathLike, cfg: ShardConfig,
                     config_hash: str | None = None, code_version: str = __version__) -> WriteSummary:
    """Write a labelled FrameSource (e.g. SynthDrive ground truth) as shards; resumable."""
    if not source.has_labels:
        raise DataError(f"{source!r}: has no labels; shards need semantic and instance maps")
    if config_hash is None:
        config_hash = hashlib.sha256(json.dumps(cfg.model_dump(mode="json"), sort_keys=True).encode()).hexdigest()[:16]
    with ShardWriter(out, cfg, config_hash, code_version) as writer:
        writer.repair(source.videos(), cfg.verify_on_resume)
        for frame in source:
            writer.add_frame(frame)
    return writer.summary
