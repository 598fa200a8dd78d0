"""The per-worker training loop run by Ray Train's ``TorchTrainer`` (DDP or DeepSpeed ZeRO).

Each step: a batch of pairs from this worker's dataset shard -> augmentation (salted by the
epoch) -> video copy-paste
(tubes cut from earlier batches, after the warm-up also from the model's own confident
predictions) -> ``collate_pairs`` -> forward (losses) -> backward -> gradient clipping ->
AdamW step. Every ``train.checkpoint_every`` steps a checkpoint goes to Ray Train:

- ``model.pt``: the self-describing model checkpoint (``model.save_checkpoint``, rank 0);
- ``train_state.pt``: step, epoch, world size and (DDP) the optimizer state (rank 0);
- ``deepspeed/``: DeepSpeed's own checkpoint, each rank writing its ZeRO partition
  (Ray Train merges the ranks' files into one checkpoint directory).

A restarted worker group (``FailureConfig``) or a new trainer on the same run folder gets the
last checkpoint from ``ray.train.get_checkpoint()`` and continues at its step; the data
iterator restarts at an epoch boundary (the position inside an epoch is not stored).
"""

from __future__ import annotations

import json
import logging
import math
import tempfile
import time
from collections import deque
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from videocups_ray.config import Config
from videocups_ray.data.checkpoints import CheckpointError, read_torch_file, write_torch_file
from videocups_ray.data.types import DataError
from videocups_ray.model import (
    ClassMeta,
    Tube,
    VideoPanopticPredictor,
    build_model,
    collate_pairs,
    extract_tubes,
    save_checkpoint,
    tubes_from_predictions,
    use_self_enhanced,
    video_copy_paste,
)
from videocups_ray.pipelines.train_data import augment_pairs, batch_to_pairs, iter_pairs_per_worker

log = logging.getLogger(__name__)

MODEL_FILE = "model.pt"
STATE_FILE = "train_state.pt"
DEEPSPEED_DIR = "deepspeed"
DEEPSPEED_TAG = "state"
METRICS_FILE = "metrics.jsonl"


class InjectedFailure(RuntimeError):
    """Raised once by ``train.fail_after_step`` to test recovery from a failed worker."""


# --------------------------------------------------------------------------- weights
def transfer_weights(model: torch.nn.Module, path: str | Path) -> tuple[list[str], list[str]]:
    """Copy every tensor of a model checkpoint whose name and shape match; (loaded, skipped).

    Fine-tuning starts from an unsupervised checkpoint whose class-dependent layers (box
    classifier, mask predictor, semantic classifier) have another number of classes: those
    keep their fresh initialisation.
    """
    payload = read_torch_file(path, "initial weights")
    if not isinstance(payload, dict) or "state_dict" not in payload:
        raise CheckpointError(f"initial weights {path}: not a model checkpoint (no 'state_dict')")
    source = payload["state_dict"]
    own = model.state_dict()
    loaded = [k for k, v in source.items() if k in own and own[k].shape == v.shape]
    skipped = sorted(set(own) - set(loaded))
    if not loaded:
        raise CheckpointError(f"initial weights {path}: no tensor matches the model (different backbone or FPN width?)")
    model.load_state_dict({k: source[k] for k in loaded}, strict=False)
    return loaded, skipped


def _to_device(inputs: dict, device: torch.device) -> dict:
    if device.type == "cpu":
        return inputs
    return {
        k: [v.to(device) if isinstance(v, torch.Tensor) else {n: t.to(device) for n, t in v.items()} for v in vals]
        for k, vals in inputs.items()
    }


def lr_at(step: int, tc) -> float:
    """Learning rate of optimizer step ``step`` (0-based): linear warm-up from 1 % of ``tc.lr``
    over ``tc.warmup_steps``, then constant or a cosine decay to ``tc.lr * tc.min_lr_ratio`` at
    ``tc.max_steps``. A function of the step alone, so a resumed run continues the schedule."""
    if step < tc.warmup_steps:
        return tc.lr * (0.01 + 0.99 * step / tc.warmup_steps)
    if tc.lr_schedule == "constant":
        return tc.lr
    span = max(tc.max_steps - tc.warmup_steps, 1)
    t = min(max(step - tc.warmup_steps, 0) / span, 1.0)
    return tc.lr * (tc.min_lr_ratio + (1 - tc.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * t)))


