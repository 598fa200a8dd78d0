"""A pseudo-label shard folder read back as a :class:`FrameSource` of its images.

Why: ``videocups train-cues`` trains the cues on "videos, folders or shards". A corpus that was
pseudo-labelled once already holds every decoded frame in its shards, on whatever filesystem
they were written to (local, ``s3://``, ``gs://``); reading them back needs no original video.

The index comes from the manifest alone (each entry's ``keys``: video -> frame index ranges), so
opening costs no shard read; ``frames`` reads (checksummed) only the shards that hold the range.
A video's positions are its stored frame indices in order; a video whose stored indices have a
gap is refused, because consecutive positions must be consecutive frames for flow and depth.
The shards' labels are pseudo-labels, not ground truth: ``has_labels`` is False.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

from videocups_ray.data.manifest import Manifest
from videocups_ray.data.shard_store import Store
from videocups_ray.data.shards import manifest_dirs, read_shard
from videocups_ray.data.sources import FrameSource
from videocups_ray.data.types import DataError, Frame


class ShardSource(FrameSource):
    """The images of every committed shard under ``path`` (a shard folder or a folder of them)."""

    has_labels = False

    def __init__(self, path: str | os.PathLike | Store, verify: bool = True) -> None:
        self.path, self.verify = str(path), verify
        # video -> sorted list of (frame index, store, manifest entry)
        index: dict[str, list[tuple[int, Store, dict]]] = {}
        for store in manifest_dirs(path):
            for entry in Manifest.open(store).shards():
                for vid, ranges in entry.get("keys", {}).items():
                    for lo, hi in ranges:
                        index.setdefault(str(vid), []).extend((i, store, entry) for i in range(int(lo), int(hi) + 1))
        for vid, items in index.items():
            items.sort(key=lambda t: t[0])
            idx = [t[0] for t in items]
            gaps = [(a, b) for a, b in zip(idx[:-1], idx[1:]) if b != a + 1]
            if gaps:
                a, b = gaps[0]
                raise DataError(f"{self.path}: video {vid!r} is not stored as consecutive frames (frame {a} is "
                                f"followed by {b}; {len(gaps)} gap(s)); cue training needs consecutive frames")
        if not index:
            raise DataError(f"{self.path}: the shard manifest lists no frames")
        self._index = index

    def __repr__(self) -> str:
        return f"ShardSource({self.path!r}, {len(self._index)} videos)"

    def videos(self) -> list[str]:
        return sorted(self._index)

    def num_frames(self, video_id: str) -> int:
        self._check_video(video_id, self._index)
        return len(self._index[video_id])

    def frames(self, video_id: str, start: int = 0, stop: int | None = None) -> Iterator[Frame]:
        self._check_video(video_id, self._index)
        items = self._index[video_id]
        positions = self._range(len(items), start, stop, f"{self!r} video {video_id!r}")
        if not positions:
            return
        wanted = {items[p][0] for p in positions}
        found: dict[int, Frame] = {}
        seen: set[str] = set()
        for p in positions:  # shards in the order their frames are needed, each read once
            _, store, entry = items[p]
            key = store.uri(entry["file"])
            if key in seen:
                continue
            seen.add(key)
            for frame in read_shard(store, entry, verify=self.verify):
                if str(frame.video_id) == video_id and frame.frame_index in wanted:
                    found[frame.frame_index] = frame
        for p in positions:
            i = items[p][0]
            if i not in found:
                raise DataError(f"{self!r}: video {video_id!r} frame {i} is in the manifest but not in its shard")
            yield found.pop(i)
