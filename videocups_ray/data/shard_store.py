"""A folder on any ``pyarrow.fs`` filesystem (local path, ``file://``, ``s3://``, ``gs://``).

Shard files and manifest objects go through this one class, so a local path and an object
store run the same code. On a local disk a published file is written under a temporary name,
fsync'ed, renamed into place and the folder fsync'ed; an object store publishes an object only
when its upload completes (no partial objects), and some (GCS) have no rename, so there the
final name is written directly.
"""

from __future__ import annotations

import os
import time
import uuid

import pyarrow.fs as pafs


class Store:
    """A folder addressed by relative file names (``"part-x.parquet"``, ``"_manifest/log-1.json"``)."""

    def __init__(self, uri: str | os.PathLike, fs: pafs.FileSystem | None = None):
        uri = os.fspath(uri)
        if fs is not None:  # an explicit filesystem (tests: SubTreeFileSystem, mock filesystems)
            self.fs, self.base, self._scheme = fs, uri, ""
        elif "://" in uri:
            self.fs, self.base = pafs.FileSystem.from_uri(uri)
            self._scheme = uri.split("://", 1)[0]
        else:
            self.fs, self.base, self._scheme = pafs.LocalFileSystem(), os.path.abspath(uri), ""
        self.base = self.base.rstrip("/")
        self.local = isinstance(self.fs, pafs.LocalFileSystem)

    def __str__(self) -> str:
        return self.uri("")

    def sub(self, name: str) -> "Store":
        """The subfolder ``name`` on the same filesystem."""
        child = Store.__new__(Store)
        child.fs, child.base, child._scheme, child.local = self.fs, self.path(name), self._scheme, self.local
        return child

    def path(self, name: str) -> str:
        return f"{self.base}/{name}" if name else self.base

    def uri(self, name: str) -> str:
        """What to hand to another reader (ray.data.read_parquet): a local path or a full URI."""
        p = self.path(name)
        return p if not self._scheme or self.local else f"{self._scheme}://{p}"

    def makedirs(self, name: str = "") -> None:
        self.fs.create_dir(self.path(name), recursive=True)

    def is_dir(self, name: str = "") -> bool:
        return self.fs.get_file_info(self.path(name)).type == pafs.FileType.Directory

    def info(self, name: str) -> pafs.FileInfo:
        return self.fs.get_file_info(self.path(name))

    def list_names(self, name: str = "") -> list[str]:
        """Names directly inside the folder (or its subfolder ``name``); [] if it does not exist."""
        sel = pafs.FileSelector(self.path(name), allow_not_found=True, recursive=False)
        return [i.base_name for i in self.fs.get_file_info(sel)]

    def subdirs(self) -> list[str]:
        sel = pafs.FileSelector(self.base, allow_not_found=True, recursive=False)
        return sorted(i.base_name for i in self.fs.get_file_info(sel) if i.type == pafs.FileType.Directory)

    def read_bytes(self, name: str) -> bytes:
        with self.fs.open_input_stream(self.path(name)) as f:
            return f.read()

    def open_input_file(self, name: str):
        return self.fs.open_input_file(self.path(name))

    def delete(self, name: str) -> None:
        self.fs.delete_file(self.path(name))

    def move(self, src: str, dst: str) -> None:
        self.fs.move(self.path(src), self.path(dst))

    def write_tmp(self, name: str, data: bytes) -> str:
        """Write ``data`` under a temporary name (made durable on a local disk); returns that name."""
        tmp = f"{name}.{os.getpid()}.{time.monotonic_ns()}.tmp"
        with self.fs.open_output_stream(self.path(tmp)) as f:
            f.write(data)
        if self.local:
            _fsync(self.path(tmp))
        return tmp

    def commit_tmp(self, tmp: str, name: str) -> None:
        """Rename into place (atomic on a local disk; object stores have no partial objects)."""
        self.fs.move(self.path(tmp), self.path(name))
        if self.local:
            _fsync(os.path.dirname(self.path(name)))

    def write_atomic(self, name: str, data: bytes) -> None:
        """Publish ``data`` under ``name`` all at once, or not at all (replacing any old ``name``)."""
        if not self.local:
            with self.fs.open_output_stream(self.path(name)) as f:
                f.write(data)
            return
        self.commit_tmp(self.write_tmp(name, data), name)

    def write_new(self, name: str, data: bytes) -> bool:
        """Publish ``data`` under ``name`` only if ``name`` does not exist yet; False if it does.

        On a local disk this is exact (a hard link fails on an existing name), so two
        committers can never both claim one manifest generation. Object stores check and
        then write: exact for one committer per directory, which is the documented rule.
        """
        if not self.local:
            if self.info(name).type != pafs.FileType.NotFound:
                return False
            self.write_atomic(name, data)
            return True
        tmp = self.write_tmp(f"{name}.{uuid.uuid4().hex[:8]}", data)
        try:
            os.link(self.path(tmp), self.path(name))
        except FileExistsError:
            return False
        finally:
            os.unlink(self.path(tmp))
        _fsync(os.path.dirname(self.path(name)))
        return True


def _fsync(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