# --------------------------------------------------------------------------- copy-paste
class CopyPaster:
    """Video copy-paste with a bank of tubes from earlier batches (other clips)."""

    def __init__(self, cfg: Config, meta: ClassMeta, rng: np.random.Generator, device: torch.device):
        self.cfg, self.meta, self.rng, self.device = cfg, meta, rng, device
        self.bank: deque[Tube] = deque(maxlen=cfg.train.copy_paste_bank)
        self.pasted = 0

    def __call__(self, pairs: list[dict], module: torch.nn.Module, step: int) -> list[dict]:
        tc = self.cfg.train
        if not tc.copy_paste:
            return pairs
        fresh: list[Tube] = []
        for p in pairs:
            fresh.extend(extract_tubes(p, self.meta, min_pixels=tc.copy_paste_min_pixels))
        if use_self_enhanced(step, tc) and pairs:
            fresh.extend(self._self_tubes(pairs[0], module))
        out = [video_copy_paste(p, list(self.bank), self.rng, tc) for p in pairs]
        self.pasted += sum(len(p["pasted_track_ids"]) for p in out)
        self.bank.extend(fresh)
        return out

    def _self_tubes(self, pair: dict, module: torch.nn.Module) -> list[Tube]:
        frames = [pair["images"][f].permute(1, 2, 0).contiguous().numpy() for f in (0, 1)]
        predictor = VideoPanopticPredictor(module, self.meta, self.cfg.model, device=str(self.device))
        try:
            predicted = predictor.predict_video(frames)
        finally:
            module.train()
        return tubes_from_predictions(pair, tuple(predicted), self.cfg.train)


# --------------------------------------------------------------------------- strategies
class _Strategy:
    """One optimisation step and the save/restore of optimizer state, per strategy."""

    module: torch.nn.Module
    optimizer: torch.optim.Optimizer
    step: Callable[[dict], dict[str, torch.Tensor]]

    def set_lr(self, lr: float) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = lr

    def save(self, folder: Path, rank: int) -> dict: ...
    def restore(self, folder: Path, state: dict) -> None: ...


def _autocast(device: torch.device, enabled: bool):
    return torch.autocast(device_type="cuda", dtype=torch.bfloat16) if enabled and device.type == "cuda" else nullcontext()


