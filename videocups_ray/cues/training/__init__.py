"""Self-supervised training of the learned cues (pure torch/numpy, no Ray).

- :mod:`losses`: warping, census / SSIM photometric errors, forward-backward occlusion,
  edge-aware smoothness;
- :mod:`flow`: :class:`FlowSelfSupervised` (UFlow/SMURF losses around the ``raft`` backend's net);
- :mod:`depth`: :class:`DepthSelfSupervised` (Monodepth2 + motion mask around the ``monodepth``
  backend's net, with a training-only pose net);
- :mod:`windows`: windows of consecutive frames from any ``FrameSource``, resized and augmented.

The Ray Train driver is ``pipelines/train_cues.py``.
"""

from videocups_ray.cues.training.depth import DepthSelfSupervised, PoseNet
from videocups_ray.cues.training.flow import FlowSelfSupervised

__all__ = ["DepthSelfSupervised", "FlowSelfSupervised", "PoseNet"]
