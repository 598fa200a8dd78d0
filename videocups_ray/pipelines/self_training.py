"""Self-training rounds (``videocups train --rounds N``, ``train.rounds``).

Round 1 trains on the pseudo-labels (``run_train``). Each later round r: the round r-1 model
predicts every training video (frames read from the pseudo-label shards, in temporal order so
tracks are consistent), the predictions are merged with the pseudo-labels
(``labeling.self_labels.merge_self_labels``: pseudo instances kept, the model's instances added
where none lies, the model's semantic map elsewhere) into ``out/round{r}_labels``, and the model
trains on them starting from round r-1's weights, for ``train.round_steps`` steps. The last
round's model is ``out/model.pt``; each round keeps its own run folder ``out/round{r}``.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections import defaultdict
from pathlib import Path
from typing import Any

import torch

from videocups_ray import __version__
from videocups_ray.config import Config, with_overrides
from videocups_ray.data.pseudolabels import read_pseudolabels
from videocups_ray.data.shards import ShardWriter
from videocups_ray.data.types import DataError, Frame
from videocups_ray.labeling.self_labels import merge_self_labels
from videocups_ray.model.checkpoint import load_checkpoint
from videocups_ray.pipelines.train import run_train
from videocups_ray.pipelines.train_data import shard_class_meta

log = logging.getLogger(__name__)


def write_self_labels(cfg: Config, model_path: str | os.PathLike, shards: str | os.PathLike,
                      out: str | os.PathLike) -> dict[str, int]:
    """Predict every video of the pseudo-label ``shards`` with ``model_path`` and write the merged
    labels as shards under ``out``; returns frames and videos written.

    The frames of the corpus are held in memory while a video is predicted (the self-training
    corpora of this project are small; a large one would stream video by video).
    """
    from videocups_ray.pipelines.infer import predict_video

    _, apply_split = shard_class_meta(shards, cfg.eval)
    if not apply_split:
        raise DataError(f"{shards}: self-training needs pseudo-label shards (no pseudo-label meta in the manifest)")
    model, model_cfg, meta, _ = load_checkpoint(model_path)
    if cfg.train.torch_threads:
        torch.set_num_threads(cfg.train.torch_threads)
    videos: dict[str, list[Frame]] = defaultdict(list)
    for frame in read_pseudolabels(shards, apply_split=True, void_ignored=True):
        videos[frame.video_id].append(frame)
    frames = 0
    with ShardWriter(out, cfg.shards, f"{cfg.hash()}-self-{Path(model_path).stat().st_size}", __version__) as writer:
        for vid in sorted(videos):
            ordered = sorted(videos[vid], key=lambda f: f.frame_index)
            for frame, pred in predict_video(model, meta, model_cfg, ordered, batch_size=cfg.infer.batch_size):
                sem, inst, ign = merge_self_labels(frame.semantic, frame.instance, pred.semantic, pred.instance,
                                                   ignore_label=meta.ignore_label)
                writer.add_frame(Frame(vid, frame.frame_index, frame.image, sem, inst), ignore=ign)
                frames += 1
    return {"frames": frames, "videos": len(videos)}


def run_self_training(cfg: Config, shards: str | os.PathLike, out: str | os.PathLike, *,
                      first_round: dict[str, Any] | None = None, **train_kwargs: Any) -> dict[str, Any]:
    """``train.rounds`` rounds of training (see the module doc); one round is plain ``run_train``.

    ``first_round``: the ``run_train`` summary of a round 1 already trained on ``shards`` (the
    ablation benchmark continues its "+ self-enhanced" model), else round 1 runs here.
    Returns the last round's ``run_train`` summary with ``model`` = ``out/model.pt`` and
    ``rounds``: per round its run folder, steps, seconds and (rounds > 1) the labels written.
    """
    rounds = cfg.train.rounds
    if rounds == 1 and first_round is None:
        return run_train(cfg, shards, out, **train_kwargs)
    out = Path(out)
    meta, _ = shard_class_meta(shards, cfg.eval)
    summary = first_round or run_train(cfg, shards, out / "round1", **train_kwargs)
    history = [{"round": 1, "out": summary["out"], "steps": summary["steps"], "seconds": summary["seconds"]}]
    later = with_overrides(cfg, train={"max_steps": cfg.train.round_steps or cfg.train.max_steps})
    for r in range(2, rounds + 1):
        labels = out / f"round{r}_labels"
        written = write_self_labels(cfg, summary["model"], shards, labels)
        log.warning("self-training round %d: %d frames of %d videos relabelled by round %d's model",
                    r, written["frames"], written["videos"], r - 1)
        summary = run_train(later, labels, out / f"round{r}", init_weights=summary["model"], class_meta=meta,
                            **train_kwargs)
        history.append({"round": r, "out": summary["out"], "steps": summary["steps"], "seconds": summary["seconds"],
                        "labels": str(labels), **written})
    final = out / "model.pt"
    shutil.copyfile(summary["model"], final)
    summary = {**summary, "model": str(final), "rounds": history}
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    return summary