class DDPStrategy(_Strategy):
    def __init__(self, model: torch.nn.Module, cfg: Config, world: int, device: torch.device, bf16: bool):
        import ray.train.torch

        tc = cfg.train
        self.world, self.device, self.bf16, self.clip = world, device, bf16, tc.grad_clip
        self.model = ray.train.torch.prepare_model(
            model, parallel_strategy_kwargs={"find_unused_parameters": tc.ddp_find_unused})
        self.module = self.model.module if hasattr(self.model, "module") else self.model
        self.params = [p for p in self.module.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(self.params, lr=tc.lr, weight_decay=tc.weight_decay)

    def step(self, inputs: dict) -> dict[str, torch.Tensor]:
        with _autocast(self.device, self.bf16):
            losses = self.model(**inputs)
        total = sum(losses.values())
        self.optimizer.zero_grad(set_to_none=True)
        total.backward()
        torch.nn.utils.clip_grad_norm_(self.params, self.clip)
        self.optimizer.step()
        return losses

    def save(self, folder: Path, rank: int) -> dict:
        return {"optimizer": self.optimizer.state_dict()} if rank == 0 else {}

    def restore(self, folder: Path, state: dict) -> None:
        self.optimizer.load_state_dict(state["optimizer"])


class DeepSpeedStrategy(_Strategy):
    """ZeRO stage ``train.zero_stage`` with a client AdamW (no JIT-compiled fused optimizer)."""

    def __init__(self, model: torch.nn.Module, cfg: Config, world: int, device: torch.device, bf16: bool):
        import deepspeed

        tc = cfg.train
        self.device, self.bf16, self.world = device, bf16, world
        model = model.to(device)
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=tc.lr, weight_decay=tc.weight_decay)
        ds_config = {
            "train_micro_batch_size_per_gpu": tc.batch_size,
            "gradient_accumulation_steps": 1,
            "gradient_clipping": tc.grad_clip,
            "zero_optimization": {"stage": tc.zero_stage},
            "zero_allow_untested_optimizer": True,
            "steps_per_print": 10**9,
        }
        # Ray Train has already initialised torch.distributed; DeepSpeed reuses that group.
        self.optimizer = optimizer  # DeepSpeed steps this client optimizer: set_lr reaches it
        self.engine, _, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, model_parameters=params,
                                                    config=ds_config, dist_init_required=False)
        self.module = self.engine.module

    def step(self, inputs: dict) -> dict[str, torch.Tensor]:
        with _autocast(self.device, self.bf16):
            losses = self.engine(**inputs)
        self.engine.backward(sum(losses.values()))
        self.engine.step()
        return losses

    def save(self, folder: Path, rank: int) -> dict:
        self.engine.save_checkpoint(str(folder / DEEPSPEED_DIR), tag=DEEPSPEED_TAG)
        return {}

    def restore(self, folder: Path, state: dict) -> None:
        if state.get("world_size") != self.world:
            log.warning("checkpoint was written by %s workers, this run has %d: ZeRO optimizer partitions "
                        "do not fit; restoring the model weights only (optimizer state starts fresh)",
                        state.get("world_size"), self.world)
            return
        path, _ = self.engine.load_checkpoint(str(folder / DEEPSPEED_DIR), tag=DEEPSPEED_TAG,
                                              load_module_strict=True)
        if path is None:
            raise DataError(f"{folder / DEEPSPEED_DIR}: DeepSpeed found no checkpoint with tag {DEEPSPEED_TAG!r}")


# --------------------------------------------------------------------------- loop
def _make_strategy(model, cfg: Config, world: int, device: torch.device) -> _Strategy:
    bf16 = cfg.train.bf16 and device.type == "cuda" and torch.cuda.is_bf16_supported()
    if cfg.train.strategy == "deepspeed":
        return DeepSpeedStrategy(model, cfg, world, device, bf16)
    return DDPStrategy(model, cfg, world, device, bf16)


