"""Unsupervised optical flow (UFlow / SMURF family), as a loss-returning module.

:class:`FlowSelfSupervised` wraps the exact network the ``raft`` flow backend builds
(``cues.flow.build_raft_net``) or the ``pwc`` backend's PWC-tiny (``cues/pwc.py``), so its
``net`` state dict *is* a backend checkpoint. One step:

1. forward and backward flow of every pair in one batched call, every prediction kept (RAFT's
   iterations or PWC's levels, coarse to fine; sequence loss: prediction i weighted
   ``gamma^(n-1-i)``);
2. photometric loss (census or SSIM+L1) between frame t and frame t+1 warped by the flow,
   on pixels that are visible by forward-backward consistency of the final prediction (after
   ``occlusion_after`` steps, as UFlow warms up); an occluded pixel costs a constant
   ``occlusion_penalty`` instead (UnFlow), so masking everything is never a free minimum;
3. edge-aware first- or second-order smoothness of the final flow;
4. optionally (``dis_teacher_weight``) a proxy teacher: robust L1 of every prediction to the
   weight-free DIS flow on pixels DIS's own forward-backward test keeps; a classical-flow
   bootstrap that makes a network useful within a CPU budget (the photometric terms refine);
5. optionally SMURF's self-supervision: the full-image final flow (no gradient) teaches a
   student pass on a centre crop resized to full size, on pixels the teacher sees as visible.

Inputs are the training windows as Ray Data gives them: ``images`` uint8 ``B x 2 x H x W x 3``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from videocups_ray.cues.flow import flow_net_predictions
from videocups_ray.cues.training.losses import (
    census_transform,
    edge_smoothness,
    fb_valid,
    masked_mean,
    photometric,
    robust_l1,
    warp,
)


def images_to_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 ``B x T x H x W x 3`` -> float ``B x T x 3 x H x W`` in [0, 1]."""
    return images.permute(0, 1, 4, 2, 3).float().div(255.0)


