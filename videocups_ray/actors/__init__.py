"""Ray actors: undecorated classes wrapping the stages of ``videocups_ray/stages``.

``pipelines/ray_*.py`` turn them into Ray actors with
:func:`~videocups_ray.actors.base.remote_class`; tests call them directly. Importing this
package does not import Ray, and nothing here imports ``pipelines``.
"""

from videocups_ray.actors.base import FailurePlan, StreamStateLost, remote_class
from videocups_ray.actors.cues import DepthActor, FeatureActor, FlowActor
from videocups_ray.actors.reader import ReaderActor
from videocups_ray.actors.tracker import TrackerActor
from videocups_ray.actors.writer import WriterActor

__all__ = ["DepthActor", "FailurePlan", "FeatureActor", "FlowActor", "ReaderActor", "StreamStateLost",
           "TrackerActor", "WriterActor", "remote_class"]
