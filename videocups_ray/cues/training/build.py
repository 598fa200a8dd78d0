"""Building the training module of a cue and writing the backend checkpoint it produces.

The backend networks come from the cue backends' own builders and config sections
(``cues.flow.raft_arch``; ``cues.depth.encoder``/``min_depth``/``max_depth``/``camera_height``),
so the written file is loaded by ``load_checkpoint`` into ``RaftFlow`` / ``MonoDepth`` unchanged.
"""

from __future__ import annotations

from pathlib import Path

from torch import nn

from videocups_ray.config import Config
from videocups_ray.cues.checkpoints import save_checkpoint

TASKS = ("flow", "depth")
CHECKPOINT_NAME = {"flow": "flow.pt", "depth": "depth.pt"}


def build_cue_trainer(task: str, cfg: Config) -> nn.Module:
    """The loss-returning training module for ``task`` (``flow`` or ``depth``), freshly initialised."""
    ct = cfg.cue_training
    if task == "flow":
        from videocups_ray.cues.flow import build_raft_net
        from videocups_ray.cues.pwc import PwcTiny
        from videocups_ray.cues.training.flow import FlowSelfSupervised

        net = PwcTiny() if ct.flow_net == "pwc" else build_raft_net(cfg.cues.flow.raft_arch)
        return FlowSelfSupervised.from_config(net, ct)
    if task == "depth":
        from videocups_ray.cues.monodepth import DepthMotionNet
        from videocups_ray.cues.training.depth import DepthSelfSupervised

        return DepthSelfSupervised.from_config(DepthMotionNet(cfg.cues.depth.encoder), ct, cfg.cues.depth,
                                                cfg.camera)
    raise ValueError(f"unknown cue {task!r}; known: {', '.join(TASKS)}")


def save_backend_checkpoint(trainer: nn.Module, path: str | Path) -> Path:
    """Write the backend's network (``trainer.net``) alone: the file ``cues.*.checkpoint`` takes."""
    return save_checkpoint(trainer.net, path)


def backend_overrides(task: str, cfg: Config, path: str | Path) -> list[str]:
    """The ``--set`` overrides that make ``videocups pseudolabel`` use the trained checkpoint."""
    if task == "flow" and cfg.cue_training.flow_net == "pwc":
        return ["cues.flow.backend=pwc", f"cues.flow.checkpoint={path}"]
    if task == "flow":
        return ["cues.flow.backend=raft", f"cues.flow.checkpoint={path}", f"cues.flow.raft_arch={cfg.cues.flow.raft_arch}"]
    return ["cues.depth.backend=monodepth", f"cues.depth.checkpoint={path}", f"cues.depth.encoder={cfg.cues.depth.encoder}",
            f"cues.depth.min_depth={cfg.cues.depth.min_depth}", f"cues.depth.max_depth={cfg.cues.depth.max_depth}"]