class FlowSelfSupervised(nn.Module):
    """``forward(images, step) -> {loss name: weighted scalar}`` for one batch of frame pairs."""

    def __init__(self, net: nn.Module, *, iters: int = 6, gamma: float = 0.8, photometric: str = "census",
                 census_radius: int = 3, smooth_weight: float = 2.0, smooth_order: int = 2,
                 edge_weight: float = 150.0, occlusion_after: int = 0, selfsup_weight: float = 0.0,
                 selfsup_after: int = 0, selfsup_crop: float = 0.1, occlusion_penalty: float = 2.0,
                 teacher_weight: float = 0.0) -> None:
        super().__init__()
        if iters < 1 or not 0 < gamma <= 1 or smooth_order not in (1, 2) or not 0 <= selfsup_crop < 0.5:
            raise ValueError(f"FlowSelfSupervised: bad iters={iters}, gamma={gamma}, smooth_order={smooth_order} "
                             f"or selfsup_crop={selfsup_crop}")
        self.net = net
        self.iters, self.gamma, self.kind, self.census_radius = iters, gamma, photometric, census_radius
        self.smooth_weight, self.smooth_order, self.edge_weight = smooth_weight, smooth_order, edge_weight
        self.occlusion_after, self.occlusion_penalty = occlusion_after, occlusion_penalty
        self.selfsup_weight, self.selfsup_after, self.selfsup_crop = selfsup_weight, selfsup_after, selfsup_crop
        self.teacher_weight = teacher_weight

    @classmethod
    def from_config(cls, net: nn.Module, ct) -> "FlowSelfSupervised":
        """From a ``CueTrainingConfig``."""
        return cls(net, iters=ct.flow_iters, gamma=ct.flow_gamma, photometric=ct.photometric,
                   census_radius=ct.census_radius, smooth_weight=ct.smooth_weight, smooth_order=ct.smooth_order,
                   edge_weight=ct.edge_weight, occlusion_after=ct.occlusion_after,
                   selfsup_weight=ct.selfsup_weight, selfsup_after=ct.selfsup_after, selfsup_crop=ct.selfsup_crop,
                   occlusion_penalty=ct.occlusion_penalty, teacher_weight=ct.dis_teacher_weight)

    def flows(self, a: torch.Tensor, b: torch.Tensor) -> list[torch.Tensor]:
        """Every prediction (RAFT iterations / PWC levels) for ``a -> b``; inputs in [0, 1]."""
        # the backend's normalisation (uint8 / 127.5 - 1) and padding
        return flow_net_predictions(self.net, a * 2 - 1, b * 2 - 1, self.iters)

    def forward(self, images: torch.Tensor, step: int = 0, teacher: torch.Tensor | None = None
                ) -> dict[str, torch.Tensor]:
        """``teacher``: float ``B x 2 x H x W x 2`` DIS flow (a -> b, b -> a) for the proxy term."""
        x = images_to_float(images)
        if x.shape[1] < 2:
            raise ValueError(f"flow training needs windows of 2 frames, got {x.shape[1]}")
        a, b = x[:, 0], x[:, 1]
        n = a.shape[0]
        src, dst = torch.cat([a, b]), torch.cat([b, a])  # fw pairs, then bw pairs
        preds = self.flows(src, dst)
        final = preds[-1]
        fw, bw = final[:n], final[n:]
        if step >= self.occlusion_after:
            valid = torch.cat([fb_valid(fw.detach(), bw.detach()), fb_valid(bw.detach(), fw.detach())])
        else:
            valid = torch.ones_like(final[:, :1])
        # Occluded pixels cost a constant (UnFlow's occlusion penalty), so declaring every pixel
        # occluded is never free; targets outside the image read the border and keep a gradient.
        photo = self.occlusion_penalty * (1 - valid).mean()
        norm = sum(self.gamma ** (len(preds) - 1 - i) for i in range(len(preds)))
        t_src = census_transform(src, self.census_radius) if self.kind == "census" else None
        for i, flow in enumerate(preds):
            err = photometric(src, warp(dst, flow), self.kind, self.census_radius, t_src)
            photo = photo + self.gamma ** (len(preds) - 1 - i) / norm * (err * valid).mean()
        losses = {"photo": photo,
                  "smooth": self.smooth_weight * edge_smoothness(final, src, order=self.smooth_order,
                                                                 edge_weight=self.edge_weight)}
        if self.teacher_weight > 0:
            if teacher is None:
                raise ValueError("flow training: dis_teacher_weight > 0 but the batch has no 'teacher' flow")
            t = teacher.to(final.dtype).permute(0, 1, 4, 2, 3)  # B x 2 x 2 x H x W
            t = torch.cat([t[:, 0], t[:, 1]])  # fw pairs, then bw pairs, as src / dst
            keep = torch.cat([fb_valid(t[:n], t[n:]), fb_valid(t[n:], t[:n])])
            losses["teacher"] = self.teacher_weight * sum(
                self.gamma ** (len(preds) - 1 - i) / norm * masked_mean(robust_l1(p - t), keep)
                for i, p in enumerate(preds))
        if self.selfsup_weight > 0 and step >= self.selfsup_after:
            losses["selfsup"] = self.selfsup_weight * self._selfsup(src, dst, final.detach(), valid)
        return losses

    def _selfsup(self, src: torch.Tensor, dst: torch.Tensor, teacher: torch.Tensor,
                 valid: torch.Tensor) -> torch.Tensor:
        """SMURF: student flow on the centre crop (resized to full size) vs the cropped teacher."""
        h, w = src.shape[-2:]
        ch, cw = int(round(h * self.selfsup_crop)), int(round(w * self.selfsup_crop))
        if ch == 0 and cw == 0:
            return src.new_zeros(())
        sy, sx = (h - 2 * ch) / h, (w - 2 * cw) / w  # crop size / full size

        def crop(t: torch.Tensor) -> torch.Tensor:
            return F.interpolate(t[..., ch:h - ch, cw:w - cw], size=(h, w), mode="bilinear", align_corners=False)

        student = self.flows(crop(src), crop(dst))[-1]
        target = crop(teacher) / torch.tensor([sx, sy], device=src.device, dtype=src.dtype).view(1, 2, 1, 1)
        mask = (crop(valid) > 0.99).to(src.dtype)
        return masked_mean(robust_l1(student - target), mask)
