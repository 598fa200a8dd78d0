"""Parquet shards with a manifest: atomic, resumable writes and verified reads (DESIGN.md section 7).

A shard directory holds ``part-NNNNNN.parquet`` files and ``manifest.json``. The manifest is
the commit record: a shard exists for readers only once the manifest lists it. Writing a
shard is (1) encode rows into a Parquet file in memory, (2) write it under a ``.tmp`` name,
fsync, (3) rename to its final name, (4) rewrite the manifest the same way (on object
stores 2-3 is one upload to the final name: an object appears only when complete). A job
killed at any point leaves either a committed shard or debris that the next
:class:`ShardWriter` removes on open: ``.tmp`` files, and shard files the manifest does not list (killed
between 3 and 4). The frames of such debris are not in ``committed_keys()`` and get written
again, so no frame is lost and none is stored twice.

One writer per directory: parallel writers (one Ray actor each) use separate
subdirectories; readers accept the parent and read every ``*/manifest.json`` under it.

Storage goes through ``pyarrow.fs``, so a local path and an ``s3://`` / ``gs://`` URI run
the same code; on a local disk the file and its folder are also fsync'ed.
"""

from __future__ import annotations

import hashlib
import importlib
import io
import json
import logging
import os
import re
import sys
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from videocups_ray import __version__
from videocups_ray.config import ShardConfig
from videocups_ray.data.shard_codec import (
    SCHEMA_VERSION,
    SHARD_SCHEMA,
    decode_batch,
    encode_row,
    row_to_frame,
    rows_to_table,
)
from videocups_ray.data.sources import FrameSource
from videocups_ray.data.types import DataError, Frame

__all__ = ["SHARD_SCHEMA", "ShardIntegrityError", "ShardWriter", "WriteSummary", "decode_batch",
           "frames_to_shards", "read_manifest", "read_shards", "shard_files", "verify_shards"]

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
MANIFEST_FORMAT = f"videocups-shards/{SCHEMA_VERSION}"
_SHARD_NAME = re.compile(r"^part-(\d{6})\.parquet$")


class ShardIntegrityError(DataError):
    """A committed shard is missing, has the wrong size or checksum, or the manifest is bad."""


