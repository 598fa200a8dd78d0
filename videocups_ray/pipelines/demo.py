"""The demo job on the embedded default: SynthDrive corpus -> shards -> HTML report.

Each stage is a function of the config and the run folder, so the job reads top to bottom
and later stages (pseudo-labeling, training, evaluation) slot in as they land.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np

from videocups_ray import __version__
from videocups_ray.config import Config, with_overrides
from videocups_ray.data.types import Frame
from videocups_ray.viz.overlays import (
    colorize_depth,
    colorize_flow,
    colorize_mask,
    colorize_panoptic,
)
from videocups_ray.viz.report import HtmlReport

log = logging.getLogger(__name__)


def demo_config(cfg: Config, quick: bool) -> Config:
    """The demo's corpus size: small enough for 2 cores, big enough to show every stage."""
    if quick:
        return with_overrides(cfg, synth={"sequences": 1, "frames": 6, "height": 128, "width": 256})
    return cfg


def stage_synth(cfg: Config, run: Path) -> Path:
    from videocups_ray.data.synthdrive import write_synth_dataset

    out = run / "synth"
    if (out / "synthdrive.json").is_file():
        log.info("SynthDrive corpus already in %s; reusing it", out)
        return out
    write_synth_dataset(cfg.synth, out, progress=True)
    return out


def stage_gt_shards(cfg: Config, corpus: Path, run: Path) -> Path:
    from videocups_ray.data.shards import frames_to_shards
    from videocups_ray.data.sources import open_source

    out = run / "shards_gt"
    frames_to_shards(open_source(str(corpus)), str(out), cfg.shards,
                     config_hash=cfg.hash(), code_version=__version__)
    return out


def _frame_row(frame: Frame) -> list[tuple[str, np.ndarray]]:
    items: list[tuple[str, np.ndarray]] = [(f"{frame.video_id}/{frame.frame_index:06d} image", frame.image)]
    if frame.semantic is not None and frame.instance is not None:
        items.append(("panoptic GT (track IDs)", colorize_panoptic(frame.semantic, frame.instance,
                                                                   image=frame.image)))
    if frame.depth is not None:
        items.append(("depth GT", colorize_depth(frame.depth)))
    if frame.flow is not None:
        items.append(("forward flow GT (black: occluded)", colorize_flow(frame.flow, frame.flow_valid)))
    if "motion" in frame.extra:
        items.append(("independent motion GT", colorize_mask(frame.extra["motion"], image=frame.image)))
    return items


def stage_report_gt(report: HtmlReport, corpus: Path, frames_per_video: int = 4) -> None:
    from videocups_ray.data.sources import open_source

    src = open_source(str(corpus))
    report.heading("SynthDrive ground truth")
    report.text("Each row: the RGB frame, panoptic ground truth in Cityscapes colours with each "
                "track's persistent ID, metric depth (near is bright), forward optical flow "
                "(black where the point is occluded at t+1), and the independent-motion mask.")
    for vid in src.videos():
        n = src.num_frames(vid)
        picks = set(np.linspace(0, n - 1, min(frames_per_video, n)).round().astype(int).tolist())
        for frame in src.frames(vid):
            if frame.frame_index in picks:
                report.image_row(_frame_row(frame), width=300)


def run_demo(cfg: Config, run: Path, quick: bool = False) -> Path:
    """Run every stage that exists so far; return the report's index.html."""
    cfg = demo_config(cfg, quick)
    run.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    timings: list[tuple[str, float]] = []

    def timed(name, fn, *a):
        t = time.perf_counter()
        out = fn(*a)
        timings.append((name, time.perf_counter() - t))
        log.info("stage %s done in %.1f s", name, timings[-1][1])
        return out

    corpus = timed("synth", stage_synth, cfg, run)
    shards = timed("gt shards", stage_gt_shards, cfg, corpus, run)

    report = HtmlReport(run / "report", "videocups-ray demo")
    report.text(f"videocups-ray {__version__}; config hash {cfg.hash()}; corpus {corpus}; "
                f"ground-truth shards {shards}.")
    timed("report", stage_report_gt, report, corpus)
    timings.append(("total", time.perf_counter() - t0))
    report.heading("Stage timings")
    report.table(["stage", "seconds"], [(n, round(s, 2)) for n, s in timings])
    return report.write()
