"""Pure stages and the per-video scheduler shared by every engine (no Ray here).

``base``: the Stage interface, :class:`Resources`, :class:`PairBatch`; ``cues``: flow, depth,
features; ``label``: the tracker stage and shard rows; ``scheduler``: batching and the
per-stream state machines; ``chunks``: long videos cut and stitched; ``centroids``: pass 1;
``corpus``: resume test and the corpus-wide result.
"""

from videocups_ray.stages.base import PairBatch, Resources, Stage, StreamStateLost
from videocups_ray.stages.cues import CachedCueStages, CueStages, DepthStage, FeatureStage, FlowStage, assemble_cues
from videocups_ray.stages.label import LabelStage, labelled_to_row
from videocups_ray.stages.scheduler import (
    ChunkResult,
    ChunkSpec,
    DepthStream,
    LabelStream,
    PairBatcher,
    count_batches,
    pair_batches,
    run_chunk,
)

__all__ = ["CachedCueStages", "ChunkResult", "ChunkSpec", "CueStages", "DepthStage", "DepthStream", "FeatureStage",
           "FlowStage", "LabelStage", "LabelStream", "PairBatch", "PairBatcher", "Resources", "Stage",
           "StreamStateLost", "assemble_cues", "count_batches", "labelled_to_row", "pair_batches", "run_chunk"]
