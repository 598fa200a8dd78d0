"""Evaluation metrics: STQ (AQ, SQ), VPQ (mcahny/vps or ViP-DeepLab protocol), DVPQ with depth
metrics, and unsupervised cluster-to-class matching.

Pure numpy/scipy; no Ray, no file I/O. Inputs are HxW panoptic maps
``semantic * label_divisor + instance``.
"""

from videocups_ray.metrics.aq_split import TrackMotion, aq_split
from videocups_ray.metrics.dvpq import DVPQ, DepthMetrics
from videocups_ray.metrics.matching import ClassMapping, MatchingError, UnsupervisedMatcher
from videocups_ray.metrics.stq import STQ
from videocups_ray.metrics.vpq import VPQ

__all__ = ["STQ", "VPQ", "DVPQ", "DepthMetrics", "UnsupervisedMatcher", "ClassMapping", "MatchingError", "TrackMotion",
           "aq_split"]
