"""Cue estimators: optical flow, depth + motion probability, per-pixel features (no Ray here).

Build one from its config section, call ``setup(device)`` once, then call it on batches::

    flow = build_flow(cfg.cues.flow); flow.setup("cpu")
    fr = flow(frames_t, frames_t1)                    # FlowResult(fw, bw, occlusion, occlusion_bw)
    depth = build_depth(cfg.cues.depth); depth.setup("cpu")
    dr = depth(frames_t, frames_t1, fr, K)            # DepthResult(depth, motion_prob, valid)
    feats = build_features(cfg.cues.features); feats.setup("cpu")
    fe = feats(frames_t, depth=dr.depth)              # FeatureResult(high, low)
"""

from videocups_ray.cues.base import DepthResult, Estimator, FeatureResult, FlowResult
from videocups_ray.cues.checkpoints import CheckpointError, load_checkpoint, save_checkpoint
from videocups_ray.cues.depth import GeometryDepth, OracleDepth, build_depth
from videocups_ray.cues.features import HandmadeFeatures, build_features
from videocups_ray.cues.flow import DisFlow, OracleFlow, RaftFlow, build_flow

__all__ = [
    "CheckpointError", "DepthResult", "DisFlow", "Estimator", "FeatureResult", "FlowResult",
    "GeometryDepth", "HandmadeFeatures", "OracleDepth", "OracleFlow", "RaftFlow",
    "build_depth", "build_features", "build_flow", "load_checkpoint", "save_checkpoint",
]
