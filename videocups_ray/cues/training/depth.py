"""Self-supervised depth, ego-motion and motion mask (Monodepth2 + a DynamoDepth-style term).

:class:`DepthSelfSupervised` wraps the network the ``monodepth`` backend builds
(``cues.monodepth.DepthMotionNet``: ResNet encoder, depth decoder, motion decoder) and a pose
network used only in training; ``net.state_dict()`` is a backend checkpoint. One step, on
windows (t-1, t, t+1) with intrinsics K and the weight-free DIS flow t -> t-1 and t -> t+1:

- **Reprojection** (Monodepth2): depth of t (disparity at 4 scales, upsampled to full size,
  ``disp_to_depth`` with the backend's ``min_depth``/``max_depth``) and the pose t -> s warp each
  source frame s into t; error ``a (1 - SSIM)/2 + (1 - a) L1``.
- **Motion mask** (DynamoDepth's idea, with the flow standing in for its object-motion field):
  a pixel's error is ``(1 - m) e_rigid + m e_flow``, where ``e_flow`` reconstructs t with the
  DIS flow, which also explains independently moving things. The motion decoder's m is
  trained by ``m * (e_rigid - e_flow - margin)`` (no gradient into the errors): it rises
  exactly where the camera's motion fails to explain a pixel that the flow explains. The
  gate uses m without gradient, and only after ``motion_after`` warm-up steps, so a young
  depth network cannot hand every pixel to the flow.
- **Auto-masking** (Monodepth2): the identity errors of the unwarped sources join the
  per-pixel minimum over sources, so static-camera frames and things moving with the camera
  do not teach infinite depth.
- **Smoothness**: edge-aware on mean-normalised disparity (and on m).
- **Metric scale**: pixels in ``road_region`` (rows/cols fractions of the image, the road
  ahead) are back-projected; ``|log median height - log camera_height|`` pulls the depth to
  metres, as the geometry backend's road-plane fit does.

Inputs: ``images`` uint8 ``B x 3 x H x W x 3`` (t-1, t, t+1), ``K`` float ``B x 3 x 3``,
``flow`` float ``B x 2 x H x W x 2`` (t -> t-1, t -> t+1).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from videocups_ray.cues.monodepth import _MEAN, _STD, DepthMotionNet, disp_to_depth
from videocups_ray.cues.training.flow import images_to_float
from videocups_ray.cues.training.losses import edge_smoothness, pixel_grid, sample_at, ssim_l1, warp


class PoseNet(nn.Module):
    """Relative camera motion t -> s from the stacked pair: axis-angle and translation (x0.01,
    Monodepth2's output scaling), each ``B x 3``."""

    def __init__(self, width: int = 16) -> None:
        super().__init__()
        chans = [6, width, 2 * width, 4 * width, 8 * width, 8 * width]
        layers: list[nn.Module] = []
        for cin, cout in zip(chans[:-1], chans[1:]):
            layers += [nn.Conv2d(cin, cout, 3, stride=2, padding=1), nn.ReLU(inplace=True)]
        self.features = nn.Sequential(*layers)
        self.head = nn.Conv2d(chans[-1], 6, 1)

    def forward(self, target: torch.Tensor, source: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = 0.01 * self.head(self.features(torch.cat([target, source], 1) - 0.45)).mean((2, 3))
        return out[:, :3], out[:, 3:]


def axis_angle_to_matrix(v: torch.Tensor) -> torch.Tensor:
    """Rodrigues: ``B x 3`` axis-angle -> ``B x 3 x 3`` rotation."""
    theta = v.norm(dim=1, keepdim=True).clamp_min(1e-8)
    k = v / theta
    kx, ky, kz = k[:, 0], k[:, 1], k[:, 2]
    zero = torch.zeros_like(kx)
    kmat = torch.stack([zero, -kz, ky, kz, zero, -kx, -ky, kx, zero], 1).view(-1, 3, 3)
    eye = torch.eye(3, device=v.device, dtype=v.dtype).expand_as(kmat)
    s, c = torch.sin(theta).view(-1, 1, 1), torch.cos(theta).view(-1, 1, 1)
    return eye + s * kmat + (1 - c) * kmat @ kmat


def reproject(depth: torch.Tensor, K: torch.Tensor, R: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Pixel coordinates in the source of every target pixel: ``K (R d K^-1 p + t)``, ``B x 2 x H x W``."""
    b, _, h, w = depth.shape
    pix = pixel_grid(b, h, w, depth.device, depth.dtype)
    homo = torch.cat([pix, torch.ones_like(pix[:, :1])], 1).view(b, 3, -1)
    points = torch.linalg.solve(K, homo) * depth.view(b, 1, -1)
    cam = R @ points + t.view(b, 3, 1)
    proj = K @ cam
    z = proj[:, 2:3].clamp_min(1e-3)
    return (proj[:, :2] / z).view(b, 2, h, w)


class DepthSelfSupervised(nn.Module):
    """``forward(images, K, flow, step) -> {loss name: weighted scalar}``."""

    def __init__(self, net: DepthMotionNet, *, min_depth: float, max_depth: float, camera_height: float,
                 ssim_weight: float = 0.85, disp_smooth_weight: float = 1e-3, automask: bool = True,
                 motion_margin: float = 0.02, motion_weight: float = 1.0, motion_smooth_weight: float = 1e-3,
                 motion_after: int = 200, height_weight: float = 0.1,
                 road_region: tuple[float, float, float, float] = (0.8, 1.0, 0.35, 0.65), pose_width: int = 16,
                 edge_weight: float = 1.0, init_depth: float | None = None) -> None:
        super().__init__()
        r0, r1, c0, c1 = road_region
        if not (0 <= r0 < r1 <= 1 and 0 <= c0 < c1 <= 1) or not 0 < min_depth < max_depth:
            raise ValueError(f"DepthSelfSupervised: bad road_region {road_region} or depth range "
                             f"({min_depth}, {max_depth})")
        self.net, self.pose = net, PoseNet(pose_width)
        self.min_depth, self.max_depth, self.camera_height = min_depth, max_depth, camera_height
        self.ssim_weight, self.disp_smooth_weight, self.automask = ssim_weight, disp_smooth_weight, automask
        self.motion_margin, self.motion_weight = motion_margin, motion_weight
        self.motion_smooth_weight, self.motion_after = motion_smooth_weight, motion_after
        self.height_weight, self.road_region, self.edge_weight = height_weight, road_region, edge_weight
        if init_depth is not None:
            self.init_disparity(init_depth)

    def init_disparity(self, depth: float) -> None:
        """Set the disparity heads' bias so a fresh network predicts about ``depth`` metres
        everywhere (sigmoid(0) would mean ~2 min_depth, far nearer than a road scene), and the
        motion head's bias to probability ~0.05: training then starts near the road's scale."""
        if not self.min_depth < depth < self.max_depth:
            raise ValueError(f"init_depth {depth} outside ({self.min_depth}, {self.max_depth})")
        lo, hi = 1.0 / self.max_depth, 1.0 / self.min_depth
        d = (1.0 / depth - lo) / (hi - lo)
        n_up = 2 * 5  # Decoder.decoder: 10 ConvBlocks, then one head per scale
        with torch.no_grad():
            for head in list(self.net.depth_decoder.decoder)[n_up:]:
                head.conv.bias.fill_(float(torch.logit(torch.tensor(d))))
            for head in list(self.net.motion_decoder.decoder)[n_up:]:
                head.conv.bias.fill_(float(torch.logit(torch.tensor(0.05))))

    @classmethod
    def from_config(cls, net: DepthMotionNet, ct, depth_cfg, camera) -> "DepthSelfSupervised":
        """From a ``CueTrainingConfig``, the backend's ``DepthConfig`` and the ``CameraConfig``."""
        return cls(net, min_depth=depth_cfg.min_depth, max_depth=depth_cfg.max_depth,
                   camera_height=camera.camera_height, ssim_weight=ct.ssim_weight,
                   disp_smooth_weight=ct.disp_smooth_weight, automask=ct.automask, motion_margin=ct.motion_margin,
                   motion_weight=ct.motion_weight, motion_smooth_weight=ct.motion_smooth_weight,
                   motion_after=ct.motion_after, height_weight=ct.height_weight, road_region=ct.road_region,
                   pose_width=ct.pose_width, init_depth=ct.init_depth)

    def _err(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return ssim_l1(a, b, self.ssim_weight)

    def road_height(self, depth: torch.Tensor, K: torch.Tensor) -> torch.Tensor:
        """Median height below the camera (m, y down) of the road region's pixels, per image."""
        b, _, h, w = depth.shape
        r0, r1, c0, c1 = self.road_region
        rows = slice(int(r0 * h), max(int(r1 * h), int(r0 * h) + 1))
        cols = slice(int(c0 * w), max(int(c1 * w), int(c0 * w) + 1))
        v = pixel_grid(b, h, w, depth.device, depth.dtype)[:, 1:2]
        y = (v - K[:, 1, 2].view(b, 1, 1, 1)) / K[:, 1, 1].view(b, 1, 1, 1) * depth
        return y[:, :, rows, cols].reshape(b, -1).median(dim=1).values

    def forward(self, images: torch.Tensor, K: torch.Tensor, flow: torch.Tensor, step: int = 0
                ) -> dict[str, torch.Tensor]:
        x = images_to_float(images)
        if x.shape[1] != 3:
            raise ValueError(f"depth training needs windows of 3 frames (t-1, t, t+1), got {x.shape[1]}")
        target, sources = x[:, 1], [x[:, 0], x[:, 2]]
        K = K.to(target.dtype)
        flows = flow.permute(0, 1, 4, 2, 3).to(target.dtype)  # B x 2 x 2 x H x W
        h, w = target.shape[-2:]
        feats = self.net.encoder((target - _MEAN.to(x.device)) / _STD.to(x.device))
        disps = self.net.depth_decoder(feats)
        motion = self.net.motion_decoder(feats)[0]
        gate = motion.detach() if step >= self.motion_after else torch.zeros_like(motion)

        poses = []  # camera t -> camera s for each source (the pose net sees the pair in that order)
        for src in sources:
            aa, tr = self.pose(target, src)
            poses.append((axis_angle_to_matrix(aa), tr))
        e_flow = torch.cat([self._err(target, warp(src, flows[:, s])) for s, src in enumerate(sources)], 1)
        e_ident = torch.cat([self._err(target, src) for src in sources], 1)
        e_ident = e_ident + 1e-5 * torch.randn_like(e_ident)  # Monodepth2 breaks ties this way

        photo = target.new_zeros(())
        smooth = target.new_zeros(())
        e_rigid0 = None
        for scale, disp in sorted(disps.items()):
            disp_full = F.interpolate(disp, size=(h, w), mode="bilinear", align_corners=False)
            depth = disp_to_depth(disp_full, self.min_depth, self.max_depth)
            e_rigid = torch.cat([self._err(target, sample_at(src, reproject(depth, K, *poses[s])))
                                 for s, src in enumerate(sources)], 1)
            if scale == 0:
                e_rigid0, depth0 = e_rigid, depth
            mixed = (1 - gate) * e_rigid + gate * e_flow
            cand = torch.cat([e_ident, mixed], 1) if self.automask else mixed
            photo = photo + cand.min(1).values.mean()
            norm = disp / disp.mean((2, 3), keepdim=True).clamp_min(1e-7)
            img = F.interpolate(target, size=disp.shape[-2:], mode="bilinear", align_corners=False)
            smooth = smooth + edge_smoothness(norm, img, order=1, edge_weight=self.edge_weight) / 2**scale
        n_scales = len(disps)
        losses = {"photo": photo / n_scales, "smooth": self.disp_smooth_weight * smooth / n_scales}
        if self.motion_weight > 0:
            with torch.no_grad():
                gap = e_rigid0.min(1, keepdim=True).values - e_flow.min(1, keepdim=True).values
                kept = (e_ident.min(1, keepdim=True).values > torch.minimum(
                    e_rigid0.min(1, keepdim=True).values, e_flow.min(1, keepdim=True).values)).to(gap.dtype)
            losses["motion"] = self.motion_weight * (motion * (gap - self.motion_margin) * kept).mean()
            losses["motion_smooth"] = self.motion_smooth_weight * edge_smoothness(
                motion, target, order=1, edge_weight=self.edge_weight)
        if self.height_weight > 0:
            hgt = self.road_height(depth0, K).clamp_min(1e-3)
            losses["height"] = self.height_weight * (hgt.log() - torch.log(torch.tensor(self.camera_height))).abs().mean()
        return losses
