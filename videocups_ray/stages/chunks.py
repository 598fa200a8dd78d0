"""Cutting long videos into overlapping chunks, and stitching track IDs across the cuts.

A 10-hour drive must not be serialised on one tracker, so a video longer than
``ray.chunk_frames`` is cut into chunks labelled independently (in parallel on Ray, in turn in
the local engine: the same chunks either way, so both give the same shards). Chunk k owns
frames ``[start, stop)``; it also labels the next ``ray.chunk_overlap`` frames (its *tail*),
which the next chunk owns as its *head*. The same frames therefore carry two sets of track IDs,
and :func:`stitch_ids` matches them by IoU summed over the overlap (Hungarian, IoU >
``labeling.tau_m``): matched tracks keep the earlier chunk's global ID, others get new ones.
:class:`VideoStitcher` applies this in chunk order as chunks finish in any order.

Cuts fall on clip boundaries (``chunk_frames`` is rounded down to a multiple of
``labeling.clip_length``) so clip-level class alignment sees whole clips. What chunking does
change: the first frame of a chunk has no t-1 (no backward vote, no association), and the
geometry depth starts without its previous plane. No Ray here.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np

from videocups_ray.config import Config
from videocups_ray.data.types import DataError
from videocups_ray.labeling import ThingStuffStats, merge_thing_stuff
from videocups_ray.labeling.tracker import MAX_TRACK_ID, match_by_iou
from videocups_ray.stages.scheduler import ChunkResult, ChunkSpec

log = logging.getLogger(__name__)


def chunk_length(cfg: Config) -> int:
    """``ray.chunk_frames`` rounded down to whole clips (at least one clip)."""
    clip = cfg.labeling.clip_length
    length = cfg.ray.chunk_frames
    if length >= clip and length % clip:
        return length // clip * clip
    return length


def plan_chunks(video_id: str, num_frames: int, cfg: Config) -> list[ChunkSpec]:
    """The chunks of one video (one chunk when it fits; a 1-frame remainder joins the last)."""
    if num_frames < 2:
        raise DataError(f"video {video_id!r}: {num_frames} frame(s); pseudo-labels need at least 2 "
                        "(a single frame has no optical flow)")
    length, overlap = chunk_length(cfg), cfg.ray.chunk_overlap
    starts = list(range(0, num_frames, length))
    if len(starts) > 1 and num_frames - starts[-1] < max(2, overlap):
        starts.pop()  # too short to stand alone: the previous chunk takes it
    chunks = []
    for k, start in enumerate(starts):
        stop = starts[k + 1] if k + 1 < len(starts) else num_frames
        tail = min(overlap, num_frames - stop)
        chunks.append(ChunkSpec(video_id, start, stop, tail=tail, overlap=overlap if k > 0 else 0))
    return chunks


def apply_id_map(instance: np.ndarray, id_map: dict[int, int]) -> np.ndarray:
    """Track IDs renamed by ``id_map`` (IDs not in it keep their value; 0 stays 0)."""
    if not id_map:
        return instance
    top = max(int(instance.max(initial=0)), max(id_map)) + 1
    lut = np.arange(top, dtype=np.int32)
    for old, new in id_map.items():
        lut[old] = new
    return lut[instance]


def _overlap_iou(tail: dict[int, np.ndarray], head: dict[int, np.ndarray]
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """IoU of every (earlier-chunk track, later-chunk track) pair over the shared frames."""
    frames = sorted(set(tail) & set(head))
    a = np.concatenate([tail[i].ravel() for i in frames]).astype(np.int64)
    b = np.concatenate([head[i].ravel() for i in frames]).astype(np.int64)
    ids_a, ids_b = np.unique(a[a != 0]), np.unique(b[b != 0])
    if ids_a.size == 0 or ids_b.size == 0:
        return ids_a, ids_b, np.zeros((ids_a.size, ids_b.size))
    ia, ib = np.searchsorted(ids_a, a), np.searchsorted(ids_b, b)
    both = (a != 0) & (b != 0)
    inter = np.zeros((ids_a.size, ids_b.size), np.int64)
    np.add.at(inter, (ia[both], ib[both]), 1)
    area_a = np.bincount(ia[a != 0], minlength=ids_a.size)
    area_b = np.bincount(ib[b != 0], minlength=ids_b.size)
    union = area_a[:, None] + area_b[None, :] - inter
    return ids_a, ids_b, inter / np.maximum(union, 1)


def stitch_ids(prev_tail_global: dict[int, np.ndarray] | None, head: dict[int, np.ndarray],
               local_ids: list[int], next_id: int, tau: float, where: str) -> tuple[dict[int, int], int]:
    """Map a chunk's local track IDs to global ones; returns ``(id_map, next free global ID)``.

    ``prev_tail_global``: the previous chunk's tail instance maps, already in global IDs (None
    for a video's first chunk, whose IDs are kept as they are).
    """
    if prev_tail_global is None:
        return {i: i for i in local_ids}, max(local_ids, default=0) + 1
    id_map: dict[int, int] = {}
    if head and prev_tail_global:
        ids_a, ids_b, iou = _overlap_iou(prev_tail_global, head)
        for glob, loc in match_by_iou(ids_a, ids_b, iou, tau):
            id_map[loc] = glob
    for loc in sorted(local_ids):
        if loc not in id_map:
            id_map[loc] = next_id
            next_id += 1
    if next_id - 1 > MAX_TRACK_ID:
        raise DataError(f"{where}: more than {MAX_TRACK_ID} tracks in one video after stitching chunks")
    return id_map, next_id


def to_global(maps: dict[int, np.ndarray], id_map: dict[int, int]) -> dict[int, np.ndarray]:
    """Instance maps renamed by ``id_map``."""
    return {i: apply_id_map(m, id_map) for i, m in maps.items()}


def chunk_key(chunk: ChunkSpec) -> str:
    return f"{chunk.video_id}@{chunk.start}"


@dataclass
class VideoStitcher:
    """Chunks of one video finishing in any order -> ID maps in chunk order, and the video's
    thing/stuff histogram once every chunk is in (what the manifest records per video)."""

    video_id: str
    chunks: list[ChunkSpec]
    tau: float
    finished: dict[int, ChunkResult] = field(default_factory=dict)
    mapped: int = 0  # chunks whose IDs are stitched (in order)
    next_id: int = 1
    prev_tail: dict | None = None
    stats: list[ThingStuffStats] = field(default_factory=list)

    def finish(self, index: int, result: ChunkResult) -> list[tuple[str, dict[int, int]]]:
        """Chunk ``index`` is done; returns ``(chunk key, id map)`` of every chunk now stitched."""
        self.finished[index] = result
        out = []
        while self.mapped in self.finished:
            k = self.mapped
            fin = self.finished.pop(k)
            id_map, self.next_id = stitch_ids(self.prev_tail, fin.head, fin.ids, self.next_id, self.tau,
                                              f"video {self.video_id!r}")
            self.prev_tail = to_global(fin.tail, id_map)
            self.stats.append(fin.stats)
            out.append((chunk_key(self.chunks[k]), id_map))
            self.mapped += 1
        return out

    @property
    def done(self) -> bool:
        return self.mapped == len(self.chunks)

    def stats_entry(self, num_frames: int) -> dict:
        merged = merge_thing_stuff(self.stats)
        return {"in_instance": merged.in_instance.tolist(), "total": merged.total.tolist(), "frames": num_frames}
