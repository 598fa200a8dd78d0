"""Ray actors: undecorated classes wrapping the pipeline stages with resources and lifecycle.

``pipelines/ray_pseudolabel.py`` turns them into Ray actors with
:func:`~videocups_ray.actors.base.remote_class`; tests call them directly. Importing this
package does not import Ray.
"""

from videocups_ray.actors.base import FailurePlan, StreamStateLost, remote_class
from videocups_ray.actors.cues import DepthActor, FeatureActor, FlowActor, PairBatch
from videocups_ray.actors.tracker import ChunkSpec, TrackerActor
from videocups_ray.actors.writer import WriterActor

__all__ = ["ChunkSpec", "DepthActor", "FailurePlan", "FeatureActor", "FlowActor", "PairBatch",
           "StreamStateLost", "TrackerActor", "WriterActor", "remote_class"]
