"""The run report: what a person opens to judge a run (``videocups demo`` and ``videocups report``).

It reads a run folder and writes ``<run>/report/index.html`` with:
- pseudo-labels in the *matched ground-truth class colours* (after the unsupervised
  cluster-to-class matching) beside the raw pseudo-class view, so they compare with the
  ground truth by eye;
- plots: training loss curves, per-class IoU of pseudo-labels and model, time per stage and
  actor utilisation, STQ/AQ/SQ per sequence, and on SynthDrive the cue errors (flow EPE, depth
  AbsRel, motion IoU) as a table with histograms;
- one looping clip per sequence (animated WebP): image | ground truth | pseudo-label | model,
  with track IDs, so that tracking can be seen.

A run folder is a demo run (``demo_summary.json``), or any folder holding pseudo-label shards
(a shard manifest), a training run (``metrics.jsonl``) or predictions (``panoptic/``); scores
and matched colours need the ground truth (``--gt``) unless the demo summary names it.
"""

from __future__ import annotations

import json
import logging
import shutil
from collections import defaultdict
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from videocups_ray import __version__
from videocups_ray.config import Config
from videocups_ray.data.types import DataError, Frame
from videocups_ray.viz import plots
from videocups_ray.viz.animation import hstack_labelled, write_webp
from videocups_ray.viz.overlays import colorize_depth, colorize_flow, colorize_mask, colorize_panoptic, colorize_prob
from videocups_ray.viz.report import HtmlReport

log = logging.getLogger(__name__)

DEMO_SUMMARY = "demo_summary.json"
CLIP_FRAMES = 24  # frames per sequence clip (the first ones; a short loop)


# --------------------------------------------------------------------------- helpers
def _sampled(frames: Iterable[Frame], per_video: int, counts: dict[str, int]) -> Iterator[Frame]:
    """``per_video`` frames of every video, evenly spread (``counts``: frames per video)."""
    picks = {v: set(np.linspace(0, n - 1, min(per_video, n)).round().astype(int).tolist()) for v, n in counts.items()}
    for f in frames:
        if f.frame_index in picks.get(f.video_id, ()):
            yield f


def matched_semantic(semantic: np.ndarray, mapping: dict | None) -> np.ndarray:
    """Pseudo-classes mapped to ground-truth classes by the evaluation's matching (255 = none)."""
    if mapping is None:
        raise DataError("no cluster-to-class matching to colour the labels with (evaluate with ground truth first)")
    lut = np.full(max(256, int(semantic.max(initial=0)) + 1), 255, np.uint8)
    for pseudo, gt in mapping["pseudo_to_gt"].items():
        lut[int(pseudo)] = int(gt) if gt is not None else 255
    return lut[semantic.astype(np.int64)]


def _labels_by_key(frames: Iterable[Frame]) -> dict[tuple[str, int], Frame]:
    return {(f.video_id, f.frame_index): f for f in frames}


def _views(frame: Frame, label: Frame | None, mapping: dict | None, name: str, *, raw: bool) -> list:
    """(caption, image) panels of one label map: matched GT colours, and the raw pseudo view."""
    if label is None:
        return [(f"{name}: missing", np.zeros_like(frame.image))]
    out = []
    if mapping is not None:
        out.append((f"{name} (matched classes)", colorize_panoptic(matched_semantic(label.semantic, mapping),
                                                                  label.instance, image=frame.image)))
    if raw or mapping is None:
        out.append((f"{name} (pseudo-classes)", colorize_panoptic(label.semantic, label.instance, palette="pseudo",
                                                                 image=frame.image)))
    return out


# --------------------------------------------------------------------------- sections
def section_labels(report: HtmlReport, title: str, gt_frames: list[Frame], labels: dict, scores: dict | None,
                   name: str, *, raw: bool, per_video: int = 3) -> None:
    report.heading(title)
    if scores is not None:
        report.table(["labels", "STQ", "AQ", "SQ", "VPQ"], [[name, scores["STQ"], scores["AQ"], scores["SQ"],
                                                           scores.get("VPQ")]])
        report.table(["sequence", "STQ", "AQ", "SQ"],
                     [[k, v["STQ"], v["AQ"], v["SQ"]] for k, v in sorted(scores.get("per_sequence", {}).items())])
    mapping = scores.get("mapping") if scores else None
    report.text(f"Each row: frame, ground truth (Cityscapes colours, track IDs), {name} in the ground-truth "
                "class colours it was matched to (black: matched to nothing or ignored)"
                + (", and the same in raw pseudo-class colours." if raw else "."))
    counts: dict[str, int] = defaultdict(int)
    for f in gt_frames:
        counts[f.video_id] += 1
    for frame in _sampled(gt_frames, per_video, counts):
        label = labels.get((frame.video_id, frame.frame_index))
        report.image_row([(f"{frame.video_id}/{frame.frame_index:06d}", frame.image),
                          ("ground truth", colorize_panoptic(frame.semantic, frame.instance, image=frame.image)),
                          *_views(frame, label, mapping, name, raw=raw)], width=320)


