"""Evaluation metrics: STQ (AQ, SQ), VPQ and unsupervised cluster-to-class matching.

Pure numpy/scipy; no Ray, no file I/O. Inputs are HxW panoptic maps
``semantic * label_divisor + instance``.
"""

from videocups_ray.metrics.matching import ClassMapping, MatchingError, UnsupervisedMatcher
from videocups_ray.metrics.stq import STQ
from videocups_ray.metrics.vpq import VPQ

__all__ = ["STQ", "VPQ", "UnsupervisedMatcher", "ClassMapping", "MatchingError"]
