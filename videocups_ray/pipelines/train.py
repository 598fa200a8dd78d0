"""Training on Ray Train: ``run_train`` (pseudo-label or ground-truth shards) and ``run_finetune``.

``run_train(cfg, shards, out)`` builds the pair dataset (``train_data``), a ``TorchTrainer``
running ``train_loop.train_loop_per_worker`` with ``ScalingConfig(num_workers=(min, max))``
(elastic when min < max), ``RunConfig(name="train", storage_path=out)`` and
``FailureConfig(max_failures)``. Started again with the same ``out``, Ray Train V2 finds the
run's checkpoints and the loop resumes at the last one. The final model is copied to
``out/model.pt`` (a self-describing ``model.save_checkpoint`` file) and the summary to
``out/summary.json``, the loss curves to ``out/loss.png``; progress records go to
``out/metrics.jsonl`` and, from the driver, to a progress bar (steps, loss, images/s, ETA).
Ray Train's checkpoint folders are named by step (``checkpoint_00000400``).

``run_finetune(cfg, checkpoint, gt, fraction, out)`` is the paper's label-efficient transfer:
a ``fraction`` of the frames of a labelled dataset (evenly spaced frame pairs per video) is
sharded, and training starts from the unsupervised checkpoint's weights (class-dependent layers
re-initialised for the ground-truth classes).
"""

from __future__ import annotations

import json
import logging
import os
import shlex
import shutil
import threading
import time
from pathlib import Path
from collections.abc import Sequence
from typing import Any

from videocups_ray import __version__
from videocups_ray.config import Config, ConfigError, with_overrides
from videocups_ray.data.checkpoints import CheckpointError, read_torch_file
from videocups_ray.data.formats import open_source
from videocups_ray.data.shards import ShardWriter, shard_files
from videocups_ray.data.sources import FrameSource
from videocups_ray.data.types import DataError
from videocups_ray.model import ClassMeta
from videocups_ray.pipelines.ray_runtime import ray_session
from videocups_ray.pipelines.train_data import (build_pair_dataset, config_payload, fraction_pair_starts, ordered_data,
                                                shard_class_meta)
from videocups_ray.pipelines.train_loop import METRICS_FILE, MODEL_FILE, STATE_FILE, train_loop_per_worker

log = logging.getLogger(__name__)

RUN_NAME = "train"
LOSS_PLOT = "loss.png"  # loss curves of metrics.jsonl, redrawn at the end of every run


def _workers(cfg: Config, workers: int | tuple[int, int] | None) -> int | tuple[int, int]:
    lo, hi = (workers, workers) if isinstance(workers, int) else (workers or cfg.train.workers)
    if not 1 <= lo <= hi:
        raise ValueError(f"workers must satisfy 1 <= min <= max, got ({lo}, {hi})")
    return lo if lo == hi else (lo, hi)


class _ProgressTail:
    """A progress bar (steps, loss, images/s, ETA) fed from new lines of ``metrics.jsonl`` while
    ``fit`` runs: the loop runs in Ray workers, whose stdout does not reach the driver when Ray
    runs with ``log_to_driver=False``, so the driver follows the file rank 0 appends to.

    ``total``: the run's last step (None when the run is bounded by epochs: no ETA). A resumed
    run's bar starts at the last step already in the file, so the rate and ETA count this
    attempt's steps only. ``file``: where the bar is drawn (tqdm's default, stderr, if None).
    """

    def __init__(self, path: Path, total: int | None, interval: float = 2.0, file: Any = None, *,
                 desc: str = "train", enabled: bool = True):
        from tqdm import tqdm

        self.path, self.interval = path, interval
        self._offset = path.stat().st_size if path.is_file() else 0
        earlier = _read_metrics(path) if self._offset else []
        done = int(earlier[-1].get("step", 0)) if earlier else 0
        self.bar = tqdm(total=total, initial=done, desc=desc, unit="step", file=file, dynamic_ncols=True,
                        mininterval=0.5, disable=not enabled)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="train-progress", daemon=True)

    def __enter__(self) -> "_ProgressTail":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self._poll()
        self.bar.close()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._poll()

    def _poll(self) -> None:
        if not self.path.is_file():
            return
        with open(self.path) as f:
            f.seek(self._offset)
            text = f.read()
        complete, _, _ = text.rpartition("\n")
        if not complete:
            return
        self._offset += len(complete) + 1
        for line in complete.splitlines():
            self._emit(json.loads(line))

    def _emit(self, r: dict) -> None:
        """Show one metrics record on the bar."""
        if "loss" in r:
            self.bar.set_postfix(epoch=r.get("epoch"), loss=f"{r['loss']:.4f}",
                                 img_s=f"{r.get('images_per_s', 0):.2f}", refresh=False)
        self.bar.update(max(int(r["step"]) - self.bar.n, 0))


