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


def stage_pseudolabel(cfg: Config, corpus: Path, run: Path) -> tuple[Path, dict]:
    """Pseudo-label the corpus with the default (weight-free) cues into shards, through the
    Ray actor pipeline on a local Ray instance started and stopped here."""
    from videocups_ray.pipelines.ray_pseudolabel import run_ray

    out = run / "shards_pseudo"
    summary = run_ray(cfg, str(corpus), str(out), progress=True)
    return out, summary


def stage_eval_pseudo(cfg: Config, corpus: Path, shards: Path) -> dict:
    from videocups_ray.data.sources import open_source
    from videocups_ray.pipelines.pseudolabel import evaluate_pseudolabels

    return evaluate_pseudolabels(shards, open_source(str(corpus)), cfg.eval)


def _score_rows(name: str, r: dict) -> list:
    return [name, r["STQ"], r["AQ"], r["SQ"], r.get("VPQ")]


def stage_report_pseudo(report: HtmlReport, corpus: Path, shards: Path, scores: dict,
                        summary: dict, frames_per_video: int = 4) -> None:
    from videocups_ray.data.sources import open_source
    from videocups_ray.pipelines.pseudolabel import read_pseudolabels

    report.heading("Pseudo-labels (no human label used)")
    report.text(
        f"{summary.get('frames')} frames pseudo-labelled at {summary.get('frames_per_s')} frames/s "
        f"with the weight-free CPU cues (DIS flow, geometry depth + motion, hand-made features); "
        f"thing pseudo-classes from the corpus split: {summary.get('thing_classes')}. Scores use "
        "the unsupervised cluster-to-class matching (Hungarian on pixel overlap).")
    report.table(["labels", "STQ", "AQ", "SQ", "VPQ"], [_score_rows("pseudo-labels", scores)],
                 caption="Pseudo-label quality against SynthDrive ground truth")
    per_seq = scores.get("per_sequence", {})
    if per_seq:
        report.table(["sequence", "STQ", "AQ", "SQ"],
                     [[k, v["STQ"], v["AQ"], v["SQ"]] for k, v in sorted(per_seq.items())])
    src = open_source(str(corpus))
    pseudo = {(f.video_id, f.frame_index): f for f in read_pseudolabels(shards)}
    report.text("Each row: frame, ground truth (Cityscapes colours, track IDs), pseudo-label "
                "(pseudo-class colours, pseudo track IDs; black = ignore).")
    for vid in src.videos():
        n = src.num_frames(vid)
        picks = set(np.linspace(0, n - 1, min(frames_per_video, n)).round().astype(int).tolist())
        for frame in src.frames(vid):
            p = pseudo.get((frame.video_id, frame.frame_index))
            if frame.frame_index not in picks or p is None:
                continue
            report.image_row([
                (f"{vid}/{frame.frame_index:06d}", frame.image),
                ("ground truth", colorize_panoptic(frame.semantic, frame.instance, image=frame.image)),
                ("pseudo-label", colorize_panoptic(p.semantic, p.instance, palette="pseudo",
                                                   image=frame.image)),
            ], width=360)


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
    pseudo, pl_summary = timed("pseudo-labels", stage_pseudolabel, cfg, corpus, run)
    pl_scores = timed("eval pseudo-labels", stage_eval_pseudo, cfg, corpus, pseudo)

    report = HtmlReport(run / "report", "videocups-ray demo")
    report.text(f"videocups-ray {__version__}; config hash {cfg.hash()}; corpus {corpus}; "
                f"ground-truth shards {shards}; pseudo-label shards {pseudo}.")
    timed("report pseudo", stage_report_pseudo, report, corpus, pseudo, pl_scores, pl_summary)
    timed("report gt", stage_report_gt, report, corpus)
    timings.append(("total", time.perf_counter() - t0))
    report.heading("Stage timings")
    report.table(["stage", "seconds"], [(n, round(s, 2)) for n, s in timings])
    return report.write()