def section_clips(report: HtmlReport, gt_frames: list[Frame], sources: dict[str, tuple[dict, dict | None]],
                  *, corpus: str = "", heading: bool = True) -> None:
    """One animated clip per sequence: image | GT | every label kind in its matched GT colours, with
    track IDs. ``sources``: kind -> (labels by (video, frame), matching); ``corpus`` names the set
    (file prefix and caption), since two corpora may reuse video IDs."""
    if heading:
        report.heading("Clips per sequence (tracking)")
        report.text("Looping clips of the first frames of each sequence; the numbers are track IDs, so an ID "
                    "that changes on one object is a tracking error.")
    by_video: dict[str, list[Frame]] = defaultdict(list)
    for f in gt_frames:
        if len(by_video[f.video_id]) < CLIP_FRAMES:
            by_video[f.video_id].append(f)
    for video, frames in sorted(by_video.items()):
        strips = []
        kinds = [k for k, (labels, _) in sources.items() if (video, frames[0].frame_index) in labels]
        for f in frames:
            panels = [("image", f.image), ("ground truth", colorize_panoptic(f.semantic, f.instance, image=f.image))]
            for kind in kinds:
                labels, mapping = sources[kind]
                lab = labels.get((video, f.frame_index))
                panels += _views(f, lab, mapping, kind, raw=False)[:1]
            strips.append(hstack_labelled(panels))
        rel = f"clips/{corpus + '_' if corpus else ''}{video}.webp"
        write_webp(strips, report.out_dir / rel)
        report.animation(rel, f"{corpus + ' ' if corpus else ''}sequence {video}: image | ground truth | "
                              f"{' | '.join(kinds)}")


def cue_errors(cfg: Config, frames: list[Frame], max_pairs: int = 6) -> tuple[dict, dict, list]:
    """Flow EPE, depth AbsRel and motion IoU of the configured cues against SynthDrive ground truth
    on the first pairs of each video: (summary, per-pixel errors, one example row of panels)."""
    from videocups_ray.cues import build_depth, build_flow

    flow_est, depth_est = build_flow(cfg.cues.flow), build_depth(cfg.cues.depth)
    flow_est.setup(cfg.cues.flow.device)
    depth_est.setup(cfg.cues.depth.device)
    epe, absrel, inter, union, example = [], [], 0, 0, []
    pairs = [(a, b) for a, b in zip(frames, frames[1:]) if a.video_id == b.video_id][:max_pairs]
    if not pairs or any(a.flow is None or a.depth is None or "motion" not in a.extra for a, _ in pairs):
        raise DataError("cue errors need ground-truth flow, depth and motion (a SynthDrive corpus)")
    for a, b in pairs:
        fl = flow_est([a], [b])
        dr = depth_est([a], [b], fl)
        valid = a.flow_valid.astype(bool) if a.flow_valid is not None else np.ones(a.image.shape[:2], bool)
        epe.append(np.linalg.norm(fl.fw[0] - a.flow, axis=-1)[valid])
        dv = a.depth > 0
        absrel.append(np.abs(dr.depth[0][dv] - a.depth[dv]) / a.depth[dv])
        pred_m, gt_m = dr.motion_prob[0] > cfg.labeling.alpha, a.extra["motion"].astype(bool)
        inter += int((pred_m & gt_m).sum())
        union += int((pred_m | gt_m).sum())
        if not example:
            example = [(f"{a.video_id}/{a.frame_index:06d}", a.image), ("estimated flow", colorize_flow(fl.fw[0])),
                       ("estimated depth", colorize_depth(dr.depth[0])),
                       ("motion probability", colorize_prob(dr.motion_prob[0])),
                       ("motion GT", colorize_mask(a.extra["motion"], image=a.image))]
    errors = {"EPE": np.concatenate(epe), "AbsRel": np.concatenate(absrel)}
    summary = {"pairs": len(pairs), "EPE px": float(errors["EPE"].mean()), "AbsRel": float(errors["AbsRel"].mean()),
               "motion IoU": inter / union if union else None, "flow": cfg.cues.flow.backend,
               "depth": cfg.cues.depth.backend}
    return summary, errors, example


