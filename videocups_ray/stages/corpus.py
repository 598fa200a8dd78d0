"""Corpus bookkeeping shared by every engine: what to resume, and the corpus-wide result.

- :func:`video_done`: the resume test (a video is skipped on a rerun when its per-video
  statistics are stored for the same frame count and all of its frames are committed);
- :func:`corpus_meta`: the thing/stuff split over the per-video histograms and the
  ``meta["pseudolabel"]`` record (thing classes, ratios, K, centroid file, config hash);
- :func:`check_fit_record`: centroids fitted on a corpus that has changed since are refitted
  when nothing was labelled with them yet, and refused otherwise.

No Ray here.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import numpy as np

from videocups_ray import __version__
from videocups_ray.config import Config
from videocups_ray.data.pseudolabels import CENTROIDS_FILE, load_output_centroids
from videocups_ray.data.sources import FrameSource
from videocups_ray.data.types import DataError, Frame
from videocups_ray.labeling import ThingStuffStats, merge_thing_stuff
from videocups_ray.stages.centroids import FitRecord, fit_positions

log = logging.getLogger(__name__)


def video_done(entry: dict | None, committed: int, num_frames: int) -> bool:
    """True when a rerun can skip the video (statistics stored and every frame committed)."""
    return entry is not None and entry.get("frames") == num_frames and committed >= num_frames


def corpus_meta(cfg: Config, per_video: dict[str, dict], videos: list[str]) -> dict:
    """``meta["pseudolabel"]``: the corpus thing/stuff split over the videos of this corpus."""
    k = cfg.labeling.num_clusters
    wanted = set(videos)
    entries = [ThingStuffStats(k, np.array(e["in_instance"], np.int64), np.array(e["total"], np.int64))
               for v, e in sorted(per_video.items()) if v in wanted]
    merged = merge_thing_stuff(entries or [ThingStuffStats(k)])
    things = merged.thing_classes(cfg.labeling.psi)
    return {"thing_classes": list(things), "ratios": [round(float(r), 6) for r in merged.ratios()],
            "psi": cfg.labeling.psi, "num_clusters": k, "centroids": CENTROIDS_FILE,
            "ignore_label": cfg.labeling.ignore_label, "config_hash": cfg.hash(),
            "code_version": __version__, "videos": videos}


def check_fit_record(stored: dict | None, now: FitRecord, *, labelled: int, where: str) -> bool:
    """Can the stored centroids be reused for the corpus ``now``? False: refit them.

    ``labelled``: frames already committed under ``where``; when the corpus changed and some
    exist, the run is refused (refitting would mix two sets of pseudo-classes in one output).
    """
    if stored is None:  # brought by the user, or written by an older version
        log.warning("%s: centroids have no fit record (%s); reusing them as they are", where, "centroids.json")
        return True
    diffs = FitRecord.from_json(stored).differences(now)
    if not diffs:
        return True
    if labelled:
        raise DataError(f"{where}: the centroids there were fitted on a different corpus ({'; '.join(diffs)}), "
                        f"and {labelled} frames were labelled with them; write to a new --out (or delete "
                        "that output) to label this corpus consistently")
    log.warning("%s: corpus changed since the centroids were fitted (%s); refitting", where, "; ".join(diffs))
    return False


def fit_pair_frames(source: FrameSource, video: str, per_video: int) -> list[Frame]:
    """The sampled frames of one video and their successors, interleaved (``fit_batches``)."""
    out: list[Frame] = []
    for p in fit_positions(source.num_frames(video), per_video):
        out.extend(source.frames(video, p, p + 2))
    return out


def skip_reason(exc: BaseException) -> str:
    """One line for the manifest: the error's type and the last line of its message."""
    lines = str(exc).strip().splitlines() or [""]
    return f"{type(exc).__name__}: {lines[-1][:300]}"


def corpus_fit_record(cfg: Config, counts: dict[str, int]) -> FitRecord:
    """The record pass 1 would write for a corpus of ``video -> frame count`` (videos with
    sampled pairs)."""
    per_video = cfg.labeling.kmeans_frames_per_video
    return FitRecord({v: n for v, n in counts.items() if fit_positions(n, per_video)})


def reusable_centroids(cfg: Config, counts: dict[str, int], out: str, labelled: int,
                       decodable: Callable[[str], bool]) -> np.ndarray | None:
    """The centroids stored under ``out`` if they fit this corpus (else None: refit).

    ``decodable(video)``: whether the video's pass-1 frames decode now; asked only for videos
    missing from the stored record, so a video skipped as undecodable that still is does not
    count as a change, and a repaired one does.
    """
    stored = load_output_centroids(out, cfg.labeling.num_clusters)
    if stored is None:
        return None
    cents, record = stored
    now = corpus_fit_record(cfg, counts)
    if record is not None:
        old = FitRecord.from_json(record).videos
        for vid in [v for v in now.videos if v not in old]:
            if not decodable(vid):
                del now.videos[vid]
    if check_fit_record(record, now, labelled=labelled, where=out):
        log.info("pseudolabel: reusing centroids in %s", out)
        return cents
    return None


def check_any_sampled(samples: list, skipped: dict[str, str]) -> None:
    """Pass 1 with no sample because every video was skipped: say why (the first reason)."""
    if not samples and skipped:
        vid = sorted(skipped)[0]
        raise DataError(f"centroid fit: every video was skipped ({len(skipped)}); {vid}: {skipped[vid]}")