def _append_metrics(run_dir: Path, record: dict) -> None:
    with open(run_dir / METRICS_FILE, "a") as f:
        f.write(json.dumps(record) + "\n")


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """Ray Train entry point. ``config``: cfg (Config as data), class_meta, run_dir, init_weights."""
    import ray.train
    import ray.train.torch

    cfg = Config.model_validate(config["cfg"])
    tc = cfg.train
    meta = ClassMeta.from_dict(config["class_meta"])
    run_dir = Path(config["run_dir"])
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    if tc.torch_threads:
        torch.set_num_threads(tc.torch_threads)
    torch.manual_seed(tc.seed * 1000 + rank)
    rng = np.random.default_rng(tc.seed * 1000 + rank)
    device = ray.train.torch.get_device()

    model = build_model(cfg.model, meta.num_stuff, meta.num_thing, tc).train()
    if config.get("init_weights"):
        loaded, skipped = transfer_weights(model, config["init_weights"])
        if rank == 0:
            log.warning("initialised %d tensors from %s; %d keep a fresh init (class-dependent): %s",
                        len(loaded), config["init_weights"], len(skipped), skipped[:8])
    strategy = _make_strategy(model, cfg, world, device)
    module = strategy.module

    step, epoch, start_step = 0, 0, 0
    ckpt = ray.train.get_checkpoint()
    if ckpt is not None:
        with ckpt.as_directory() as d:
            folder = Path(d)
            payload = read_torch_file(folder / MODEL_FILE, "training checkpoint")
            module.load_state_dict(payload["state_dict"])
            state = read_torch_file(folder / STATE_FILE, "training state")
            strategy.restore(folder, state)
            step, epoch = int(state["step"]), int(state["epoch"])
            start_step = step

    paster = CopyPaster(cfg, meta, rng, device)
    shard = ray.train.get_dataset_shard("train")
    images_per_step = world * tc.batch_size * 2  # both frames of every pair go through the backbone
    max_steps = tc.max_steps
    t_log, steps_since_log, compute_s = time.perf_counter(), 0, 0.0

    def finished() -> bool:
        return step >= max_steps if max_steps is not None else epoch >= tc.epochs

    while not finished():
        batches = 0
        shuffle_seed = (tc.seed * 1000 + rank) * 100003 + epoch
        for batch in iter_pairs_per_worker(shard, tc.batch_size, tc.shuffle_buffer, shuffle_seed):
            batches += 1
            batch = augment_pairs(batch, flip_prob=tc.flip_prob, color_jitter=tc.color_jitter, seed=tc.seed, salt=epoch)
            pairs = paster(batch_to_pairs(batch), module, step)
            inputs = _to_device(collate_pairs(pairs, meta, cfg.model.semantic_thing_classes), device)
            t0 = time.perf_counter()
            strategy.set_lr(lr_at(step, tc))
            losses = strategy.step(inputs)
            compute_s += time.perf_counter() - t0
            step += 1
            steps_since_log += 1
            metrics: dict[str, Any] = {"step": step, "epoch": epoch}
            if step % tc.log_every == 0 or step % tc.checkpoint_every == 0 or step == max_steps:
                now = time.perf_counter()
                interval = max(now - t_log, 1e-9)
                metrics.update({k: round(float(v.detach()), 5) for k, v in losses.items()})
                metrics.update(loss=round(float(sum(v.detach() for v in losses.values())), 5),
                               steps_per_s=round(steps_since_log / interval, 4),
                               images_per_s=round(steps_since_log * images_per_step / interval, 3),
                               compute_s_per_step=round(compute_s / steps_since_log, 4),
                               workers=world, strategy=tc.strategy, pasted_tubes=paster.pasted,
                               lr=round(lr_at(step - 1, tc), 8),
                               resumed_from=start_step, time=time.time())
                if rank == 0:
                    _append_metrics(run_dir, metrics)
                t_log, steps_since_log, compute_s = now, 0, 0.0
            if step % tc.checkpoint_every == 0 or step == max_steps:
                _report_checkpoint(strategy, module, cfg, meta, rank, world, step, epoch, metrics)
            elif step % tc.log_every == 0:
                ray.train.report(metrics)
            if tc.fail_after_step is not None and step == tc.fail_after_step and start_step < step:
                raise InjectedFailure(f"train.fail_after_step={step}: injected failure on rank {rank}")
            if finished():
                break
        if batches == 0:
            raise DataError(f"rank {rank}: the training dataset gave this worker no batch of "
                            f"{tc.batch_size} pairs; use fewer workers or a smaller train.batch_size")
        if max_steps is None or step < max_steps:
            epoch += 1
    if step % tc.checkpoint_every != 0 and step != max_steps and step > start_step:
        _report_checkpoint(strategy, module, cfg, meta, rank, world, step, epoch, {"step": step, "epoch": epoch})


def _report_checkpoint(strategy: _Strategy, module, cfg: Config, meta: ClassMeta, rank: int, world: int,
                       step: int, epoch: int, metrics: dict) -> None:
    import ray.train

    with tempfile.TemporaryDirectory(prefix="vcr-ckpt-") as tmp:
        folder = Path(tmp)
        state = {"step": step, "epoch": epoch, "world_size": world, "strategy": cfg.train.strategy,
                 **strategy.save(folder, rank)}
        if rank == 0:
            save_checkpoint(folder / MODEL_FILE, module, cfg.model, meta, extra={"step": step, "epoch": epoch})
            write_torch_file(state, folder / STATE_FILE)
        has_files = any(folder.iterdir())
        checkpoint = ray.train.Checkpoint.from_directory(tmp) if has_files else None
        ray.train.report(metrics, checkpoint=checkpoint, checkpoint_dir_name=f"checkpoint_{step:08d}")
