"""The one stage interface every engine drives, and the unit of work that flows between stages.

A stage (cosmos-curate's stage spec is the model) has a cheap constructor from the config, a
heavy :meth:`Stage.setup` run where the stage lives (in the local process or inside an actor),
``process`` on a batch, :meth:`Stage.teardown`, :meth:`Stage.reset` when a new video or live
stream starts, and ``state_dict`` / ``load_state_dict`` when it carries state across batches
(the geometry depth's last plane, the tracker). Resources are data (:class:`Resources`), so a
runner can place the stage without knowing what it does: the local engine ignores them, the Ray
engines turn them into ``ray.remote`` options.

Nothing here imports Ray.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from videocups_ray.data.types import DataError, Frame


@dataclass(frozen=True)
class Resources:
    """What one replica of a stage needs: CPUs and GPUs (fractional allowed), memory in bytes."""

    num_cpus: float = 0.5
    num_gpus: float = 0.0
    memory: int = 0


@runtime_checkable
class Stage(Protocol):
    """The lifecycle every stage has (``process`` signatures differ per stage)."""

    resources: Resources

    def setup(self, device: str | None = None) -> None: ...

    def teardown(self) -> None: ...

    def reset(self) -> None: ...


class StreamStateLost(RuntimeError):
    """A stateful stage was asked to continue a stream whose state it no longer holds.

    Raised when batches of a stream arrive out of order or after the holder restarted (its
    state died with the process); the engine redoes the stream's chunk from its start.
    """


@dataclass
class PairBatch:
    """Frame pairs ``(frames_t[i], frames_t1[i])`` of one stream, batch ``seq`` of it.

    ``last=True``: ``frames_t`` is the final frame of a video alone (it has no pair ahead).
    The same batches, cut by :class:`~videocups_ray.stages.scheduler.PairBatcher`, go through
    the local engine, the Ray corpus engine and the Ray streaming engine.
    """

    stream: str
    seq: int  # position of this batch in its stream, from 0
    frames_t: list[Frame]
    frames_t1: list[Frame] = field(default_factory=list)
    last: bool = False

    def __post_init__(self) -> None:
        if self.last and (len(self.frames_t) != 1 or self.frames_t1):
            raise DataError(f"stream {self.stream} batch {self.seq}: a last-frame batch holds one frame, no pair")
        if not self.last and len(self.frames_t) != len(self.frames_t1):
            raise DataError(f"stream {self.stream} batch {self.seq}: {len(self.frames_t)} frames t, "
                            f"{len(self.frames_t1)} frames t+1")
        if not self.frames_t:
            raise DataError(f"stream {self.stream} batch {self.seq}: empty batch")
