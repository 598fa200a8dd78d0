"""Cutting long videos into overlapping chunks, and stitching track IDs across the cuts.

A 10-hour drive must not be serialised on one tracker, so a video longer than
``ray.chunk_frames`` is cut into chunks labelled in parallel. Chunk k owns frames
``[start, stop)``; it also labels the next ``ray.chunk_overlap`` frames (its *tail*), which
the next chunk owns as its *head*. The same frames therefore carry two sets of track IDs,
and :func:`stitch_ids` matches them by IoU summed over the overlap (Hungarian, IoU >
``labeling.tau_m``): matched tracks keep the earlier chunk's global ID, others get new ones.

Cuts fall on clip boundaries (``chunk_frames`` is rounded down to a multiple of
``labeling.clip_length``) so clip-level class alignment sees whole clips. What chunking does
change: the first frame of a chunk has no t-1 (no backward vote, no association), and the
geometry depth starts without its previous plane; a video short enough for one chunk is
labelled exactly as the local engine labels it.
"""

from __future__ import annotations

import logging

import numpy as np

from videocups_ray.actors.tracker import ChunkSpec
from videocups_ray.config import Config
from videocups_ray.data.types import DataError
from videocups_ray.labeling.tracker import MAX_TRACK_ID, match_by_iou

log = logging.getLogger(__name__)
_warned_rounding = False


def chunk_length(cfg: Config) -> int:
    """``ray.chunk_frames`` rounded down to whole clips (at least one clip)."""
    global _warned_rounding
    clip = cfg.labeling.clip_length
    length = cfg.ray.chunk_frames
    if length >= clip and length % clip:
        rounded = length // clip * clip
        if not _warned_rounding:
            log.warning("ray.chunk_frames=%d is not a multiple of labeling.clip_length=%d; chunks of %d "
                        "frames are used so clips are not cut", length, clip, rounded)
            _warned_rounding = True
        return rounded
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
    from videocups_ray.actors.writer import apply_id_map

    return {i: apply_id_map(m, id_map) for i, m in maps.items()}