# --------------------------------------------------------------------------- storage
class _Store:
    """A folder on any ``pyarrow.fs`` filesystem, addressed by file name."""

    def __init__(self, uri: str | os.PathLike):
        uri = os.fspath(uri)
        if "://" in uri:
            self.fs, self.base = pafs.FileSystem.from_uri(uri)
            self._scheme = uri.split("://", 1)[0]
        else:
            self.fs, self.base, self._scheme = pafs.LocalFileSystem(), os.path.abspath(uri), ""
        self.base = self.base.rstrip("/")
        self.local = isinstance(self.fs, pafs.LocalFileSystem)

    def __str__(self) -> str:
        return self.uri("")

    def path(self, name: str) -> str:
        return f"{self.base}/{name}" if name else self.base

    def uri(self, name: str) -> str:
        """What to hand to another reader (ray.data.read_parquet): a local path or a full URI."""
        p = self.path(name)
        return p if not self._scheme or self.local else f"{self._scheme}://{p}"

    def makedirs(self) -> None:
        self.fs.create_dir(self.base, recursive=True)

    def is_dir(self) -> bool:
        return self.fs.get_file_info(self.base).type == pafs.FileType.Directory

    def info(self, name: str) -> pafs.FileInfo:
        return self.fs.get_file_info(self.path(name))

    def list_names(self) -> list[str]:
        sel = pafs.FileSelector(self.base, allow_not_found=True, recursive=False)
        return [i.base_name for i in self.fs.get_file_info(sel)]

    def subdirs(self) -> list[str]:
        sel = pafs.FileSelector(self.base, allow_not_found=True, recursive=False)
        return sorted(i.base_name for i in self.fs.get_file_info(sel) if i.type == pafs.FileType.Directory)

    def read_bytes(self, name: str) -> bytes:
        with self.fs.open_input_stream(self.path(name)) as f:
            return f.read()

    def delete(self, name: str) -> None:
        self.fs.delete_file(self.path(name))

    def write_tmp(self, name: str, data: bytes) -> str:
        """Write ``data`` under a temporary name (made durable on a local disk); returns that name."""
        tmp = f"{name}.{os.getpid()}.{time.monotonic_ns()}.tmp"
        with self.fs.open_output_stream(self.path(tmp)) as f:
            f.write(data)
        if self.local:
            fd = os.open(self.path(tmp), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        return tmp

    def commit_tmp(self, tmp: str, name: str) -> None:
        """Rename into place (atomic on a local disk; object stores have no partial objects)."""
        self.fs.move(self.path(tmp), self.path(name))
        if self.local:
            fd = os.open(self.base, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)

    def write_atomic(self, name: str, data: bytes) -> None:
        """Publish ``data`` under ``name`` all at once, or not at all."""
        if not self.local:
            # An object store publishes an object only when its upload completes, and some
            # (GCS) have no rename: write the final name directly.
            with self.fs.open_output_stream(self.path(name)) as f:
                f.write(data)
            return
        self.commit_tmp(self.write_tmp(name, data), name)


# --------------------------------------------------------------------------- key ranges
def _to_ranges(indices: Iterable[int]) -> list[list[int]]:
    """Sorted frame indices as inclusive ``[first, last]`` runs: compact for long videos."""
    out: list[list[int]] = []
    for i in sorted(set(indices)):
        if out and i == out[-1][1] + 1:
            out[-1][1] = i
        else:
            out.append([i, i])
    return out


def _from_ranges(ranges: list[list[int]]) -> Iterator[int]:
    for lo, hi in ranges:
        yield from range(lo, hi + 1)


def _entry_keys(entry: dict) -> Iterator[tuple[str, int]]:
    for vid, ranges in entry["keys"].items():
        for i in _from_ranges(ranges):
            yield vid, i


# --------------------------------------------------------------------------- manifest
def _load_manifest(store: _Store) -> dict | None:
    if not store.info(MANIFEST).is_file:
        return None
    try:
        manifest = json.loads(store.read_bytes(MANIFEST))
        if manifest.get("format") != MANIFEST_FORMAT:
            raise ValueError(f"format {manifest.get('format')!r}, expected {MANIFEST_FORMAT!r}")
        for field in ("config_hash", "code_version", "meta", "shards"):
            if field not in manifest:
                raise ValueError(f"no {field!r} field")
        for e in manifest["shards"]:
            for field in ("file", "rows", "bytes", "sha256", "keys"):
                if field not in e:
                    raise ValueError(f"shard entry {e.get('file')!r} lacks {field!r}")
    except (json.JSONDecodeError, KeyError, ValueError, TypeError) as exc:
        raise ShardIntegrityError(f"{store.uri(MANIFEST)}: invalid manifest ({exc})") from None
    return manifest


def read_manifest(path: str | os.PathLike) -> dict:
    """The manifest of one shard directory."""
    store = _Store(path)
    manifest = _load_manifest(store)
    if manifest is None:
        raise DataError(f"{store.uri(MANIFEST)}: no shard manifest")
    return manifest


def _manifest_dirs(path: str | os.PathLike) -> list[_Store]:
    """The directory itself if it holds a manifest, else its subdirectories that do."""
    store = _Store(path)
    if store.info(MANIFEST).is_file:
        return [store]
    if not store.is_dir():
        raise DataError(f"{store}: shard directory not found")
    subs = [_Store(store.uri(d)) for d in store.subdirs()]
    subs = [s for s in subs if s.info(MANIFEST).is_file]
    if not subs:
        raise DataError(f"{store}: no {MANIFEST} in it or in its subdirectories")
    return subs


def _check_present(store: _Store, entry: dict) -> None:
    info = store.info(entry["file"])
    if not info.is_file:
        raise ShardIntegrityError(f"{store.uri(entry['file'])}: shard listed in the manifest is missing")
    if info.size != entry["bytes"]:
        raise ShardIntegrityError(f"{store.uri(entry['file'])}: size {info.size} bytes, manifest says {entry['bytes']}")


def _read_verified(store: _Store, entry: dict) -> bytes:
    _check_present(store, entry)
    data = store.read_bytes(entry["file"])
    digest = hashlib.sha256(data).hexdigest()
    if digest != entry["sha256"]:
        raise ShardIntegrityError(f"{store.uri(entry['file'])}: sha256 {digest[:12]}... does not match "
                                  f"the manifest's {entry['sha256'][:12]}... (corrupt or replaced shard)")
    return data


# --------------------------------------------------------------------------- writer
@dataclass
class WriteSummary:
    written: int = 0  # rows added by this run
    skipped: int = 0  # rows the manifest already held
    shards: int = 0  # shard files committed by this run


class ShardWriter:
    """Buffers encoded rows and commits one Parquet shard per ``cfg.rows_per_shard`` rows.

    Rows are encoded on ``add`` and serialised a row group at a time into an in-memory
    Parquet file, so the memory held is about one compressed shard, not the decoded frames.

    Use as a context manager: a clean exit commits the last partial shard; an exception
    commits nothing more (buffered rows are not in the manifest, so a rerun redoes them).
    """

    def __init__(self, out: str | os.PathLike, cfg: ShardConfig, config_hash: str, code_version: str):
        self.cfg, self.config_hash, self.code_version = cfg, config_hash, code_version
        self._store = _Store(out)
        self._store.makedirs()
        manifest = _load_manifest(self._store)
        if manifest is None:
            manifest = {"format": MANIFEST_FORMAT, "config_hash": config_hash, "code_version": code_version,
                        "meta": {}, "shards": []}
        elif manifest["config_hash"] != config_hash:
            raise DataError(f"{self._store.uri(MANIFEST)}: shards were written with config hash "
                            f"{manifest['config_hash']!r}, this run has {config_hash!r}; resume with the same "
                            "configuration or write to a new directory")
        self._manifest = manifest
        self._remove_debris()
        self._committed: set[tuple[str, int]] = set()
        for entry in manifest["shards"]:
            _check_present(self._store, entry)
            self._committed.update(_entry_keys(entry))
        self._group: list[dict[str, Any]] = []  # encoded rows of the row group being filled
        self._sink: io.BytesIO | None = None  # the shard being built, in memory
        self._parquet: pq.ParquetWriter | None = None
        self._pending: set[tuple[str, int]] = set()  # keys in the shard being built
        self.summary = WriteSummary()

    def __enter__(self) -> "ShardWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()

    def _remove_debris(self) -> None:
        recorded = {e["file"] for e in self._manifest["shards"]}
        for name in self._store.list_names():
            if name.endswith(".tmp"):
                log.warning("%s: removing temporary file %s left by a killed writer", self._store, name)
                self._store.delete(name)
            elif _SHARD_NAME.match(name) and name not in recorded:
                log.warning("%s: removing shard %s that the manifest does not list (writer killed before "
                            "committing it); its frames will be written again", self._store, name)
                self._store.delete(name)

    # ----------------------------------------------------------------- public API
    def committed_keys(self) -> set[tuple[str, int]]:
        """(video_id, frame_index) of every row in a committed shard."""
        return set(self._committed)

    def add(self, video_id: str, frame_index: int, image: np.ndarray, semantic: np.ndarray,
            instance: np.ndarray, ignore: np.ndarray, depth: np.ndarray | None = None,
            flow: np.ndarray | None = None, flow_valid: np.ndarray | None = None) -> bool:
        """Buffer one frame; False (and nothing written) if a committed shard already holds it."""
        key = (str(video_id), int(frame_index))
        if key in self._committed:
            self.summary.skipped += 1
            return False
        if key in self._pending:
            raise DataError(f"{self._store}: video {key[0]!r} frame {key[1]} added twice in one run")
        self._group.append(encode_row(*key, image, semantic, instance, ignore, depth, flow, flow_valid,
                                      image_codec=self.cfg.image_encoding, label_codec=self.cfg.label_encoding,
                                      png_level=self.cfg.png_level))
        self._pending.add(key)
        self.summary.written += 1
        if len(self._pending) >= self.cfg.rows_per_shard:
            self.flush()
        elif len(self._group) >= self.cfg.rows_per_row_group:
            self._write_group()
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
        if not self._pending:
            return None
        self._write_group()
        self._parquet.close()
        data = self._sink.getvalue()
        self._sink = self._parquet = None
        name = f"part-{self._next_index():06d}.parquet"
        self._store.write_atomic(name, data)
        keys: dict[str, list[int]] = {}
        for vid, idx in self._pending:
            keys.setdefault(vid, []).append(idx)
        entry = {"file": name, "rows": len(self._pending), "bytes": len(data),
                 "sha256": hashlib.sha256(data).hexdigest(), "config_hash": self.config_hash,
                 "code_version": self.code_version, "keys": {v: _to_ranges(ix) for v, ix in sorted(keys.items())}}
        self._manifest["shards"].append(entry)
        self._write_manifest()
        self._committed |= self._pending
        self._pending = set()
        self.summary.shards += 1
        return name

    def close(self) -> None:
        self.flush()

    def set_meta(self, key: str, value: Any) -> None:
        """Store a JSON value under ``meta[key]`` in the manifest (thing/stuff split, centroid file)."""
        json.dumps(value)  # fail here, not half-way through writing the manifest
        self._manifest["meta"][key] = value
        self._write_manifest()

    # ----------------------------------------------------------------- internals
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

    def _next_index(self) -> int:
        used = [int(m.group(1)) for e in self._manifest["shards"] if (m := _SHARD_NAME.match(e["file"]))]
        return max(used, default=-1) + 1

    def _write_manifest(self) -> None:
        blob = json.dumps(self._manifest, indent=1, sort_keys=True).encode()
        self._store.write_atomic(MANIFEST, blob)


# --------------------------------------------------------------------------- readers
_FSSPEC_HTTP = "fsspec.implementations.http"


def _disable_broken_fsspec_http() -> None:
    """Work around a race that makes ``ray.data.read_parquet`` of several files fail here.

    ``ray[data]`` installs fsspec but not aiohttp, so ``fsspec.implementations.http`` cannot
    import. Ray probes it from several listing threads at once, and a thread that sees another
    thread's half-imported module gets ``ImportError`` instead of the ``ModuleNotFoundError``
    Ray catches. Marking the module absent makes every probe fail the way Ray expects. HTTP
    storage cannot work without aiohttp anyway, so nothing that worked stops working. This
    covers the driver only: Ray workers also list files, so jobs set
    ``RAY_DATA_LIST_FILES_THREADED_NUM_WORKERS=1`` before ``ray.init`` (or install aiohttp).
    """
    if _FSSPEC_HTTP in sys.modules:
        return
    try:
        importlib.import_module(_FSSPEC_HTTP)
    except ImportError as exc:
        log.info("fsspec HTTP filesystem unavailable (%s); marking it absent so Ray Data's "
                    "parallel file listing does not race on its import", exc)
        sys.modules[_FSSPEC_HTTP] = None  # type: ignore[assignment]


def shard_files(path: str | os.PathLike) -> list[str]:
    """Committed shard files (local paths or URIs) for ``ray.data.read_parquet``.

    Only manifest-listed files: a stray file in the directory is never read as data.
    """
    _disable_broken_fsspec_http()
    out = []
    for store in _manifest_dirs(path):
        for entry in read_manifest(store.uri("")).get("shards", []):
            _check_present(store, entry)
            out.append(store.uri(entry["file"]))
    return out


def verify_shards(path: str | os.PathLike) -> int:
    """Check every committed shard's size and sha256; returns the number of shards checked."""
    n = 0
    for store in _manifest_dirs(path):
        for entry in read_manifest(store.uri(""))["shards"]:
            _read_verified(store, entry)
            n += 1
    return n


def read_shards(path: str | os.PathLike, *, verify: bool = True, batch_rows: int = 16) -> Iterator[Frame]:
    """Decoded frames of every committed shard, in commit order (each shard checksummed first)."""
    for store in _manifest_dirs(path):
        for entry in read_manifest(store.uri(""))["shards"]:
            data = _read_verified(store, entry) if verify else store.read_bytes(entry["file"])
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
        for frame in source:
            writer.add_frame(frame)
    return writer.summary
