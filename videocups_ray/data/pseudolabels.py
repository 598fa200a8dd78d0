"""Pseudo-label output directories: the manifest keys, the centroid file, and reading back.

A pseudo-label run writes shards (``data/shards.py``), ``centroids.npy`` and the record of the
corpus they were fitted on (``centroids.json``), and in the manifest ``meta``: per-video
thing/stuff histograms (``thingstuff_per_video``), skipped inputs with their reason
(``skipped_videos``) and the corpus result (``pseudolabel``: thing classes, ratios, K, ...).

Everything here goes through ``pyarrow.fs``: ``out`` may be a local path, ``s3://`` or ``gs://``
(a local folder named ``s3:`` is never created). Evaluation, training and the engines read
pseudo-labels through :func:`read_pseudolabels`, which lives here (not in ``pipelines/``) so
that no pipeline imports another one to read a directory.
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs

from videocups_ray.data.shards import is_shard_dir, read_manifest, read_shards  # noqa: F401 - is_shard_dir re-exported
from videocups_ray.data.types import DataError, Frame
from videocups_ray.labeling.thingstuff import apply_thing_stuff

CENTROIDS_FILE = "centroids.npy"
FIT_RECORD_FILE = "centroids.json"
META_KEY = "pseudolabel"
VIDEO_STATS_KEY = "thingstuff_per_video"
SKIPPED_KEY = "skipped_videos"


class OutputError(DataError):
    """An output location cannot be used (bad URI, unreachable store, a file in the way)."""


def output_fs(out: str | os.PathLike) -> tuple[pafs.FileSystem, str]:
    """``(filesystem, base path)`` of an output location; a one-line error when unusable."""
    out = os.fspath(out)
    if "://" not in out:
        return pafs.LocalFileSystem(), os.path.abspath(out)
    try:
        fs, base = pafs.FileSystem.from_uri(out)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, OSError, ValueError) as exc:
        raise OutputError(f"{out}: cannot open this output location ({_first_line(exc)})") from None
    return fs, base.rstrip("/")


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0][:300] if lines else type(exc).__name__


def join_uri(out: str | os.PathLike, name: str) -> str:
    out = os.fspath(out)
    return f"{out.rstrip('/')}/{name}" if "://" in out else os.path.join(out, name)


def _read(out: str | os.PathLike, name: str) -> bytes | None:
    fs, base = output_fs(out)
    path = f"{base}/{name}"
    try:
        if fs.get_file_info(path).type != pafs.FileType.File:
            return None
        with fs.open_input_stream(path) as f:
            return f.read()
    except OSError as exc:
        raise OutputError(f"{join_uri(out, name)}: cannot be read ({_first_line(exc)})") from None


def _write_atomic(out: str | os.PathLike, name: str, data: bytes) -> str:
    fs, base = output_fs(out)
    try:
        fs.create_dir(base, recursive=True)
        if isinstance(fs, pafs.LocalFileSystem):
            tmp = f"{base}/.{name}.{os.getpid()}.tmp"
            with fs.open_output_stream(tmp) as f:
                f.write(data)
            fs.move(tmp, f"{base}/{name}")
        else:  # object stores publish an object only when its upload completes
            with fs.open_output_stream(f"{base}/{name}") as f:
                f.write(data)
    except OSError as exc:
        raise OutputError(f"{join_uri(out, name)}: cannot be written ({_first_line(exc)})") from None
    return join_uri(out, name)


def load_output_centroids(out: str | os.PathLike, k: int) -> tuple[np.ndarray, dict | None] | None:
    """``(centroids, fit record json or None)`` of an output location, or None when absent."""
    raw = _read(out, CENTROIDS_FILE)
    if raw is None:
        return None
    try:
        cents = np.load(io.BytesIO(raw), allow_pickle=False)
    except ValueError as exc:
        raise DataError(f"{join_uri(out, CENTROIDS_FILE)}: not a valid .npy centroid file ({exc})") from None
    if cents.ndim != 2 or cents.shape[0] != k:
        raise DataError(f"{join_uri(out, CENTROIDS_FILE)}: centroids of shape {cents.shape}, config asks for K={k}")
    record = _read(out, FIT_RECORD_FILE)
    return cents.astype(np.float32), (json.loads(record) if record is not None else None)


def save_output_centroids(out: str | os.PathLike, cents: np.ndarray, record: dict) -> str:
    """Write the centroids and their fit record; returns the centroid file's path or URI."""
    buf = io.BytesIO()
    np.save(buf, np.asarray(cents, np.float32), allow_pickle=False)
    _write_atomic(out, FIT_RECORD_FILE, json.dumps(record, sort_keys=True).encode())
    return _write_atomic(out, CENTROIDS_FILE, buf.getvalue())


def pseudolabel_meta(shard_dir: str | os.PathLike) -> dict:
    """``meta["pseudolabel"]`` of a pseudo-label shard directory (DataError if absent)."""
    manifest = read_manifest(shard_dir)
    meta = manifest.get("meta", {}).get(META_KEY)
    if meta is None:
        raise DataError(f"{shard_dir}: manifest has no meta[{META_KEY!r}] (not a finished pseudo-label "
                        "run: rerun `videocups pseudolabel` on the same output to finish it)")
    return meta


def read_pseudolabels(shard_dir: str | os.PathLike, *, apply_split: bool = True, void_ignored: bool = False,
                      verify: bool = True) -> Iterator[Frame]:
    """Frames of a pseudo-label shard directory with the manifest's thing/stuff split applied
    (:func:`~videocups_ray.labeling.apply_thing_stuff`: no instances on stuff classes,
    uncovered thing pixels get the ignore label); ``extra["ignore"]`` is the resulting mask.

    ``void_ignored=False`` (evaluation): pixels of the stored ignore mask (occluded for the
    flow) keep their pseudo-class; ``True`` voids them too, as training does.
    """
    meta = pseudolabel_meta(shard_dir)
    things, ignore_label = tuple(meta["thing_classes"]), int(meta["ignore_label"])
    for frame in read_shards(shard_dir, verify=verify):
        if apply_split:
            stored = frame.extra["ignore"]
            ign = stored if void_ignored else np.zeros_like(stored)
            sem, inst, ign = apply_thing_stuff(frame.semantic, frame.instance, ign, things,
                                               ignore_label=ignore_label)
            frame.semantic, frame.instance, frame.extra["ignore"] = sem, inst, ign | stored
        yield frame
