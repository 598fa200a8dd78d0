"""What every actor shares: declared resources, the setup/process/teardown lifecycle, failures.

Actors are plain classes so tests (and the single-process runner) call them directly; the
pipeline turns one into a Ray actor with :func:`remote_class`, which applies the resources
declared in ``RayConfig`` (``num_cpus`` small and explicit, ``num_gpus`` possibly fractional,
``memory``) and the restart policy.

Failure injection is data, not monkey-patching: :class:`FailurePlan` names an actor kind and
the call number at which that actor kills its own process (``os._exit``), the same thing a
node loss or an OOM kill does to it. Ray then restarts the actor (``max_restarts``) and the
pipeline's recovery path runs exactly as it would in production.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field

from videocups_ray.config import ActorResources, RayConfig
from videocups_ray.stages.base import StreamStateLost

log = logging.getLogger(__name__)

ACTOR_KINDS = ("reader", "flow", "depth", "features", "tracker", "writer")

__all__ = ["ACTOR_KINDS", "DeviceError", "FailureInjector", "FailurePlan", "StreamStateLost", "actor_resources",
           "device_for", "remote_class", "remote_options"]


class DeviceError(RuntimeError):
    """A stage is configured for a device its actor cannot have (no silent CPU run)."""


@dataclass(frozen=True)
class FailurePlan:
    """Kill one actor kind once, at its ``at_call``-th ``process`` call (1-based).

    The marker file makes the failure happen once per job even though the restarted actor
    runs the same constructor again: the first process to claim the marker dies, later
    incarnations see it and carry on.
    """

    kind: str
    at_call: int
    marker: str

    def __post_init__(self) -> None:
        if self.kind not in ACTOR_KINDS:
            raise ValueError(f"FailurePlan.kind must be one of {ACTOR_KINDS}, got {self.kind!r}")
        if self.at_call < 1:
            raise ValueError(f"FailurePlan.at_call must be >= 1, got {self.at_call}")


@dataclass
class FailureInjector:
    """Counts an actor's calls and dies once when a :class:`FailurePlan` says so."""

    kind: str
    plans: tuple[FailurePlan, ...] = ()
    calls: int = field(default=0)

    def tick(self) -> None:
        self.calls += 1
        for plan in self.plans:
            if plan.kind != self.kind or plan.at_call != self.calls:
                continue
            try:
                fd = os.open(plan.marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                continue  # this failure already happened in an earlier incarnation
            os.close(fd)
            log.warning("failure injection: %s actor (pid %d) exits at call %d", self.kind,
                        os.getpid(), self.calls)
            os._exit(1)


def actor_resources(cfg: RayConfig, kind: str) -> ActorResources:
    """The declared resources of one actor kind (``RayConfig.<kind>``)."""
    if kind not in ACTOR_KINDS:
        raise ValueError(f"unknown actor kind {kind!r}; known: {ACTOR_KINDS}")
    return getattr(cfg, kind)


def remote_class(cls: type, cfg: RayConfig, kind: str, *, restartable: bool = True,
                 max_restarts: int | None = None):
    """``ray.remote(**options)(cls)`` with the declared resources and restart policy of ``kind``.

    ``restartable=False`` gives ``max_task_retries=0``: a call in flight when the actor dies
    fails instead of being replayed on a fresh actor (used for stateful actors, whose replayed
    call would run without the state it needs).
    """
    import ray

    restarts = cfg.max_restarts if max_restarts is None else max_restarts
    opts = remote_options(actor_resources(cfg, kind), max_restarts=restarts)
    if not restartable:
        opts["max_task_retries"] = 0
    return ray.remote(**opts)(cls)


def remote_options(res: ActorResources, *, max_restarts: int = 0) -> dict:
    """``ray.remote(**options)`` for an actor from its declared resources."""
    opts: dict = {"num_cpus": res.num_cpus, "num_gpus": res.num_gpus, "max_restarts": max_restarts}
    if res.memory:
        opts["memory"] = res.memory
    if res.resources:
        opts["resources"] = dict(res.resources)
    if max_restarts:
        opts["max_task_retries"] = max_restarts
    return opts


def device_for(res: ActorResources, configured: str, *, actor: str, stage: str) -> str:
    """The device a cue actor runs on: the configured one, checked against its resources.

    A stage configured for ``cuda`` in an actor that declares no GPU (``num_gpus=0``) would be
    scheduled where no GPU is visible; the README promises no silent CPU run, so that is an
    error naming the actor and the stage (set ``ray.<actor>.num_gpus`` or the stage's device).
    """
    if configured.startswith("cuda") and res.num_gpus <= 0:
        raise DeviceError(f"{actor} actor: stage {stage} is configured for {configured!r} but the actor declares "
                          f"num_gpus=0 (set ray.{actor}.num_gpus > 0, or {stage}.device=cpu)")
    return configured
