"""Self-supervised cue training on Ray Train: ``run_train_cues(cfg, "flow"|"depth", input, out)``.

Data (Ray Data): the driver opens the input with the pseudo-labeler's reader
(``pseudolabel.resolve_source``: video files, folders, datasets, ``synth:``) and plans windows
of consecutive frames (pairs for flow, triplets for depth); ``from_items(windows)`` ->
``map_batches(WindowReader)`` (an actor pool, each actor holding the source once, reads and
resizes windows) -> optionally ``materialize`` (``cue_training.cache_windows``) ->
``map_batches(augment_windows)`` (flip + photometric jitter per window, fresh every epoch; the
DIS flow the depth loss needs).

Training (Ray Train): ``TorchTrainer`` with ``ScalingConfig(num_workers=(min, max))`` (elastic
when min < max), the VPS trainer's DDP / DeepSpeed strategies (``train_loop``), checkpoints every
``cue_training.checkpoint_every`` steps under ``out/cues_<task>/`` holding the backend file
(``flow.pt`` / ``depth.pt``) and the training state (all weights incl. the pose net, optimizer,
step). A rerun with the same ``out`` resumes from the last checkpoint (also after a kill).

Outputs in ``out``: ``<task>.pt`` (load with ``--set cues.<task>.checkpoint=...``; the summary
lists the exact overrides), ``<task>_metrics.jsonl``, ``<task>_loss.png`` and
``<task>_summary.json``. The driver shows a progress bar (steps, loss, images/s, ETA).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from videocups_ray.config import Config, with_overrides
from videocups_ray.cues.training.build import (
    CHECKPOINT_NAME,
    TASKS,
    backend_overrides,
    build_cue_trainer,
    save_backend_checkpoint,
)
from videocups_ray.cues.training.windows import (
    WINDOW_LENGTH,
    augment_window,
    dis_flows,
    dis_pair_flows,
    plan_windows,
    read_window,
)
from videocups_ray.data.checkpoints import read_torch_file
from videocups_ray.data.sources import FrameSource
from videocups_ray.data.types import DataError
from videocups_ray.pipelines.pseudolabel import resolve_source
from videocups_ray.pipelines.ray_runtime import ray_session
from videocups_ray.pipelines.train import _mean, _ProgressTail, _read_metrics
from videocups_ray.pipelines.train_loop import InjectedFailure, _make_strategy

log = logging.getLogger(__name__)

STATE_FILE = "cue_train_state.pt"
MODEL_INPUTS = {"flow": ("images", "teacher"), "depth": ("images", "K", "flow")}  # batch columns each trainer takes


def metrics_file(task: str) -> str:
    return f"{task}_metrics.jsonl"


# --------------------------------------------------------------------------- device
def choose_device(requested: str, cluster_gpus: float) -> bool:
    """Whether workers get GPUs. ``auto`` picks cuda when the Ray cluster has GPUs and says so
    once; ``cuda`` on a cluster without a GPU is an error, never a silent CPU run."""
    if requested == "cuda" and cluster_gpus < 1:
        raise DataError("cue_training.device='cuda' but the Ray cluster has no GPU; use auto or cpu")
    use_gpu = requested == "cuda" or (requested == "auto" and cluster_gpus >= 1)
    if requested == "auto":
        log.warning("cue_training.device=auto: training on %s (%g GPUs in the Ray cluster)",
                    "cuda" if use_gpu else "cpu", cluster_gpus)
    return use_gpu


# --------------------------------------------------------------------------- data
class WindowReader:
    """Ray Data callable: reads windows ``(video_id, start)`` from the source it was given."""

    def __init__(self, source: FrameSource, length: int, height: int, width: int, focal_scale: float,
                 focal: float | None) -> None:
        self.source, self.length, self.size = source, length, (height, width)
        self.focal_scale, self.focal = focal_scale, focal

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        rows = [read_window(self.source, str(v), int(s), self.length, *self.size, self.focal_scale, self.focal)
                for v, s in zip(batch["video_id"], batch["start"])]
        return {"images": np.stack([r["images"] for r in rows]), "K": np.stack([r["K"] for r in rows])}


def augment_windows(batch: dict[str, np.ndarray], *, task: str, flip_prob: float, color_jitter: float,
                    dis_preset: str, teacher: bool = False) -> dict[str, np.ndarray]:
    """``map_batches`` step: fresh augmentation per window (and the DIS flows: for depth always,
    for flow when ``teacher``)."""
    rng = np.random.default_rng()
    images, Ks, flows = [], [], []
    for img, K in zip(batch["images"], batch["K"]):
        img, K = augment_window(img, K, rng, flip_prob=flip_prob, color_jitter=color_jitter)
        images.append(img)
        Ks.append(K)
        if task == "depth":
            flows.append(dis_flows(img, dis_preset))
        elif teacher:
            flows.append(dis_pair_flows(img, dis_preset))
    out = {"images": np.stack(images), "K": np.stack(Ks)}
    if flows:
        out["flow" if task == "depth" else "teacher"] = np.stack(flows)
    return out


def build_window_dataset(cfg: Config, task: str, source: FrameSource, windows: list[tuple[str, int]]):
    """The Ray Data pipeline of augmented training windows."""
    import ray.data

    ct = cfg.cue_training
    ds = ray.data.from_items([{"video_id": v, "start": s} for v, s in windows],
                             override_num_blocks=max(1, min(len(windows) // 8, 64)))
    ds = ds.map_batches(WindowReader, batch_size=8, batch_format="numpy",
                        fn_constructor_kwargs={"source": source, "length": WINDOW_LENGTH[task], "height": ct.height,
                                               "width": ct.width, "focal_scale": cfg.camera.focal_scale,
                                               "focal": cfg.camera.focal},
                        compute=ray.data.ActorPoolStrategy(size=ct.reader_actors), num_cpus=ct.reader_cpus)
    if ct.cache_windows:
        ds = ds.materialize()
    return ds.map_batches(augment_windows, batch_size=8, batch_format="numpy", num_cpus=ct.reader_cpus,
                          compute=ray.data.TaskPoolStrategy(size=ct.augment_tasks),
                          fn_kwargs={"task": task, "flip_prob": ct.flip_prob, "color_jitter": ct.color_jitter,
                                     "dis_preset": cfg.cues.flow.dis_preset,
                                     "teacher": task == "flow" and ct.dis_teacher_weight > 0})


# --------------------------------------------------------------------------- worker loop
def strategy_config(cfg: Config) -> Config:
    """``cfg`` with ``train.*`` optimisation fields taken from ``cue_training`` (the VPS trainer's
    DDP / DeepSpeed strategies read those)."""
    ct = cfg.cue_training
    return with_overrides(cfg, train={"lr": ct.lr, "weight_decay": ct.weight_decay, "grad_clip": ct.grad_clip,
                                      "batch_size": ct.batch_size, "strategy": ct.strategy, "bf16": ct.bf16,
                                      "ddp_find_unused": True})


def drop_metrics_after(path: Path, step: int) -> int:
    """Remove the records of steps after ``step`` (the checkpoint a run resumes from) from a
    metrics file; returns how many were dropped. A run killed between two checkpoints has logged
    steps that the resumed run repeats."""
    if not path.is_file():
        return 0
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    kept = [line for line in lines if json.loads(line)["step"] <= step]
    if len(kept) < len(lines):
        tmp = path.with_suffix(".tmp")
        tmp.write_text("".join(line + "\n" for line in kept))
        os.replace(tmp, path)
        log.info("%s: dropped %d records logged after the checkpoint at step %d", path, len(lines) - len(kept), step)
    return len(lines) - len(kept)


def cue_train_loop(config: dict[str, Any]) -> None:
    """Ray Train entry point. ``config``: cfg (Config as data), task, run_dir."""
    import ray.train
    import ray.train.torch

    cfg, task, run_dir = Config.model_validate(config["cfg"]), config["task"], Path(config["run_dir"])
    ct = cfg.cue_training
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    if ct.torch_threads:
        torch.set_num_threads(ct.torch_threads)
    torch.manual_seed(ct.seed * 1000 + rank)
    device = ray.train.torch.get_device()
    strategy = _make_strategy(build_cue_trainer(task, cfg).train(), strategy_config(cfg), world, device)
    module = strategy.module

    step = epoch = start_step = 0
    ckpt = ray.train.get_checkpoint()
    if ckpt is not None:
        with ckpt.as_directory() as d:
            state = read_torch_file(Path(d) / STATE_FILE, "cue training state")
            module.load_state_dict(state["trainer"])
            strategy.restore(Path(d), state)
            step = start_step = int(state["step"])
            epoch = int(state["epoch"])
        if rank == 0:  # steps logged after that checkpoint by a killed run are run again: log them once
            drop_metrics_after(run_dir / metrics_file(task), start_step)
    shard = ray.train.get_dataset_shard("train")
    frames_per_window = WINDOW_LENGTH[task]
    t_log, since_log = time.perf_counter(), 0
    deadline = t_log + 60 * ct.max_minutes if ct.max_minutes else None
    out_of_time = False
    while step < ct.max_steps and not out_of_time:
        batches = 0
        for batch in shard.iter_batches(batch_size=ct.batch_size, batch_format="numpy", drop_last=True,
                                        local_shuffle_buffer_size=ct.shuffle_buffer or None):
            batches += 1
            inputs: dict[str, Any] = {k: torch.from_numpy(np.ascontiguousarray(v)).to(device)
                                      for k, v in batch.items() if k in MODEL_INPUTS[task]}
            losses = strategy.step({**inputs, "step": step})
            step += 1
            since_log += 1
            metrics: dict[str, Any] = {"step": step, "epoch": epoch}
            if deadline is not None and step % ct.log_every == 0:
                out_of_time = _agreed(time.perf_counter() > deadline, world, device)
            last = step == ct.max_steps or out_of_time
            if step % ct.log_every == 0 or step % ct.checkpoint_every == 0 or last:
                now = time.perf_counter()
                dt = max(now - t_log, 1e-9)
                metrics.update({f"loss_{k}": round(float(v.detach()), 5) for k, v in losses.items()})
                metrics.update(loss=round(float(sum(v.detach() for v in losses.values())), 5),
                               steps_per_s=round(since_log / dt, 4),
                               images_per_s=round(since_log * world * ct.batch_size * frames_per_window / dt, 3),
                               max_steps=ct.max_steps, workers=world, strategy=ct.strategy,
                               device=str(device), resumed_from=start_step, time=time.time(),
                               stopped="max_minutes" if out_of_time else None)
                if rank == 0:
                    with open(run_dir / metrics_file(task), "a") as f:
                        f.write(json.dumps(metrics) + "\n")
                t_log, since_log = now, 0
            if step % ct.checkpoint_every == 0 or last:
                _report_checkpoint(task, strategy, module, rank, world, step, epoch, metrics)
            if ct.fail_after_step is not None and step == ct.fail_after_step and start_step < step:
                raise InjectedFailure(f"cue_training.fail_after_step={step}: injected failure on rank {rank}")
            if step >= ct.max_steps or out_of_time:
                break
        if batches == 0:
            raise DataError(f"rank {rank}: the window dataset gave this worker no batch of {ct.batch_size}; "
                            "use fewer workers, a smaller cue_training.batch_size or more video")
        if step < ct.max_steps:
            epoch += 1


def _agreed(flag: bool, world: int, device) -> bool:
    """True on every rank when any rank says True (ranks stop at the same step)."""
    if world == 1:
        return flag
    import torch.distributed as dist

    t = torch.tensor([float(flag)], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)


def _report_checkpoint(task: str, strategy, module, rank: int, world: int, step: int, epoch: int,
                       metrics: dict) -> None:
    import ray.train

    with tempfile.TemporaryDirectory(prefix="vcr-cue-") as tmp:
        folder = Path(tmp)
        state = {"step": step, "epoch": epoch, "world_size": world, **strategy.save(folder, rank)}
        if rank == 0:
            save_backend_checkpoint(module, folder / CHECKPOINT_NAME[task])
            torch.save({**state, "trainer": {k: v.detach().cpu() for k, v in module.state_dict().items()}},
                       folder / STATE_FILE)
        checkpoint = ray.train.Checkpoint.from_directory(tmp) if any(folder.iterdir()) else None
        ray.train.report(metrics, checkpoint=checkpoint, checkpoint_dir_name=f"checkpoint_{step:08d}")


# --------------------------------------------------------------------------- driver
def plot_losses(records: list[dict], path: Path, title: str) -> Path:
    """Total and per-term losses against steps, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    steps = [r["step"] for r in records]
    for key in ["loss"] + sorted({k for r in records for k in r if k.startswith("loss_")}):
        ax.plot(steps, [r.get(key, np.nan) for r in records], label=key.replace("loss_", ""),
                lw=2 if key == "loss" else 1)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title(title)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def run_train_cues(cfg: Config, task: str, input_spec: str | os.PathLike | FrameSource, out: str | os.PathLike, *,
                   workers: int | tuple[int, int] | None = None, strategy: str | None = None,
                   max_steps: int | None = None, progress: bool = True) -> dict[str, Any]:
    """Train cue ``task`` self-supervised on ``input_spec`` into ``out``; resumes from ``out``.

    ``workers`` / ``strategy`` / ``max_steps`` override ``cue_training`` (the CLI's flags).
    Returns the summary (also in ``out/<task>_summary.json``): checkpoint, pseudolabel_overrides,
    steps, resumed_from, stopped (``max_steps`` or ``max_minutes``), workers, device, windows, seconds, images_per_s, metrics, loss_plot.
    """
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    if task not in TASKS:
        raise ValueError(f"unknown cue {task!r}; known: {', '.join(TASKS)}")
    overrides = {k: v for k, v in (("strategy", strategy), ("max_steps", max_steps)) if v is not None}
    if workers is not None:
        overrides["workers"] = (workers, workers) if isinstance(workers, int) else tuple(workers)
    cfg = with_overrides(cfg, cue_training=overrides) if overrides else cfg
    ct = cfg.cue_training
    lo, hi = ct.workers
    if not 1 <= lo <= hi:
        raise DataError(f"cue_training.workers must satisfy 1 <= min <= max, got ({lo}, {hi})")
    if ct.strategy == "deepspeed":
        try:
            import deepspeed  # noqa: F401
        except ImportError as exc:
            raise DataError(f"cue_training.strategy='deepspeed' needs the deepspeed extra: {exc}") from None
    out = Path(out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    os.environ.setdefault("RAY_DATA_LIST_FILES_THREADED_NUM_WORKERS", "1")
    with ray_session(cfg.ray) as ray:
        use_gpu = choose_device(ct.device, float(ray.cluster_resources().get("GPU", 0)))
        source = resolve_source(cfg, input_spec)
        windows = plan_windows(source, WINDOW_LENGTH[task], ct.window_stride)
        if not windows:
            raise DataError(f"{input_spec}: no video has {WINDOW_LENGTH[task]} frames; nothing to train {task} on")
        dataset = build_window_dataset(cfg, task, source, windows)
        resources = {"CPU": ct.cpus_per_worker, **({"GPU": 1} if use_gpu else {})}
        trainer = TorchTrainer(
            cue_train_loop,
            train_loop_config={"cfg": cfg.model_dump(mode="json"), "task": task, "run_dir": str(out)},
            scaling_config=ScalingConfig(num_workers=lo if lo == hi else (lo, hi), use_gpu=use_gpu,
                                         resources_per_worker=resources),
            run_config=RunConfig(name=f"cues_{task}", storage_path=str(out),
                                 failure_config=FailureConfig(max_failures=ct.max_failures),
                                 checkpoint_config=CheckpointConfig(num_to_keep=ct.keep_checkpoints)),
            datasets={"train": dataset},
        )
        with _ProgressTail(out / metrics_file(task), ct.max_steps, desc=task, enabled=progress):
            result = trainer.fit()
    if result.checkpoint is None:
        raise DataError(f"{out}: cue training finished without a checkpoint (no step was run)")
    final = out / CHECKPOINT_NAME[task]
    with result.checkpoint.as_directory() as d:
        shutil.copyfile(Path(d) / CHECKPOINT_NAME[task], final)
        state = read_torch_file(Path(d) / STATE_FILE, "cue training state")
    records = _read_metrics(out / metrics_file(task))
    last = records[-1] if records else {}
    timed = [r for r in records if r.get("resumed_from") == last.get("resumed_from")][1:]
    plot = plot_losses(records, out / f"{task}_loss.png", f"train-cues {task}") if records else None
    summary = {
        "task": task, "checkpoint": str(final), "pseudolabel_overrides": backend_overrides(task, cfg, final),
        "steps": int(state["step"]), "resumed_from": last.get("resumed_from", 0),
        "stopped": last.get("stopped") or "max_steps",
        "workers": [lo, hi], "device": "cuda" if use_gpu else "cpu", "strategy": ct.strategy,
        "windows": len(windows), "seconds": round(time.perf_counter() - t0, 2),
        "images_per_s": _mean(r.get("images_per_s") for r in timed), "metrics": last,
        "loss_plot": str(plot) if plot else None, "ray_checkpoint": str(result.checkpoint.path),
    }
    (out / f"{task}_summary.json").write_text(json.dumps(summary, indent=2))
    return summary
