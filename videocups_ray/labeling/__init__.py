"""Pseudo-label core: instance proposals, semantic pseudo-classes, tracking, thing/stuff.

Pure library code (numpy/scipy/OpenCV, no Ray, no file I/O except centroid files); the Ray
actors wrap these objects unchanged.
"""

from videocups_ray.labeling.instances import propose_frame, propose_instances
from videocups_ray.labeling.semantics import (
    CosineKMeans,
    KMeansStats,
    SemanticLabeler,
    cluster_probs,
    fit_corpus_centroids,
    init_centroids,
    load_centroids,
    merge_stats,
    partial_stats,
    sample_features,
    save_centroids,
    update_centroids,
)
from videocups_ray.labeling.thingstuff import ThingStuffStats, apply_thing_stuff, merge_thing_stuff
from videocups_ray.labeling.tracker import VideoTracker
from videocups_ray.labeling.types import FrameCues, FrameProposal, LabelledFrame

__all__ = [
    "CosineKMeans", "FrameCues", "FrameProposal", "KMeansStats", "LabelledFrame", "SemanticLabeler",
    "ThingStuffStats", "VideoTracker", "apply_thing_stuff", "cluster_probs", "fit_corpus_centroids",
    "init_centroids", "load_centroids", "merge_stats", "merge_thing_stuff", "partial_stats",
    "propose_frame", "propose_instances", "sample_features", "save_centroids", "update_centroids",
]
