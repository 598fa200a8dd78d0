"""The demo job on the embedded default, SynthDrive, end to end on one machine:

SynthDrive corpus (+ a held-out sequence) -> ground-truth shards -> pseudo-labels through the
Ray actor pipeline -> their STQ -> Ray Train of the VPS model on the pseudo-labels ->
inference on the held-out sequence -> model vs pseudo-label STQ -> HTML report.

Each stage is a function of the config and the run folder, so the job reads top to bottom.
One local Ray instance serves every Ray stage and is stopped at the end.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Iterator
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


VAL_SEED_OFFSET = 1000  # the held-out sequence's seed: cfg.synth.seed + this


def demo_config(cfg: Config, quick: bool) -> Config:
    """``quick``: the smallest corpus and a few training steps, for the smoke test."""
    if quick:
        return with_overrides(
            cfg, synth={"sequences": 1, "frames": 6, "height": 128, "width": 256},
            labeling={"num_clusters": 8, "min_track_frames": 2},
            model={"min_size": 128, "max_size": 256, "fpn_channels": 32, "box_head_dim": 64,
                   "mask_head_channels": 16, "semantic_head_channels": 16, "embed_dim": 16,
                   "backbone_norm": "bn"},
            train={"max_steps": 2, "checkpoint_every": 2, "workers": (1, 1)})
    return cfg


def val_config(cfg: Config) -> Config:
    """The held-out corpus: one sequence from another seed, same size and difficulty."""
    return with_overrides(cfg, synth={"sequences": 1, "seed": cfg.synth.seed + VAL_SEED_OFFSET})


def stage_synth(cfg: Config, run: Path, name: str = "synth") -> Path:
    from videocups_ray.data.synthdrive import write_synth_dataset

    out = run / name
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


def stage_pseudolabel(cfg: Config, corpus: Path, out: Path) -> tuple[Path, dict]:
    """Pseudo-label the corpus with the default (weight-free) cues into shards, through the
    Ray actor pipeline."""
    from videocups_ray.pipelines.ray_pseudolabel import run_ray

    summary = run_ray(cfg, str(corpus), str(out), progress=True)
    return out, summary


def stage_train(cfg: Config, shards: Path, run: Path) -> dict:
    from videocups_ray.pipelines.train import run_train

    return run_train(cfg, str(shards), str(run / "train"))


def stage_infer(cfg: Config, model: str, corpus: Path, run: Path) -> Path:
    from videocups_ray.pipelines.infer import run_infer

    out = run / "pred_val"
    run_infer(cfg, model, str(corpus), str(out), "kitti-step")
    return out


def stage_eval_model(cfg: Config, corpus: Path, preds: Path) -> dict:
    from videocups_ray.pipelines.evaluate import evaluate_paths

    return evaluate_paths(str(corpus), str(preds), fmt="kitti-step", cfg=cfg.eval, unsupervised=True)


def stage_eval_pseudo(cfg: Config, corpus: Path, shards: Path) -> dict:
    from videocups_ray.data.sources import open_source
    from videocups_ray.pipelines.evaluate import evaluate_pseudolabels

    return evaluate_pseudolabels(shards, open_source(str(corpus)), cfg.eval)


def sampled_frames(src, per_video: int) -> Iterator[Frame]:
    """``per_video`` frames of every video of ``src``, evenly spread from first to last."""
    for vid in src.videos():
        n = src.num_frames(vid)
        picks = set(np.linspace(0, n - 1, min(per_video, n)).round().astype(int).tolist())
        yield from (f for i, f in enumerate(src.frames(vid)) if i in picks)


def _score_rows(name: str, r: dict) -> list:
    return [name, r["STQ"], r["AQ"], r["SQ"], r.get("VPQ")]


def stage_report_model(report: HtmlReport, val: Path, preds: Path, model_scores: dict,
                       pseudo_scores: dict, train_summary: dict, frames: int = 4) -> None:
    from videocups_ray.data.sources import open_source
    from videocups_ray.pipelines.evaluate import load_label_dir

    report.heading("VPS model trained on the pseudo-labels, on a held-out sequence")
    report.text(
        f"Panoptic Cascade MaskTrack R-CNN ({train_summary.get('steps')} steps on Ray Train, "
        f"{train_summary.get('workers')} worker(s), {train_summary.get('strategy')}, "
        f"{train_summary.get('images_per_s')} images/s). Both rows are scored on the held-out "
        "sequence with the unsupervised cluster-to-class matching.")
    report.table(["labels", "STQ", "AQ", "SQ", "VPQ"],
                 [_score_rows("pseudo-labels (held-out sequence)", pseudo_scores),
                  _score_rows("model predictions (held-out sequence)", model_scores)],
                 caption="Model vs pseudo-labels")
    comparison_rows(report, open_source(str(val)), load_label_dir(preds, "kitti-step"),
                    "model prediction", frames)


def comparison_rows(report: HtmlReport, gt_source, labels: Iterable[Frame], name: str,
                    per_video: int) -> None:
    """Rows of (frame, ground truth, ``labels``) for sampled frames of every video."""
    by_key = {(f.video_id, f.frame_index): f for f in labels}
    for frame in sampled_frames(gt_source, per_video):
        p = by_key.get((frame.video_id, frame.frame_index))
        if p is not None:
            report.image_row([
                (f"{frame.video_id}/{frame.frame_index:06d}", frame.image),
                ("ground truth", colorize_panoptic(frame.semantic, frame.instance, image=frame.image)),
                (name, colorize_panoptic(p.semantic, p.instance, palette="pseudo", image=frame.image)),
            ], width=360)


def stage_report_pseudo(report: HtmlReport, corpus: Path, shards: Path, scores: dict,
                        summary: dict, frames_per_video: int = 4) -> None:
    from videocups_ray.data.sources import open_source
    from videocups_ray.data.pseudolabels import read_pseudolabels

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
    report.text("Each row: frame, ground truth (Cityscapes colours, track IDs), pseudo-label "
                "(pseudo-class colours, pseudo track IDs; black = ignore).")
    comparison_rows(report, open_source(str(corpus)), read_pseudolabels(shards), "pseudo-label",
                    frames_per_video)


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
    for frame in sampled_frames(src, frames_per_video):
        report.image_row(_frame_row(frame), width=300)


def run_demo(cfg: Config, run: Path, quick: bool = False) -> Path:
    """Run every stage; return the report's index.html."""
    from videocups_ray.pipelines.ray_runtime import ray_session

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
    val = timed("synth held-out", stage_synth, val_config(cfg), run, "synth_val")
    shards = timed("gt shards", stage_gt_shards, cfg, corpus, run)
    with ray_session(cfg.ray):
        pseudo, pl_summary = timed("pseudo-labels", stage_pseudolabel, cfg, corpus, run / "shards_pseudo")
        pseudo_val, _ = timed("pseudo-labels held-out", stage_pseudolabel, cfg, val, run / "shards_pseudo_val")
        train = timed("train", stage_train, cfg, pseudo, run)
        preds = timed("infer held-out", stage_infer, cfg, train["model"], val, run)
    pl_scores = timed("eval pseudo-labels", stage_eval_pseudo, cfg, corpus, pseudo)
    pl_val_scores = timed("eval pseudo-labels held-out", stage_eval_pseudo, cfg, val, pseudo_val)
    model_scores = timed("eval model", stage_eval_model, cfg, val, preds)

    report = HtmlReport(run / "report", "videocups-ray demo")
    report.text(f"videocups-ray {__version__}; config hash {cfg.hash()}; corpus {corpus} "
                f"(held-out {val}); shards: ground truth {shards}, pseudo-labels {pseudo}; "
                f"model {train['model']}; predictions {preds}.")
    timed("report model", stage_report_model, report, val, preds, model_scores, pl_val_scores, train)
    timed("report pseudo", stage_report_pseudo, report, corpus, pseudo, pl_scores, pl_summary)
    timed("report gt", stage_report_gt, report, corpus)
    timings.append(("total", time.perf_counter() - t0))
    report.heading("Stage timings")
    report.table(["stage", "seconds"], [(n, round(s, 2)) for n, s in timings])
    return report.write()
