"""The commit log of a shard directory: one small object per commit, compacted now and then.

A shard directory holds its shards (``part-*.parquet``) and a ``_manifest/`` folder::

    _manifest/head.json                    format, config hash, code version (written once)
    _manifest/log-000000000042.json        the commit of generation 42 (one object per commit)
    _manifest/seg-1-000000000001-000000002048.seg
                                           generations 1..2048 compacted (Parquet, one row per
                                           (shard, video), per-video or global meta record)

**Commit** (:meth:`Manifest.commit`): generation ``g + 1`` is published as one new object
``log-<g+1>.json``, created only if absent, so its cost does not depend on the corpus size. A
shard exists for readers only once a committed generation lists it. Every ``compact_every``
commits the log objects are merged into a level-0 segment, and every ``fanout`` segments of
one level into one of the next (a log-structured merge): each record is rewritten
``O(log N)`` times over the life of a corpus, and a reader opens ``O(log N)`` segments plus at
most ``compact_every`` log objects.

**Readers** pick a set of segments and log objects that covers generations 1..head exactly
once (the widest first), so a reader that lists the folder while a compaction runs (the new
segment is written before its inputs are deleted) still sees each generation once. A log
object deleted between listing and reading makes the reader list again.

**Resume** loads only what it needs: per-video committed frame counts (two small columns),
then the frame ranges of the videos it will actually write (row groups are sorted by kind and
video, so Parquet statistics skip the others). Per-video statistics are records of their own
(``vmeta``), not one growing dictionary.

Old directories with a single ``manifest.json`` (format ``videocups-shards/1``) are read as
generation 0; a writer migrates them to ``_manifest/`` on open.

One committer per directory (the driver, or one :class:`~videocups_ray.data.shards.ShardWriter`):
on a local disk a second committer racing for a generation gets a clear error; on object
stores the rule is documented, not enforced.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from videocups_ray.data.shard_codec import SCHEMA_VERSION
from videocups_ray.data.shard_store import Store
from videocups_ray.data.types import DataError

log = logging.getLogger(__name__)

MANIFEST_DIR = "_manifest"
HEAD = "head.json"
LEGACY_MANIFEST = "manifest.json"
LEGACY_FORMAT = f"videocups-shards/{SCHEMA_VERSION}"
MANIFEST_FORMAT = "videocups-shards/2"
SHARD_NAME = re.compile(r"^part-[0-9A-Za-z_-]+\.parquet$")
_LOG = re.compile(r"^log-(\d{12})\.json$")
_SEG = re.compile(r"^seg-(\d+)-(\d{12})-(\d{12})\.seg$")

RECORDS = pa.schema([
    pa.field("kind", pa.string()),  # "meta" | "retract" | "shard" | "vmeta"
    pa.field("video_id", pa.string()),  # shard: one row per video in it; vmeta: the video
    pa.field("gen", pa.int64()),
    pa.field("file", pa.string()),  # shard / retract: the shard file name
    pa.field("rows", pa.int64()),  # shard: rows in the whole file
    pa.field("bytes", pa.int64()),  # shard: file size
    pa.field("sha256", pa.string()),  # shard: checksum of the whole file
    pa.field("n", pa.int64()),  # shard: rows of this video in the file
    pa.field("ranges", pa.list_(pa.int64())),  # shard: this video's frames, flat [first, last, ...] runs
    pa.field("key", pa.string()),  # meta / vmeta key
    pa.field("value", pa.string()),  # meta / vmeta JSON value ("null" = deleted)
])
_SORT = [("kind", "ascending"), ("video_id", "ascending"), ("gen", "ascending")]


class ShardIntegrityError(DataError):
    """A committed shard is missing, has the wrong size or checksum, or the manifest is bad."""


# --------------------------------------------------------------------------- key ranges
def to_ranges(indices: Iterable[int]) -> list[list[int]]:
    """Sorted frame indices as inclusive ``[first, last]`` runs: compact for long videos."""
    out: list[list[int]] = []
    for i in sorted(set(indices)):
        if out and i == out[-1][1] + 1:
            out[-1][1] = i
        else:
            out.append([i, i])
    return out


def from_ranges(ranges: Iterable[Iterable[int]]) -> Iterator[int]:
    for lo, hi in ranges:
        yield from range(lo, hi + 1)


def _pairs(flat: list[int]) -> list[list[int]]:
    return [[flat[i], flat[i + 1]] for i in range(0, len(flat), 2)]


# --------------------------------------------------------------------------- records
def fragment_records(frag: dict) -> list[dict]:
    """Rows of :data:`RECORDS` for one commit object."""
    gen = int(frag["gen"])
    rows: list[dict] = []
    for e in frag.get("shards", []):
        for vid, ranges in e["keys"].items():
            rows.append({"kind": "shard", "video_id": vid, "gen": gen, "file": e["file"], "rows": e["rows"],
                         "bytes": e["bytes"], "sha256": e["sha256"],
                         "n": sum(hi - lo + 1 for lo, hi in ranges), "ranges": [i for r in ranges for i in r]})
    for key, value in frag.get("meta", {}).items():
        rows.append({"kind": "meta", "gen": gen, "key": key, "value": json.dumps(value, sort_keys=True)})
    for key, per_video in frag.get("video_meta", {}).items():
        for vid, value in per_video.items():
            rows.append({"kind": "vmeta", "video_id": vid, "gen": gen, "key": key,
                         "value": json.dumps(value, sort_keys=True)})
    for name in frag.get("retract", []):
        rows.append({"kind": "retract", "gen": gen, "file": name})
    return rows


def _table(rows: list[dict]) -> pa.Table:
    return pa.Table.from_pylist(rows, schema=RECORDS).sort_by(_SORT)


def _entries(table: pa.Table, retracted: set[str]) -> list[dict]:
    """Shard entries (``file``, ``rows``, ``bytes``, ``sha256``, ``gen``, ``keys``) in commit order."""
    by_file: dict[str, dict] = {}
    for r in table.to_pylist():
        if r["file"] in retracted:
            continue
        e = by_file.setdefault(r["file"], {"file": r["file"], "rows": r["rows"], "bytes": r["bytes"],
                                           "sha256": r["sha256"], "gen": r["gen"], "keys": {}})
        e["keys"][r["video_id"]] = _pairs(r["ranges"])
    for e in by_file.values():
        e["keys"] = dict(sorted(e["keys"].items()))
    return sorted(by_file.values(), key=lambda e: (e["gen"], e["file"]))


@dataclass(frozen=True)
class _Part:
    """One object of the cover: a log object (first == last) or a segment."""

    name: str
    first: int
    last: int
    level: int  # -1 for a log object

    @property
    def is_log(self) -> bool:
        return self.level < 0


def _parse(name: str) -> _Part | None:
    if m := _LOG.match(name):
        g = int(m.group(1))
        return _Part(name, g, g, -1)
    if m := _SEG.match(name):
        return _Part(name, int(m.group(2)), int(m.group(3)), int(m.group(1)))
    return None


def _cover(parts: list[_Part], where: str) -> list[_Part]:
    """Non-overlapping parts covering generation 0 (optional) or 1 up to the newest, widest first."""
    out: list[_Part] = []
    nxt = 0
    for p in sorted(parts, key=lambda p: (p.first, -p.last)):
        if p.last < nxt:
            continue  # already covered by a wider part (compaction inputs not deleted yet)
        if p.first == nxt or (nxt == 0 and p.first == 1):
            out.append(p)
            nxt = p.last + 1
            continue
        raise ShardIntegrityError(f"{where}: manifest log has no generation {nxt} "
                                  f"(next object {p.name}); the directory is damaged")
    return out


# --------------------------------------------------------------------------- the manifest
class Manifest:
    """The committed state of one shard directory, and (for its one committer) new commits.

    Cheap to open: reads ``head.json``, lists ``_manifest/`` and parses the log objects not yet
    compacted; segments are read on demand, only the columns and row groups a query needs.
    """

    def __init__(self, store: Store, head: dict, *, compact_every: int = 256, fanout: int = 8):
        self.store, self.head = store, head
        self.compact_every, self.fanout = compact_every, fanout
        self.dir = store.sub(MANIFEST_DIR)
        self.generation = 0
        self._segments: list[_Part] = []
        self._logs: list[dict] = []  # commit objects newer than the last segment, in order
        self._legacy: dict | None = None
        self._garbage: list[str] = []  # objects covered twice (left by an interrupted compaction)
        self._cache: dict[str, Any] = {}  # derived views of the current generation (log table, retractions)

    # ------------------------------------------------------------------ opening
    @classmethod
    def exists(cls, store: Store) -> bool:
        return store.info(f"{MANIFEST_DIR}/{HEAD}").is_file or store.info(LEGACY_MANIFEST).is_file

    @classmethod
    def open(cls, store: Store, **kw) -> "Manifest":
        """Read the committed state (DataError naming the folder when there is no manifest)."""
        head_name = f"{MANIFEST_DIR}/{HEAD}"
        if store.info(head_name).is_file:
            head = _load_json(store, head_name)
            if head.get("format") != MANIFEST_FORMAT or "config_hash" not in head:
                raise ShardIntegrityError(f"{store.uri(head_name)}: invalid manifest head (format "
                                          f"{head.get('format')!r}, expected {MANIFEST_FORMAT!r})")
            m = cls(store, head, **kw)
            m._load()
            return m
        if store.info(LEGACY_MANIFEST).is_file:
            legacy = _load_legacy(store)
            m = cls(store, {"format": MANIFEST_FORMAT, "config_hash": legacy["config_hash"],
                            "code_version": legacy["code_version"]}, **kw)
            m._legacy = legacy
            return m
        raise DataError(f"{store.uri(head_name)}: no shard manifest")

    @classmethod
    def create(cls, store: Store, config_hash: str, code_version: str, **kw) -> "Manifest":
        """A new, empty manifest (or the existing one if a racing writer created it first)."""
        store.makedirs(MANIFEST_DIR)
        head = {"format": MANIFEST_FORMAT, "config_hash": config_hash, "code_version": code_version}
        store.write_new(f"{MANIFEST_DIR}/{HEAD}", json.dumps(head, sort_keys=True).encode())
        return cls.open(store, **kw)

    def _load(self, attempts: int = 3) -> None:
        for attempt in range(attempts):
            parts = [p for n in self.dir.list_names() if (p := _parse(n))]
            cover = _cover(parts, str(self.dir))
            try:
                logs = [_load_json(self.dir, p.name) for p in cover if p.is_log]
            except FileNotFoundError:
                if attempt + 1 == attempts:
                    raise
                continue  # compacted between listing and reading: list again
            used = {p.name for p in cover}
            self._garbage = [p.name for p in parts if p.name not in used]
            self._segments = [p for p in cover if not p.is_log]
            self._logs = logs
            self._cache.clear()
            self.generation = cover[-1].last if cover else 0
            if logs and [f["gen"] for f in logs] != [p.first for p in cover if p.is_log]:
                raise ShardIntegrityError(f"{self.dir}: a log object holds the wrong generation")
            return

    # ------------------------------------------------------------------ reading
    @property
    def config_hash(self) -> str:
        return self.head["config_hash"]

    @property
    def code_version(self) -> str:
        return self.head["code_version"]

    def _log_table(self) -> pa.Table:
        if "log" not in self._cache:
            rows = [r for f in self._logs for r in fragment_records(f)]
            if self._legacy is not None:
                rows = fragment_records(_legacy_fragment(self._legacy)) + rows
            self._cache["log"] = _table(rows)
        return self._cache["log"]

    def _read(self, columns: list[str], filt: Any = None) -> pa.Table:
        """Records of every segment and log object (only ``columns``, rows passing ``filt``).

        A segment that vanished since this object listed the folder was merged by the committer
        (a reader in another process, e.g. a writer actor): list again and read the new cover.
        """
        for attempt in range(3):
            try:
                return self._read_once(columns, filt)
            except FileNotFoundError:
                if attempt == 2:
                    raise
                self._load()
        raise AssertionError("unreachable")

    def _read_once(self, columns: list[str], filt: Any) -> pa.Table:
        tables = []
        for p in self._segments:
            path = self.dir.path(p.name)
            try:
                tables.append(pq.read_table(path, columns=columns, filters=filt, filesystem=self.dir.fs))
            except (OSError, pa.ArrowInvalid) as exc:
                if self.dir.info(p.name).type == pafs.FileType.NotFound:
                    raise FileNotFoundError(self.dir.uri(p.name)) from None
                raise ShardIntegrityError(f"{self.dir.uri(p.name)}: unreadable manifest segment ({exc})") from None
        logt = self._log_table()
        if filt is not None and logt.num_rows:
            logt = logt.filter(filt)
        tables.append(logt.select(columns))
        return pa.concat_tables(tables)

    def _summary(self) -> pa.Table:
        """Every record without its frame ranges and shard sizes, read once per generation.

        Resume questions (counts per video, file names, retractions, meta) are answered from
        it with one read of each segment; frame ranges are read per video on demand.
        """
        if "summary" not in self._cache:
            self._cache["summary"] = self._read(["kind", "video_id", "gen", "file", "n", "key", "value"])
        return self._cache["summary"]

    def _kind(self, *kinds: str) -> pa.Table:
        t = self._summary()
        return t.filter(pc.is_in(t.column("kind"), pa.array(list(kinds))))

    def committed_files(self) -> set[str]:
        """Names of every committed shard file (the debris check on open)."""
        return set(self._kind("shard").column("file").to_pylist()) - self.retracted()

    def retracted(self) -> set[str]:
        return set(self._kind("retract").column("file").to_pylist())

    def shards(self, videos: Iterable[str] | None = None) -> list[dict]:
        """Committed shard entries in commit order; ``videos``: only shards holding one of them."""
        filt = pc.field("kind") == "shard"
        if videos is not None:
            filt = filt & pc.field("video_id").isin(sorted(set(videos)))
        t = self._read(["video_id", "gen", "file", "rows", "bytes", "sha256", "ranges"], filt)
        return _entries(t, self.retracted())

    def committed_counts(self) -> dict[str, int]:
        """Committed frames per video (no frame ranges are read)."""
        t = self._kind("shard")
        dead = self.retracted()
        if dead:
            t = t.filter(pc.invert(pc.is_in(t.column("file"), pa.array(sorted(dead)))))
        if t.num_rows == 0:
            return {}
        g = t.group_by("video_id").aggregate([("n", "sum")])
        return dict(zip(g.column("video_id").to_pylist(), g.column("n_sum").to_pylist()))

    def committed_frames(self, videos: Iterable[str]) -> dict[str, set[int]]:
        """Committed frame indices of ``videos`` only (reads the row groups holding them)."""
        out: dict[str, set[int]] = {v: set() for v in videos}
        if not out:
            return out
        for e in self.shards(out):
            for vid, ranges in e["keys"].items():
                if vid in out:
                    out[vid].update(from_ranges(ranges))
        return out

    def meta(self) -> dict:
        """Global meta, with every per-video record folded in as ``meta[key][video_id]``."""
        t = self._kind("meta", "vmeta")
        t = t.append_column("_vmeta", pc.equal(t.column("kind"), "vmeta")).sort_by(
            [("gen", "ascending"), ("_vmeta", "ascending")])
        out: dict[str, Any] = {}
        cols = [t.column(c).to_pylist() for c in ("kind", "video_id", "key", "value")]
        for kind, vid, key, raw in zip(*cols):
            value = json.loads(raw)
            if kind == "meta":
                out[key] = value
                continue
            per_video = out.setdefault(key, {})
            if value is None:
                per_video.pop(vid, None)
            else:
                per_video[vid] = value
        return out

    def as_dict(self) -> dict:
        """The whole manifest in the old single-file shape (``read_manifest``'s answer): O(corpus)."""
        return {"format": MANIFEST_FORMAT, "config_hash": self.config_hash, "code_version": self.code_version,
                "generation": self.generation, "meta": self.meta(), "shards": self.shards()}

    # ------------------------------------------------------------------ committing
    def commit(self, shards: Iterable[dict] = (), *, meta: dict | None = None,
               video_meta: dict[str, dict[str, Any]] | None = None, retract: Iterable[str] = ()) -> int:
        """Publish one generation: new shard entries, meta values, per-video meta, retractions.

        ``video_meta``: ``{key: {video_id: value}}``; a None value deletes the video's record.
        Returns the new generation number. Cost: one small object (plus, every
        ``compact_every`` commits, one compaction step).
        """
        self.migrate_legacy()
        frag: dict[str, Any] = {"gen": self.generation + 1}
        shards = [{k: e[k] for k in ("file", "rows", "bytes", "sha256", "keys")} for e in shards]
        if shards:
            frag["shards"] = shards
        if meta:
            frag["meta"] = meta
        if video_meta:
            frag["video_meta"] = video_meta
        retract = sorted(set(retract))
        if retract:
            frag["retract"] = retract
        blob = json.dumps(frag, sort_keys=True).encode()  # fails here on a non-JSON value, before any write
        name = f"log-{frag['gen']:012d}.json"
        if not self.dir.write_new(name, blob):
            raise ShardIntegrityError(f"{self.dir.uri(name)}: generation {frag['gen']} was committed by another "
                                      "writer; one job per output directory")
        self.generation = frag["gen"]
        self._logs.append(frag)
        self._cache.clear()
        if len(self._logs) >= self.compact_every:
            self.compact()
        return self.generation

    def compact(self) -> None:
        """Merge the log objects into a level-0 segment, then full levels into the next one."""
        if self._logs:
            first, last = self._logs[0]["gen"], self._logs[-1]["gen"]
            seg = _Part(f"seg-0-{first:012d}-{last:012d}.seg", first, last, 0)
            self._write_segment(seg, self._log_table())
            self._segments.append(seg)
            names, self._logs = [f"log-{f['gen']:012d}.json" for f in self._logs], []
            self._cache.clear()
            self._delete(names)
        while True:
            levels: dict[int, list[_Part]] = {}
            for p in self._segments:
                levels.setdefault(p.level, []).append(p)
            full = [ps for lv, ps in sorted(levels.items()) if len(ps) >= self.fanout]
            if not full:
                return
            group = full[0][: self.fanout]
            merged = pa.concat_tables([pq.read_table(self.dir.path(p.name), filesystem=self.dir.fs)
                                       for p in group]).sort_by(_SORT)
            seg = _Part(f"seg-{group[0].level + 1}-{group[0].first:012d}-{group[-1].last:012d}.seg",
                        group[0].first, group[-1].last, group[0].level + 1)
            self._write_segment(seg, merged)
            self._segments = sorted([p for p in self._segments if p not in group] + [seg], key=lambda p: p.first)
            self._delete([p.name for p in group])

    def _write_segment(self, seg: _Part, table: pa.Table) -> None:
        sink = pa.BufferOutputStream()
        pq.write_table(table, sink, row_group_size=8192, compression="zstd")
        self.dir.write_atomic(seg.name, sink.getvalue().to_pybytes())

    def _delete(self, names: list[str]) -> None:
        for n in names:
            try:
                self.dir.delete(n)
            except FileNotFoundError:
                pass  # already gone: a reader or an earlier cleanup removed it

    def migrate_legacy(self) -> None:
        """Turn an old ``manifest.json`` into generation 0 of a ``_manifest/`` log, then drop it."""
        if self._legacy is None:
            return
        self.store.makedirs(MANIFEST_DIR)
        frag = _legacy_fragment(self._legacy)
        self.dir.write_atomic("log-000000000000.json", json.dumps(frag, sort_keys=True).encode())
        self.dir.write_new(HEAD, json.dumps(self.head, sort_keys=True).encode())
        self.store.delete(LEGACY_MANIFEST)
        log.warning("%s: migrated %s (%d shards) to the %s/ commit log", self.store, LEGACY_MANIFEST,
                    len(frag["shards"]), MANIFEST_DIR)
        self._legacy = None
        self._load()

    def collect_garbage(self) -> None:
        """Delete objects a finished compaction no longer needs, and temporary files (committer only)."""
        self._delete(self._garbage)
        self._garbage = []
        for n in self.dir.list_names():
            if n.endswith(".tmp"):
                self._delete([n])


# --------------------------------------------------------------------------- JSON helpers
def _load_json(store: Store, name: str) -> dict:
    try:
        data = store.read_bytes(name)
    except FileNotFoundError:
        raise
    except OSError as exc:
        if "not found" in str(exc).lower() or "no such file" in str(exc).lower():
            raise FileNotFoundError(store.uri(name)) from None
        raise
    try:
        out = json.loads(data)
        if not isinstance(out, dict):
            raise ValueError("not a JSON object")
        return out
    except ValueError as exc:
        raise ShardIntegrityError(f"{store.uri(name)}: invalid manifest object ({exc})") from None


def _load_legacy(store: Store) -> dict:
    """A ``videocups-shards/1`` single-file manifest, checked field by field."""
    try:
        manifest = json.loads(store.read_bytes(LEGACY_MANIFEST))
        if manifest.get("format") != LEGACY_FORMAT:
            raise ValueError(f"format {manifest.get('format')!r}, expected {LEGACY_FORMAT!r}")
        for field in ("config_hash", "code_version", "meta", "shards"):
            if field not in manifest:
                raise ValueError(f"no {field!r} field")
        for e in manifest["shards"]:
            for field in ("file", "rows", "bytes", "sha256", "keys"):
                if field not in e:
                    raise ValueError(f"shard entry {e.get('file')!r} lacks {field!r}")
    except (json.JSONDecodeError, KeyError, ValueError, TypeError, AttributeError) as exc:
        raise ShardIntegrityError(f"{store.uri(LEGACY_MANIFEST)}: invalid manifest ({exc})") from None
    return manifest


def _legacy_fragment(legacy: dict) -> dict:
    return {"gen": 0, "shards": legacy["shards"], "meta": legacy["meta"]}
