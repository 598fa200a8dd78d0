"""Optical flow estimators: forward t->t+1, backward t+1->t, and occlusion masks.

Backends (``FlowConfig.backend``):

- ``dis``: OpenCV DIS optical flow on grey images, CPU, no weights (the default).
- ``raft``: torchvision's RAFT architecture (``raft_small`` / ``raft_large``, ``weights=None``)
  loading a local checkpoint in torchvision's layout; forward and backward pairs run in one
  batch on the configured device.
- ``pwc``: PWC-tiny (``cues/pwc.py``), a small coarse-to-fine network trained on CPUs by
  ``videocups train-cues flow`` (``cue_training.flow_net: pwc``), from a local checkpoint.
- ``oracle``: SynthDrive ground truth carried by the ``Frame`` objects.

Occlusion for ``dis`` and ``raft`` is the forward-backward consistency test of
``videocups_ray.kernels.occlusion_mask`` (DESIGN.md section 4, step 1).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import cv2
import numpy as np

from videocups_ray.cues.base import (
    Estimator,
    FlowResult,
    FrameBatch,
    as_frames,
    as_images,
    check_pair,
)
from videocups_ray.cues.checkpoints import NetEstimator, load_checkpoint, require_checkpoint
from videocups_ray.data.types import DataError

if TYPE_CHECKING:  # config types only: the pure path imports without pydantic (gpu_check.py); torch
    import torch  # where RAFT runs: weight-free backends' actors start seconds faster without it

    from videocups_ray.config import FlowConfig

log = logging.getLogger(__name__)

_DIS_PRESETS = {
    "ultrafast": cv2.DISOPTICAL_FLOW_PRESET_ULTRAFAST,
    "fast": cv2.DISOPTICAL_FLOW_PRESET_FAST,
    "medium": cv2.DISOPTICAL_FLOW_PRESET_MEDIUM,
}


def occlusion_masks(fw: np.ndarray, bw: np.ndarray, alpha1: float = 0.01, alpha2: float = 0.5
                    ) -> tuple[np.ndarray, np.ndarray]:
    """Forward and backward occlusion (True = occluded) for ``N x H x W x 2`` flow batches;
    ``alpha1``/``alpha2``: ``cues.flow.occlusion_alpha1/2`` (the paper's 0.01 and 0.5 px^2)."""
    from videocups_ray.kernels import occlusion_mask

    kw = {"alpha1": alpha1, "alpha2": alpha2}
    occ_fw = np.stack([np.asarray(occlusion_mask(f, b, **kw), dtype=bool) for f, b in zip(fw, bw)])
    occ_bw = np.stack([np.asarray(occlusion_mask(b, f, **kw), dtype=bool) for f, b in zip(fw, bw)])
    return occ_fw, occ_bw


def _finite_or_raise(flow: np.ndarray, backend: str) -> np.ndarray:
    bad = ~np.isfinite(flow).reshape(flow.shape[0], -1).all(axis=1)
    if bad.any():
        raise DataError(f"{backend} flow: non-finite values for pair {int(np.argmax(bad))} of the batch")
    return flow


class DisFlow(Estimator):
    """OpenCV DIS optical flow on CPU.

    All-black or textureless frames give zero flow (documented, tested), never NaN.
    """

    name = "dis"

    def __init__(self, preset: str = "medium", *, occlusion: tuple[float, float] = (0.01, 0.5),
                 warm_start: bool = False) -> None:
        super().__init__()
        if preset not in _DIS_PRESETS:
            raise ValueError(f"DisFlow: unknown preset {preset!r}; known: {sorted(_DIS_PRESETS)}")
        self.preset = preset
        self.warm_start = warm_start  # initialise a pair from the previous pair of the same call
        self.occlusion = occlusion  # (alpha1, alpha2) of the fw-bw consistency test
        self.requires_gpu = False
        self.memory_bytes = 64 * 1024**2
        self._dis: cv2.DISOpticalFlow | None = None
        self._dis_warm: cv2.DISOpticalFlow | None = None

    @classmethod
    def from_config(cls, cfg: FlowConfig) -> "DisFlow":
        return cls(cfg.dis_preset, occlusion=(cfg.occlusion_alpha1, cfg.occlusion_alpha2),
                   warm_start=cfg.dis_warm_start)

    def setup(self, device: str = "cpu") -> None:
        if device != "cpu":
            raise ValueError(f"DisFlow runs on the CPU only, got device {device!r}")
        self._dis = cv2.DISOpticalFlow_create(_DIS_PRESETS[self.preset])
        # a DIS object that once refined a given flow keeps using stale internal state on later
        # calls without one (measured: 26 px apart), so warm-started pairs get their own object
        self._dis_warm = cv2.DISOpticalFlow_create(_DIS_PRESETS[self.preset]) if self.warm_start else None
        super().setup(device)

    def teardown(self) -> None:
        self._dis = self._dis_warm = None
        super().teardown()

    def _one(self, a: np.ndarray, b: np.ndarray, init: np.ndarray | None = None) -> np.ndarray:
        assert self._dis is not None
        if init is None:
            return self._dis.calc(a, b, None)
        assert self._dis_warm is not None
        # DIS refines a given flow of the right size and type (OpenCV dis_flow.cpp)
        return self._dis_warm.calc(a, b, init.copy())

    def __call__(self, frames_t: FrameBatch, frames_t1: FrameBatch) -> FlowResult:
        """Flow of every pair. With ``warm_start``, a pair whose frame t is the previous pair's
        frame t+1 (same pixels: consecutive frames of one video) starts DIS from the previous
        pair's flow (constant-motion guess); the first pair of a call always starts from zero.
        No state survives a call, so video boundaries cannot leak and every engine (whatever
        actor gets which batch) computes the same flow for the same batch."""
        self._ensure_setup()
        img_t, img_t1 = as_images(frames_t, "frames_t"), as_images(frames_t1, "frames_t1")
        check_pair(img_t, img_t1)
        grey_t = [cv2.cvtColor(x, cv2.COLOR_RGB2GRAY) for x in img_t]
        grey_t1 = [cv2.cvtColor(x, cv2.COLOR_RGB2GRAY) for x in img_t1]
        fws: list[np.ndarray] = []
        bws: list[np.ndarray] = []
        for i, (a, b) in enumerate(zip(grey_t, grey_t1)):
            chained = self.warm_start and i > 0 and np.array_equal(img_t[i], img_t1[i - 1])
            fws.append(self._one(a, b, fws[-1] if chained else None))
            bws.append(self._one(b, a, bws[-1] if chained else None))
        fw, bw = np.stack(fws).astype(np.float32), np.stack(bws).astype(np.float32)
        fw, bw = _finite_or_raise(fw, "dis"), _finite_or_raise(bw, "dis")
        occ_fw, occ_bw = occlusion_masks(fw, bw, *self.occlusion)
        return FlowResult(fw, bw, occ_fw, occ_bw)


def raft_tiny(*, weights: None = None, progress: bool = False) -> torch.nn.Module:
    """RAFT of torchvision's blocks at about a quarter of ``raft_small``'s width (0.25 M weights),
    for self-supervised training on CPU (``videocups train-cues flow``); same 1/8 correlation
    pyramid (4 levels, radius 3), so frames need a min side of 128 px as for the others."""
    import torch
    from torchvision.models.optical_flow.raft import BottleneckBlock, _raft

    if weights is not None:
        raise ValueError("raft_tiny has no published weights; train one with `videocups train-cues flow`")
    return _raft(weights=None, progress=progress,
                 feature_encoder_layers=(16, 16, 32, 48, 64), feature_encoder_block=BottleneckBlock,
                 feature_encoder_norm_layer=torch.nn.InstanceNorm2d,
                 context_encoder_layers=(16, 16, 32, 48, 96), context_encoder_block=BottleneckBlock,
                 context_encoder_norm_layer=None, corr_block_num_levels=4, corr_block_radius=3,
                 motion_encoder_corr_layers=(48,), motion_encoder_flow_layers=(32, 16),
                 motion_encoder_out_channels=46, recurrent_block_hidden_state_size=48,
                 recurrent_block_kernel_size=(3,), recurrent_block_padding=(1,), flow_head_hidden_size=64,
                 use_mask_predictor=False)


def build_raft_net(arch: str) -> torch.nn.Module:
    """An untrained torchvision RAFT of the named architecture (weights come from a checkpoint)."""
    from torchvision.models.optical_flow import raft_large, raft_small

    builders = {"raft_small": raft_small, "raft_large": raft_large, "raft_tiny": raft_tiny}
    if arch not in builders:
        raise ValueError(f"unknown RAFT architecture {arch!r}; known: {sorted(builders)}")
    return builders[arch](weights=None, progress=False)


def flow_net_predictions(net: torch.nn.Module, a: torch.Tensor, b: torch.Tensor, iters: int) -> list[torch.Tensor]:
    """Every prediction (RAFT: one per iteration; PWC-tiny: one per level) of ``a -> b`` at input
    size; inputs ``B x 3 x H x W`` in [-1, 1], padded here (replicate) to the net's stride."""
    import torch.nn.functional as F

    from videocups_ray.cues.pwc import PwcTiny

    h, w = a.shape[-2:]
    stride = net.stride if isinstance(net, PwcTiny) else 8
    ph, pw = (-h) % stride, (-w) % stride
    if ph or pw:
        a = F.pad(a, (0, pw, 0, ph), mode="replicate")
        b = F.pad(b, (0, pw, 0, ph), mode="replicate")
    preds = net(a, b) if isinstance(net, PwcTiny) else net(a, b, num_flow_updates=iters)
    return [p[..., :h, :w] for p in preds]


class RaftFlow(NetEstimator):
    """RAFT (torchvision layout) from a local checkpoint, batched fw+bw on one device.

    Inputs are padded (replicate) to a multiple of 8 and the padding is cropped from the output.
    """

    name = "raft"
    min_side = 128  # px; smaller frames are an error

    def __init__(self, net: torch.nn.Module, *, iters: int = 12, batch_size: int = 4,
                 device: str = "cpu", occlusion: tuple[float, float] = (0.01, 0.5)) -> None:
        super().__init__()
        if iters < 1 or batch_size < 1:
            raise ValueError(f"RaftFlow: iters and batch_size must be >= 1, got {iters}, {batch_size}")
        self._take_net(net, device, reserve_bytes=512 * 1024**2)
        self.iters, self.batch_size = iters, batch_size
        self.occlusion = occlusion  # (alpha1, alpha2) of the fw-bw consistency test

    @classmethod
    def from_config(cls, cfg: FlowConfig) -> "RaftFlow":
        path = require_checkpoint(cfg.checkpoint, "flow backend 'raft'", "cues.flow.checkpoint")
        net = build_raft_net(cfg.raft_arch)
        load_checkpoint(net, path)
        return cls(net, iters=cfg.raft_iters, batch_size=cfg.batch_size, device=cfg.device,
                   occlusion=(cfg.occlusion_alpha1, cfg.occlusion_alpha2))

    def _flow(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        import torch

        with torch.inference_mode():
            return flow_net_predictions(self.net, a, b, self.iters)[-1]

    def __call__(self, frames_t: FrameBatch, frames_t1: FrameBatch) -> FlowResult:
        import torch

        self._ensure_setup()
        img_t, img_t1 = as_images(frames_t, "frames_t"), as_images(frames_t1, "frames_t1")
        check_pair(img_t, img_t1)
        if min(img_t.shape[1:3]) < self.min_side:
            # RAFT: the 4-level correlation pyramid on 1/8 features needs >= 16 cells per side
            raise DataError(f"{self.name} flow: frames of {img_t.shape[1:3]} are too small "
                            f"(min side {self.min_side} px)")
        fw_all, bw_all = [], []
        for s in range(0, len(img_t), self.batch_size):
            a = torch.from_numpy(img_t[s : s + self.batch_size]).to(self.device)
            b = torch.from_numpy(img_t1[s : s + self.batch_size]).to(self.device)
            a = a.permute(0, 3, 1, 2).float().div(127.5).sub(1.0)
            b = b.permute(0, 3, 1, 2).float().div(127.5).sub(1.0)
            both = self._flow(torch.cat([a, b]), torch.cat([b, a]))
            n = a.shape[0]
            fw_all.append(both[:n].permute(0, 2, 3, 1).float().cpu().numpy())
            bw_all.append(both[n:].permute(0, 2, 3, 1).float().cpu().numpy())
        fw = _finite_or_raise(np.concatenate(fw_all), self.name)
        bw = _finite_or_raise(np.concatenate(bw_all), self.name)
        occ_fw, occ_bw = occlusion_masks(fw, bw, *self.occlusion)
        return FlowResult(fw, bw, occ_fw, occ_bw)


class PwcFlow(RaftFlow):
    """PWC-tiny (``cues/pwc.py``) from a local checkpoint written by ``videocups train-cues flow``;
    batching, padding and occlusion as :class:`RaftFlow` (``raft_iters`` is unused: one pass)."""

    name = "pwc"
    min_side = 32

    @classmethod
    def from_config(cls, cfg: FlowConfig) -> "PwcFlow":
        from videocups_ray.cues.pwc import PwcTiny

        path = require_checkpoint(cfg.checkpoint, "flow backend 'pwc'", "cues.flow.checkpoint")
        net = PwcTiny()
        load_checkpoint(net, path)
        return cls(net, iters=1, batch_size=cfg.batch_size, device=cfg.device,
                   occlusion=(cfg.occlusion_alpha1, cfg.occlusion_alpha2))


class OracleFlow(Estimator):
    """Ground-truth flow from SynthDrive ``Frame`` objects ("oracle cues").

    Needs ``frames_t[i].flow`` / ``.flow_valid`` and ``frames_t1[i].extra["flow_bw"]`` /
    ``["flow_bw_valid"]``; occlusion is the complement of the validity masks.
    """

    name = "oracle"

    @classmethod
    def from_config(cls, cfg: FlowConfig) -> "OracleFlow":
        return cls()

    def __call__(self, frames_t: FrameBatch, frames_t1: FrameBatch) -> FlowResult:
        self._ensure_setup()
        ft = as_frames(frames_t, "frames_t", "oracle flow")
        ft1 = as_frames(frames_t1, "frames_t1", "oracle flow")
        check_pair(as_images(ft, "frames_t"), as_images(ft1, "frames_t1"))
        fw, bw, occ, occ_bw = [], [], [], []
        for a, b in zip(ft, ft1):
            if a.flow is None or a.flow_valid is None:
                raise DataError(f"oracle flow: {a.video_id} frame {a.frame_index} has no ground-truth flow")
            for key in ("flow_bw", "flow_bw_valid"):
                if key not in b.extra:
                    raise DataError(f"oracle flow: {b.video_id} frame {b.frame_index} lacks extra[{key!r}]")
            fw.append(a.flow)
            occ.append(~np.asarray(a.flow_valid, dtype=bool))
            bw.append(b.extra["flow_bw"])
            occ_bw.append(~np.asarray(b.extra["flow_bw_valid"], dtype=bool))
        fw_a = np.nan_to_num(np.stack(fw).astype(np.float32))
        bw_a = np.nan_to_num(np.stack(bw).astype(np.float32))
        return FlowResult(fw_a, bw_a, np.stack(occ), np.stack(occ_bw))


def build_flow(cfg: FlowConfig) -> Estimator:
    """The flow estimator named by ``cfg.backend`` (not yet set up)."""
    builders = {"dis": DisFlow.from_config, "raft": RaftFlow.from_config, "pwc": PwcFlow.from_config,
                "oracle": OracleFlow.from_config}
    if cfg.backend == "simulated":
        from videocups_ray.cues.simulated import SimulatedFlow

        return SimulatedFlow.from_config(cfg)
    if cfg.backend not in builders:
        raise ValueError(f"unknown flow backend {cfg.backend!r}; known: {sorted(builders)}")
    return builders[cfg.backend](cfg)
