"""Resolving an input spec to a :class:`FrameSource` where the frames will be decoded.

``open_input(spec, synth)`` is what a reader actor (or the local engine) calls: a local path
goes to :func:`~videocups_ray.data.formats.open_source`; ``s3://`` / ``gs://`` URIs are
copied through ``pyarrow.fs`` into a private temporary folder next to the reader first (the
file, or the whole folder of a dataset), then opened the same way; ``"synth:"`` renders
SynthDrive from the config in memory (so even the embedded corpus is decoded off the
driver). :class:`MemorySource` holds frames already in memory (tests, benchmarks).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator

import pyarrow as pa
import pyarrow.fs as pafs

from videocups_ray.config import SynthConfig
from videocups_ray.data.formats import open_source
from videocups_ray.data.sources import FrameSource, VideoListSource
from videocups_ray.data.types import DataError, Frame

SYNTH_SPEC = "synth:"
REMOTE_SCHEMES = ("s3", "gs", "gcs", "hdfs", "abfs", "abfss")


class MemorySource(VideoListSource):
    """Frames held in memory, grouped by video (tests, benchmarks, generated corpora)."""

    def __init__(self, frames: list[Frame], has_labels: bool | None = None):
        self._videos: dict[str, list[Frame]] = {}
        for f in frames:
            self._videos.setdefault(str(f.video_id), []).append(f)
        for fs in self._videos.values():
            fs.sort(key=lambda f: f.frame_index)
        self.has_labels = (all(f.semantic is not None and f.instance is not None for f in frames)
                           if has_labels is None else has_labels)

    def __repr__(self) -> str:
        return f"MemorySource({len(self._videos)} videos)"

    def frames(self, video_id: str, start: int = 0, stop: int | None = None) -> Iterator[Frame]:
        for _, frame in self._items(video_id, start, stop, repr(self)):
            yield frame


def synth_source(cfg: SynthConfig) -> MemorySource:
    """All SynthDrive sequences of ``cfg`` rendered into memory (ground truth included)."""
    from videocups_ray.data.synthdrive import generate_sequence

    return MemorySource([f for s in range(cfg.sequences) for f in generate_sequence(cfg, s)])


def is_remote(spec: str) -> bool:
    return "://" in spec and spec.split("://", 1)[0].lower() in REMOTE_SCHEMES


def stage_remote(uri: str, into: str | None = None) -> str:
    """Copy a remote file or folder (``s3://``, ``gs://``) to a private local folder; returns
    the local path. One-line :class:`DataError` when the store cannot be reached."""
    try:
        fs, path = pafs.FileSystem.from_uri(uri)
        info = fs.get_file_info(path)
    except (OSError, pa.ArrowInvalid, pa.ArrowNotImplementedError, ValueError) as exc:
        raise DataError(f"{uri}: cannot be opened ({(str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]})") from None
    if info.type == pafs.FileType.NotFound:
        raise DataError(f"{uri}: no such file or folder")
    into = into or tempfile.mkdtemp(prefix="vcr-input-")
    os.chmod(into, 0o700)
    dest = os.path.join(into, os.path.basename(path.rstrip("/")) or "input")
    try:
        pafs.copy_files(path, dest, source_filesystem=fs, destination_filesystem=pafs.LocalFileSystem())
    except OSError as exc:
        raise DataError(f"{uri}: copy to the reader failed ({(str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]})") from None
    return dest


def open_input(spec: str | os.PathLike | FrameSource, synth: SynthConfig, staging: str | None = None) -> FrameSource:
    """The :class:`FrameSource` of an input spec, opened here (see the module docstring);
    remote inputs are copied under ``staging`` (the caller deletes it when done)."""
    if isinstance(spec, FrameSource):
        return spec
    spec = os.fspath(spec)
    if spec == SYNTH_SPEC:
        return synth_source(synth)
    if is_remote(spec):
        return open_source(stage_remote(spec, staging))
    return open_source(spec)
