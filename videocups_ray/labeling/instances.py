"""Instance proposals per frame: region growing on (depth, flow, motion probability).

DESIGN.md section 4 step 3. The kernel does the graph and its connected components; this
module adds the input checks, the border clean-up and the per-frame proposal assembly
(instances + semantics + motion) that the tracker consumes.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import numpy as np

from videocups_ray import kernels
from videocups_ray.data.types import DataError
from videocups_ray.labeling.semantics import SemanticLabeler
from videocups_ray.labeling.types import FrameCues, FrameProposal

if TYPE_CHECKING:  # config types only: the pure path imports without pydantic (gpu_check.py)
    from videocups_ray.config import LabelingConfig

log = logging.getLogger(__name__)


def propose_instances(depth: np.ndarray, flow: np.ndarray, motion_prob: np.ndarray,
                      cfg: LabelingConfig, *, where: str = "frame") -> np.ndarray:
    """int32 ``H x W`` proposal IDs (0 none, 1..N) by region growing with the config's
    ``alpha, radius, tau_d, tau_f, min_pixels``.

    ``border_margin`` px at the image edge are excluded as seeds: flow and the epipolar motion
    residual are least reliable there (the correspondence often leaves the image).
    """
    h, w = depth.shape
    if flow.shape != (h, w, 2) or motion_prob.shape != (h, w):
        raise DataError(f"{where}: depth {depth.shape}, flow {flow.shape}, motion_prob "
                        f"{motion_prob.shape} do not agree")
    motion = np.asarray(motion_prob, dtype=np.float32)
    if cfg.border_margin > 0:
        m = cfg.border_margin
        motion = motion.copy()
        motion[:m] = 0
        motion[-m:] = 0
        motion[:, :m] = 0
        motion[:, -m:] = 0
    arrays = [np.ascontiguousarray(depth, dtype=np.float32), np.ascontiguousarray(flow, dtype=np.float32),
              np.ascontiguousarray(motion)]
    xp = _gpu_module(where) if cfg.device == "cuda" else None
    if xp is not None:
        arrays = [xp.asarray(a) for a in arrays]  # kernels dispatch on the array type
    labels = kernels.region_grow(*arrays, alpha=cfg.alpha, radius=cfg.radius, tau_d=cfg.tau_d,
                                 tau_f=cfg.tau_f, min_pixels=cfg.min_pixels)
    # Canonical already (1..N in raster order, small regions removed) on either device, and the
    # CuPy kernel agrees with Numba bit for bit, so the device never changes the labels.
    return xp.asnumpy(labels) if xp is not None else labels


def _gpu_module(where: str):
    """CuPy for ``labeling.device = "cuda"``; a missing GPU is an error, never a silent CPU run."""
    try:
        import cupy
    except ImportError as exc:
        raise RuntimeError(f"{where}: labeling.device='cuda' needs CuPy (pip install '.[gpu]')") from exc
    if not cupy.cuda.is_available():
        raise RuntimeError(f"{where}: labeling.device='cuda' but no CUDA GPU is visible")
    return cupy


def _growth_flow(cues: FrameCues) -> np.ndarray:
    """Forward flow; at a video's last frame only the backward flow exists, and its negation
    is the constant-velocity stand-in. Logged for each such frame (one line per video, naming
    it), with no process-wide "warned" flag: a second video or job in the process is told too."""
    if cues.flow_fw is not None:
        return cues.flow_fw
    log.info("instances: %s has no forward flow (last frame?); region growing uses the "
             "negated backward flow instead", cues.name)
    return -cues.flow_bw


def propose_frame(cues: FrameCues, cfg: LabelingConfig, semantics: SemanticLabeler) -> FrameProposal:
    """Per-frame proposal: instances by region growing, pseudo-classes by fused k-means."""
    cues.validate()
    instances = propose_instances(cues.depth, _growth_flow(cues), cues.motion_prob, cfg, where=cues.name)
    semantic = semantics(cues.features_high, cues.features_low, cues.depth)
    return FrameProposal(cues.video_id, cues.frame_index, instances, semantic,
                         cues.flow_fw, cues.flow_bw, cues.occ_fw, cues.occ_bw,
                         depth=cues.depth.astype(np.float32) if cfg.write_depth_cue else None)
