"""Pass 1: semantic centroids from sampled frame pairs (one implementation for every engine).

Each video contributes ``labeling.kmeans_frames_per_video`` evenly spaced frames
(:func:`fit_positions`), each with its successor for the flow. The pairs of one video are cut
into :class:`PairBatch` es by :func:`fit_batches` and run flow -> depth (one
:class:`~videocups_ray.stages.scheduler.DepthStream` per video) -> features; each frame's
features are sampled with a seed of (seed, video, frame) only (:func:`sample_batch`), so any
worker draws the same rows. :func:`fit_centroids_from_samples` runs k-means++ and the Lloyd
steps over the samples in key order; its ``partial`` hook lets the Ray engine compute the
per-block statistics on its feature actors, merged on the driver in the same order, so the
centroids are identical whichever engine fitted them.

:class:`FitRecord` says which videos (and how many frames each) the centroids were fitted on,
so a rerun on a corpus that has changed since refits them (nothing labelled yet) or refuses
(shards labelled with the old centroids exist). No Ray here.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from videocups_ray.config import Config, LabelingConfig
from videocups_ray.cues import FeatureResult
from videocups_ray.data.types import DataError, Frame
from videocups_ray.labeling import KMeansStats, init_centroids, merge_stats, partial_stats, update_centroids
from videocups_ray.labeling.semantics import normalize_rows
from videocups_ray.stages.base import PairBatch
from videocups_ray.stages.cues import CueStages
from videocups_ray.stages.scheduler import DepthStream

Sample = tuple[tuple[str, int], np.ndarray]  # ((video_id, frame_index), unit feature rows)
PartialFn = Callable[[list[np.ndarray], np.ndarray], list[KMeansStats]]  # blocks, centroids -> stats per block


def fit_positions(num_frames: int, per_video: int) -> list[int]:
    """Evenly spaced frame positions of a video used for the centroid fit (each with t+1)."""
    if num_frames < 2:
        return []
    count = min(per_video, num_frames - 1)
    return sorted(set(np.linspace(0, num_frames - 2, count).round().astype(int).tolist()))


def fit_batches(video_id: str, frames: Sequence[Frame], batch_pairs: int, attempt: int = 0) -> list[PairBatch]:
    """``frames`` = ``[f_a, f_a+1, f_b, f_b+1, ...]`` (pairs interleaved) -> the video's pass-1
    batches, stream ``fit:<video>#<attempt>``."""
    if len(frames) % 2:
        raise DataError(f"centroid fit, video {video_id!r}: frames must come as (t, t+1) pairs")
    a, b = list(frames[0::2]), list(frames[1::2])
    stream = f"fit:{video_id}#{attempt}"
    return [PairBatch(stream, seq, a[s:s + batch_pairs], b[s:s + batch_pairs])
            for seq, s in enumerate(range(0, len(a), batch_pairs))]


def sample_frame_features(video_id: str, frame_index: int, features_high: np.ndarray,
                          cfg: LabelingConfig, seed: int = 0) -> np.ndarray:
    """``kmeans_samples_per_frame`` unit feature rows of one frame, seeded by (seed, video,
    frame) only, so any worker drawing them gets the same rows."""
    c = features_high.shape[0]
    flat = features_high.reshape(c, -1)
    rng = np.random.default_rng([seed, zlib.crc32(str(video_id).encode()), int(frame_index)])
    n = min(cfg.kmeans_samples_per_frame, flat.shape[1])
    idx = np.sort(rng.choice(flat.shape[1], size=n, replace=False))
    rows = np.ascontiguousarray(flat[:, idx].T, dtype=np.float64)
    keep = np.linalg.norm(rows, axis=1) > 0
    return normalize_rows(rows[keep], f"{video_id} frame {frame_index} features")


def sample_batch(batch: PairBatch, feats: FeatureResult, cfg: LabelingConfig, seed: int = 0) -> list[Sample]:
    """Each frame t of the batch: its key and seeded sample."""
    out = []
    for i, f in enumerate(batch.frames_t):
        key = (str(f.video_id), int(f.frame_index))
        out.append((key, sample_frame_features(*key, feats.high[i], cfg, seed)))
    return out


def local_partial(blocks: list[np.ndarray], centroids: np.ndarray) -> list[KMeansStats]:
    return [partial_stats(b, centroids) for b in blocks]


def kmeans_step(centroids: np.ndarray, samples: Sequence[np.ndarray],
                partial: PartialFn = local_partial) -> tuple[np.ndarray, float]:
    """One Lloyd step over per-frame sample blocks (statistics merged in the given order)."""
    stats = merge_stats(partial(list(samples), centroids))
    cents, _ = update_centroids(centroids, stats)
    return cents, stats.inertia


def fit_centroids_from_samples(samples: Iterable[Sample], cfg: LabelingConfig, seed: int = 0,
                               partial: PartialFn = local_partial) -> np.ndarray:
    """k-means++ on all samples (sorted by key), then ``kmeans_iters`` Lloyd steps."""
    blocks = [s for _, s in sorted(samples, key=lambda kv: kv[0])]
    if not blocks:
        raise DataError("centroid fit: no frames were sampled (every video has fewer than 2 frames, or "
                        "every video was skipped)")
    cents = init_centroids(np.concatenate(blocks), cfg.num_clusters, seed)
    for _ in range(cfg.kmeans_iters):
        cents, _ = kmeans_step(cents, blocks, partial)
    return cents.astype(np.float32)


def sample_video(stages: CueStages, video_id: str, frames: Sequence[Frame], cfg: Config, seed: int = 0) -> list[Sample]:
    """Pass 1 for one video in this process: its pair batches through the cue stages."""
    out: list[Sample] = []
    depth = None
    for batch in fit_batches(video_id, frames, cfg.cues.flow.batch_size):
        depth = depth or DepthStream(stages.depth, batch.stream)
        fr = stages.flow.process(batch.frames_t, batch.frames_t1)
        dr = depth.process(batch, fr)
        fe = stages.features.process(batch.frames_t, dr.depth)
        out += sample_batch(batch, fe, cfg.labeling, seed)
    return out


def fit_centroids(videos: Iterable[tuple[str, Sequence[Frame]]], stages: CueStages, cfg: Config,
                  seed: int = 0) -> np.ndarray:
    """Pass 1 in one process over ``(video_id, pair frames)`` (see :func:`fit_batches`)."""
    samples = [s for vid, frames in videos for s in sample_video(stages, vid, frames, cfg, seed)]
    return fit_centroids_from_samples(samples, cfg.labeling, seed)


@dataclass(frozen=True)
class FitRecord:
    """The corpus the centroids were fitted on: ``video -> frame count`` of every video that
    contributed samples (skipped videos did not)."""

    videos: dict[str, int]

    def to_json(self) -> dict:
        return {"videos": dict(sorted(self.videos.items()))}

    @classmethod
    def from_json(cls, data: dict) -> "FitRecord":
        return cls({str(k): int(v) for k, v in data.get("videos", {}).items()})

    def differences(self, other: "FitRecord", limit: int = 3) -> list[str]:
        """Human-readable differences (``other`` is the corpus now), at most ``limit``."""
        out = []
        for vid in sorted(set(self.videos) | set(other.videos)):
            a, b = self.videos.get(vid), other.videos.get(vid)
            if a == b:
                continue
            if a is None:
                out.append(f"video {vid!r} was not in the fit (skipped or new)")
            elif b is None:
                out.append(f"video {vid!r} was in the fit but is gone or unreadable now")
            else:
                out.append(f"video {vid!r} had {a} frames, now {b}")
        return out[:limit]