def evaluation_command(model: str | os.PathLike, heldout: str | None = None, config: Sequence[str] = ()) -> str:
    """The ``videocups infer ... && videocups eval ...`` line that scores ``model`` on a labelled
    held-out corpus (``HELDOUT`` stands in for it when not given); printed by ``videocups train``."""
    model = Path(model)
    data = shlex.quote(heldout) if heldout else "HELDOUT"
    pred = shlex.quote(str(model.parent / "pred"))
    cfgs = "".join(f" --config {shlex.quote(c)}" for c in config)
    return (f"videocups infer --checkpoint {shlex.quote(str(model))} --input {data} --out {pred}{cfgs} && "
            f"videocups eval --gt {data} --pred {pred} --pred-format kitti-step --unsupervised{cfgs}")


def run_train(cfg: Config, shards: str | os.PathLike, out: str | os.PathLike, *,
              workers: int | tuple[int, int] | None = None, use_gpu: bool | None = None,
              strategy: str | None = None, init_weights: str | os.PathLike | None = None,
              class_meta: ClassMeta | None = None) -> dict[str, Any]:
    """Train on ``shards`` into run folder ``out``; resumes from ``out``'s last checkpoint.

    ``workers`` / ``use_gpu`` / ``strategy`` override ``cfg.train`` (the CLI's flags).
    ``init_weights``: a model checkpoint to start from (fine-tuning). Returns a summary:
    out, model (path of the final model.pt), checkpoint (Ray checkpoint folder), steps,
    resumed_from (step the last attempt started at), workers, strategy, class_meta, metrics
    (the last record), seconds, images_per_s and steps_per_s (mean over logged records after
    the first, which holds warm-up).
    """
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    overrides = {k: v for k, v in (("use_gpu", use_gpu), ("strategy", strategy)) if v is not None}
    if overrides:
        cfg = with_overrides(cfg, train=overrides)
    if cfg.train.strategy == "deepspeed":
        try:
            import deepspeed  # noqa: F401
        except ImportError as exc:
            raise DataError(f"train.strategy='deepspeed' needs the deepspeed extra (pip install "
                            f"'videocups-ray[deepspeed]'): {exc}") from None
    num_workers = _workers(cfg, workers)
    out = Path(out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    if class_meta is None:
        class_meta, apply_split = shard_class_meta(shards, cfg.eval)
    else:
        apply_split = False
    # [shards] train on verified shards only: a damaged one is a one-line error naming it
    shard_files(shards, verify=cfg.shards.verify_on_resume, workers=cfg.shards.verify_workers)
    t0 = time.perf_counter()
    os.environ.setdefault("RAY_DATA_LIST_FILES_THREADED_NUM_WORKERS", "1")  # see data/shards.py
    with ray_session(cfg.ray), ordered_data():
        dataset = build_pair_dataset(shards, class_meta, apply_split, cfg.train)
        resources = {"CPU": cfg.train.cpus_per_worker}
        if cfg.train.use_gpu:
            resources["GPU"] = 1
        trainer = TorchTrainer(
            train_loop_per_worker,
            train_loop_config={"cfg": config_payload(cfg), "class_meta": class_meta.to_dict(), "run_dir": str(out),
                               "init_weights": str(Path(init_weights).resolve()) if init_weights else None},
            scaling_config=ScalingConfig(num_workers=num_workers, use_gpu=cfg.train.use_gpu,
                                         resources_per_worker=resources,
                                         elastic_resize_monitor_interval_s=cfg.train.resize_check_s),
            run_config=RunConfig(name=RUN_NAME, storage_path=str(out),
                                 failure_config=FailureConfig(max_failures=cfg.train.max_failures),
                                 checkpoint_config=CheckpointConfig(num_to_keep=cfg.train.keep_checkpoints)),
            datasets={"train": dataset},
        )
        with _ProgressTail(out / METRICS_FILE, cfg.train.max_steps):
            result = trainer.fit()
    if result.checkpoint is None:
        raise DataError(f"{out}: training finished without a checkpoint (no step was run)")
    final_model = out / MODEL_FILE
    with result.checkpoint.as_directory() as d:
        shutil.copyfile(Path(d) / MODEL_FILE, final_model)
        state = read_torch_file(Path(d) / STATE_FILE, "training state")
    records = _read_metrics(out / METRICS_FILE)
    last = records[-1] if records else {}
    loss_plot = None
    if any("loss" in r for r in records):
        from videocups_ray.viz.plots import save_loss_curves  # matplotlib: only once training is done

        loss_plot = save_loss_curves(records, out / LOSS_PLOT)
    timed = [r for r in records if r.get("resumed_from") == last.get("resumed_from")][1:]
    summary = {
        "out": str(out), "model": str(final_model), "checkpoint": str(result.checkpoint.path),
        "steps": int(state["step"]), "resumed_from": last.get("resumed_from", 0),
        "workers": num_workers if isinstance(num_workers, int) else list(num_workers),
        "strategy": cfg.train.strategy, "class_meta": class_meta.to_dict(), "metrics": last,
        "seconds": round(time.perf_counter() - t0, 2),
        "images_per_s": _mean(r.get("images_per_s") for r in timed),
        "steps_per_s": _mean(r.get("steps_per_s") for r in timed),
        "loss_plot": str(loss_plot) if loss_plot else None,
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def _mean(values) -> float | None:
    vals = [float(v) for v in values if v is not None]
    return round(sum(vals) / len(vals), 4) if vals else None


def _read_metrics(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


# --------------------------------------------------------------------------- fine-tuning
def write_fraction_shards(source: FrameSource, out: str | os.PathLike, cfg: Config, fraction: float) -> dict:
    """Shard evenly spaced labelled frame pairs covering ``fraction`` of each video's frames."""
    if not source.has_labels:
        raise DataError(f"{source!r}: has no ground-truth labels to fine-tune on")
    stride = cfg.train.pair_stride
    frames = pairs = 0
    config_hash = f"{cfg.hash()}-f{fraction:g}"
    with ShardWriter(out, cfg.shards, config_hash, __version__) as writer:
        for vid in source.videos():
            for start in fraction_pair_starts(source.num_frames(vid), fraction, stride):
                chosen = list(source.frames(vid, start, start + stride + 1))
                for frame in (chosen[0], chosen[-1]):
                    writer.add_frame(frame)
                    frames += 1
                pairs += 1
    if pairs == 0:
        raise DataError(f"{source!r}: no video has {stride + 1} frames; nothing to fine-tune on")
    return {"frames": frames, "pairs": pairs}


def run_finetune(cfg: Config, checkpoint: str | os.PathLike, gt: str | os.PathLike | FrameSource,
                 fraction: float, out: str | os.PathLike, **train_kwargs: Any) -> dict[str, Any]:
    """Fine-tune an unsupervised checkpoint on ``fraction`` of the labels of ``gt``.

    The model architecture comes from the checkpoint; classes are ``eval.num_classes`` with
    ``eval.things`` as things. Real labels are complete, so Video DropLoss and self-enhanced
    copy-paste (remedies for missing pseudo instances) are turned off. Returns ``run_train``'s
    summary plus fraction, frames and pairs.
    """
    if not 0 < fraction <= 1:
        raise ConfigError(f"fraction={fraction:g} must be in (0, 1]")
    out = Path(out)
    payload = read_torch_file(checkpoint, "model checkpoint")
    if not isinstance(payload, dict) or "model_config" not in payload:
        raise CheckpointError(f"model checkpoint {checkpoint}: not a videocups model checkpoint (no 'model_config')")
    model_cfg = dict(payload["model_config"], backbone_checkpoint=None)
    cfg = with_overrides(cfg, model=model_cfg, train={"drop_loss": False, "self_enhanced": False})
    log.warning("fine-tuning: Video DropLoss and self-enhanced copy-paste are off (labels are complete)")
    source = gt if isinstance(gt, FrameSource) else open_source(gt)
    shard_dir = out / "finetune_shards"
    picked = write_fraction_shards(source, shard_dir, cfg, fraction)
    things = tuple(cfg.eval.things)
    meta = ClassMeta(tuple(c for c in range(cfg.eval.num_classes) if c not in things), things, cfg.eval.ignore_label)
    summary = run_train(cfg, shard_dir, out, init_weights=checkpoint, class_meta=meta, **train_kwargs)
    summary.update(fraction=fraction, **picked)
    return summary