def section_cues(report: HtmlReport, cfg: Config, frames: list[Frame]) -> None:
    summary, errors, example = cue_errors(cfg, frames)
    report.heading("Cue errors against SynthDrive ground truth")
    report.table(["flow", "depth", "pairs", "flow EPE (px)", "depth AbsRel", f"motion IoU (p > {cfg.labeling.alpha})"],
                 [[summary["flow"], summary["depth"], summary["pairs"], summary["EPE px"], summary["AbsRel"],
                   summary["motion IoU"]]])
    report.figure(plots.error_histograms(errors, {"EPE": "px", "AbsRel": "|d - d*| / d*"}),
                  "per-pixel errors (valid ground-truth pixels)")
    report.image_row(example, width=300)


def section_training(report: HtmlReport, train_dir: Path) -> None:
    records = [json.loads(line) for line in (train_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    report.heading("Training")
    summary_path = train_dir / "summary.json"
    if summary_path.is_file():
        s = json.loads(summary_path.read_text())
        report.table(["steps", "workers", "strategy", "images/s", "seconds"],
                     [[s.get("steps"), s.get("workers"), s.get("strategy"), s.get("images_per_s"), s.get("seconds")]])
    report.figure(plots.loss_curves(records), f"training losses ({train_dir / 'metrics.jsonl'})")


def section_gt(report: HtmlReport, frames: list[Frame], per_video: int = 2) -> None:
    report.heading("SynthDrive ground truth")
    report.text("Each row: frame, panoptic ground truth with persistent track IDs, metric depth (near is "
                "bright), forward flow (black: occluded at t+1), independent-motion mask.")
    counts: dict[str, int] = defaultdict(int)
    for f in frames:
        counts[f.video_id] += 1
    for f in _sampled(frames, per_video, counts):
        row = [(f"{f.video_id}/{f.frame_index:06d}", f.image),
               ("panoptic GT", colorize_panoptic(f.semantic, f.instance, image=f.image))]
        if f.depth is not None:
            row.append(("depth GT", colorize_depth(f.depth)))
        if f.flow is not None:
            row.append(("flow GT", colorize_flow(f.flow, f.flow_valid)))
        if "motion" in f.extra:
            row.append(("motion GT", colorize_mask(f.extra["motion"], image=f.image)))
        report.image_row(row, width=280)


# --------------------------------------------------------------------------- entry points
def _frames(path: str | Path) -> list[Frame]:
    from videocups_ray.data.formats import open_source

    src = open_source(str(path))
    return [f for v in src.videos() for f in src.frames(v)]


def _pseudo(shards: str | Path) -> dict:
    from videocups_ray.data.pseudolabels import read_pseudolabels

    return _labels_by_key(read_pseudolabels(shards))


def _preds(folder: str | Path) -> dict:
    from videocups_ray.pipelines.evaluate import load_label_dir

    return _labels_by_key(load_label_dir(folder, "kitti-step"))


def _fresh_report(run: Path, title: str) -> HtmlReport:
    """A new report in ``run/report``; files of an earlier report there (ours) are removed first, so
    no stale image or clip survives a rewrite."""
    folder = run / "report"
    if folder.is_dir():
        shutil.rmtree(folder)
    return HtmlReport(folder, title)


def write_demo_report(cfg: Config, run: Path, summary: dict) -> Path:
    """The demo's report from its run folder and ``demo_summary.json``."""
    report = _fresh_report(run, "videocups-ray demo")
    p = summary["paths"]
    report.text(f"videocups-ray {__version__}; config hash {summary.get('config_hash')}; corpus {p['corpus']} "
                f"(held-out {p['val']}); pseudo-labels {p['pseudo']}; model {p['model']}; predictions {p['preds']}.")
    scores = summary["scores"]
    corpus, val = _frames(p["corpus"]), _frames(p["val"])
    pseudo, pseudo_val, preds = _pseudo(p["pseudo"]), _pseudo(p["pseudo_val"]), _preds(p["preds"])
    report.heading("Summary")
    report.table(["labels", "STQ", "AQ", "SQ", "VPQ"],
                 [[n, s["STQ"], s["AQ"], s["SQ"], s.get("VPQ")] for n, s in
                  (("pseudo-labels, training corpus", scores["pseudo"]), ("pseudo-labels, held-out", scores["pseudo_val"]),
                   ("model, held-out", scores["model"]))])
    def named(per_seq: dict, corpus: str) -> dict:
        return {f"{corpus} {k}": v for k, v in per_seq.items()}  # both corpora number videos from 0000
    report.figure(plots.scores_per_sequence({"pseudo-labels": {**named(scores["pseudo"]["per_sequence"], "train"),
                                                               **named(scores["pseudo_val"]["per_sequence"], "held-out")},
                                             "model": named(scores["model"]["per_sequence"], "held-out")}),
                  "STQ / AQ / SQ per sequence")
    report.figure(plots.class_iou_bars({"pseudo-labels (held-out)": scores["pseudo_val"]["per_class_iou"],
                                        "model (held-out)": scores["model"]["per_class_iou"]}),
                  "per-class IoU after the unsupervised matching")
    # each corpus is coloured with the matching fitted on its own evaluation
    section_clips(report, corpus, {"pseudo-label": (pseudo, scores["pseudo"].get("mapping"))}, corpus="train")
    section_clips(report, val, {"pseudo-label": (pseudo_val, scores["pseudo_val"].get("mapping")),
                                "model": (preds, scores["model"].get("mapping"))}, corpus="held-out", heading=False)
    section_labels(report, "Pseudo-labels (no human label used)", corpus, pseudo, scores["pseudo"], "pseudo-label",
                   raw=True)
    section_labels(report, "VPS model on the held-out sequence", val, preds, scores["model"], "model", raw=False)
    section_training(report, Path(p["train"]))
    section_cues(report, cfg, val)
    report.heading("Pipeline: time per stage")
    stages = {k: v for k, v in summary["timings"].items() if k != "total"}
    report.figure(plots.stage_times(stages, summary.get("utilisation")),
                  "wall seconds per demo stage; busy share of each pseudo-labelling actor kind")
    report.table(["stage", "seconds"], [[k, round(v, 2)] for k, v in summary["timings"].items()])
    section_gt(report, corpus)
    return report.write()


def write_run_report(cfg: Config, run: str | Path, gt: str | Path | None = None) -> Path:
    """The report of any run folder (see the module docstring); returns ``report/index.html``."""
    run = Path(run)
    if not run.is_dir():
        raise DataError(f"run folder {run}: not found")
    demo = run / DEMO_SUMMARY
    if demo.is_file():
        return write_demo_report(cfg, run, json.loads(demo.read_text()))
    from videocups_ray.pipelines.evaluate import evaluate_paths

    from videocups_ray.data.shards import is_shard_dir, read_manifest

    found = {"shards": is_shard_dir(run), "train": (run / "metrics.jsonl").is_file(),
             "preds": (run / "panoptic").is_dir()}
    if not any(found.values()):
        raise DataError(f"run folder {run}: no run found (expected {DEMO_SUMMARY}, a shard manifest, metrics.jsonl "
                        "or panoptic/)")
    report = _fresh_report(run, f"videocups-ray run {run.name}")
    report.text(f"videocups-ray {__version__}; run folder {run}; ground truth {gt or '(none given: no scores)'}.")
    gt_frames = _frames(gt) if gt else []
    if found["shards"] or found["preds"]:
        labels = _pseudo(run) if found["shards"] else _preds(run)
        name = "pseudo-label" if found["shards"] else "model"
        if gt_frames:
            scores = evaluate_paths(str(gt), str(run), fmt="kitti-step", cfg=cfg.eval, unsupervised=True)
            report.figure(plots.scores_per_sequence({name: scores["per_sequence"]}), "STQ / AQ / SQ per sequence")
            report.figure(plots.class_iou_bars({name: scores["per_class_iou"]}), "per-class IoU after matching")
            section_clips(report, gt_frames, {name: (labels, scores.get("mapping"))})
            section_labels(report, f"{name}s", gt_frames, labels, scores, name, raw=found["shards"])
        else:
            report.heading(f"{name}s (no ground truth given: raw classes)")
            for key in sorted(labels)[:: max(1, len(labels) // 6)][:6]:
                lab = labels[key]
                report.image_row([(f"{key[0]}/{key[1]:06d}", lab.image),
                                  (name, colorize_panoptic(lab.semantic, lab.instance, palette="pseudo",
                                                           image=lab.image))], width=360)
        if found["shards"]:
            skipped = read_manifest(str(run)).get("meta", {}).get("skipped_videos") or {}
            report.table(["skipped input", "reason"],
                         [[video, reason] for video, reason in sorted(skipped.items())] or [["(none)", ""]])
    if found["train"]:
        section_training(report, run)
    return report.write()


def save_demo_summary(run: Path, summary: dict[str, Any]) -> Path:
    path = run / DEMO_SUMMARY
    path.write_text(json.dumps(summary, indent=2, default=str))
    return path
