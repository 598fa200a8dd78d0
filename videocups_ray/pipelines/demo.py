"""The demo job on the embedded default, SynthDrive, end to end on one machine:

SynthDrive corpus (+ a held-out sequence) -> pseudo-labels through the Ray actor pipeline ->
their STQ -> Ray Train of the VPS model on the pseudo-labels -> inference on the held-out
sequence -> model vs pseudo-label STQ -> ``demo_summary.json`` -> HTML report
(``pipelines/report.py``; ``videocups report RUN`` rebuilds it) -> ``summary.json``, the
held-out result for scripts (:func:`result_summary`).

Each stage is a function of the config and the run folder, so the job reads top to bottom.
One local Ray instance serves every Ray stage and is stopped at the end.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

from videocups_ray import __version__
from videocups_ray.config import Config, with_overrides
from videocups_ray.pipelines.report import save_demo_summary, write_demo_report

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


def stage_pseudolabel(cfg: Config, corpus: Path, out: Path) -> tuple[Path, dict]:
    """Pseudo-label the corpus with the default (weight-free) cues into shards, through the
    Ray actor pipeline."""
    from videocups_ray.pipelines.ray_pseudolabel import run_ray

    summary = run_ray(cfg, str(corpus), str(out), progress=True)
    return out, summary


def stage_train(cfg: Config, shards: Path, run: Path) -> dict:
    """Ray Train on the pseudo-labels; ``train.rounds`` > 1 adds self-training rounds."""
    from videocups_ray.pipelines.self_training import run_self_training

    return run_self_training(cfg, str(shards), str(run / "train"))


def stage_infer(cfg: Config, model: str, corpus: Path, run: Path) -> Path:
    from videocups_ray.pipelines.infer import run_infer

    out = run / "pred_val"
    run_infer(cfg, model, str(corpus), str(out), "kitti-step")
    return out


def stage_eval_model(cfg: Config, corpus: Path, preds: Path) -> dict:
    from videocups_ray.pipelines.evaluate import evaluate_paths

    return evaluate_paths(str(corpus), str(preds), fmt="kitti-step", cfg=cfg.eval, unsupervised=True)


def stage_eval_pseudo(cfg: Config, corpus: Path, shards: Path) -> dict:
    from videocups_ray.data.formats import open_source
    from videocups_ray.pipelines.evaluate import evaluate_pseudolabels

    return evaluate_pseudolabels(shards, open_source(str(corpus)), cfg.eval)


RESULT_FILE = "summary.json"  # the demo's result for scripts (demo_summary.json feeds the report)


def result_summary(pseudo_val: dict, model: dict, seconds: dict[str, float]) -> dict:
    """``{"pseudo": {...}, "model": {...}, "seconds": {stage: s}}``: STQ / AQ / SQ of the
    pseudo-labels and of the model on the held-out sequence (unsupervised matching), plus
    ``AQ_static`` / ``AQ_moving`` (None without tracks of that kind) when the scores carry the
    split (metrics/aq_split.py), and the seconds per stage."""
    def scores(r: dict) -> dict:
        out = {k: r[k] for k in ("STQ", "AQ", "SQ")}
        split = r.get("AQ_split")
        if split:
            out.update(AQ_static=split["static"]["AQ"], AQ_moving=split["moving"]["AQ"])
        return out

    return {"pseudo": scores(pseudo_val), "model": scores(model),
            "seconds": {k: round(float(v), 2) for k, v in seconds.items()}}


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
    with ray_session(cfg.ray):
        pseudo, pl_summary = timed("pseudo-labels", stage_pseudolabel, cfg, corpus, run / "shards_pseudo")
        pseudo_val, _ = timed("pseudo-labels held-out", stage_pseudolabel, cfg, val, run / "shards_pseudo_val")
        train = timed("train", stage_train, cfg, pseudo, run)
        preds = timed("infer held-out", stage_infer, cfg, train["model"], val, run)
    pl_scores = timed("eval pseudo-labels", stage_eval_pseudo, cfg, corpus, pseudo)
    pl_val_scores = timed("eval pseudo-labels held-out", stage_eval_pseudo, cfg, val, pseudo_val)
    model_scores = timed("eval model", stage_eval_model, cfg, val, preds)
    summary = {
        "version": __version__, "config_hash": cfg.hash(),
        "paths": {"corpus": str(corpus), "val": str(val), "pseudo": str(pseudo), "pseudo_val": str(pseudo_val),
                  "train": str(run / "train"), "model": train["model"], "preds": str(preds)},
        "scores": {"pseudo": pl_scores, "pseudo_val": pl_val_scores, "model": model_scores},
        "pseudolabel": pl_summary, "utilisation": pl_summary.get("utilisation"),
        "timings": dict(timings),
    }
    t = time.perf_counter()
    save_demo_summary(run, summary)  # `videocups report RUN` rebuilds the report from it
    index = write_demo_report(cfg, run, summary)
    timings.append(("report", time.perf_counter() - t))
    timings.append(("total", time.perf_counter() - t0))
    summary["timings"] = dict(timings)
    save_demo_summary(run, summary)
    result = result_summary(pl_val_scores, model_scores, dict(timings))
    (run / RESULT_FILE).write_text(json.dumps(result, indent=2))
    log.info("held-out STQ: pseudo-labels %.3f, model %.3f (%s)", result["pseudo"]["STQ"], result["model"]["STQ"],
             run / RESULT_FILE)
    log.info("demo done in %.1f s; report %s", timings[-1][1], index)
    return index
