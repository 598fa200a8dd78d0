"""SynthDrive ray caster: vectorised numpy rendering of a :class:`SynthSceneSpec`.

One camera ray per pixel (through the pixel centre, OpenCV convention), scaled so its
camera-frame z component is 1: the ray parameter of a hit *is* the z-depth. Primitives are
intersected only inside the image rectangle their bounding box projects to (the loop runs
over primitives, never over pixels), a z-buffer keeps the nearest hit, and shading then runs
once per visible pixel, grouped by primitive.

Ground truth flow is exact: the hit point of each pixel is moved with its object's rigid
motion to the other frame's time and projected with that frame's camera. It is valid where
the point is visible in that frame: it projects inside the image, faces the camera, the
rendered primitive at the rounded target pixel is the same, and the rendered depth there
matches the projected depth within a relative tolerance widened by the local depth slope
(rounding moves up to half a pixel, which on the ground near the horizon changes depth by
far more than any fixed relative tolerance).
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from videocups_ray.data.synthdrive_scene import (
    BOX, CYLINDER, ELLIPSOID, KERB_X, PATTERN_TILES, PATTERN_WINDOWS, ROAD, SIDEWALK,
    SIDEWALK_OUTER_X, SKY, TERRAIN, Material, SynthSceneSpec,
)

NEAR = 0.05  # metres; hits closer to the camera plane are ignored
DEPTH_REL_TOL = 0.005  # relative z-buffer tolerance of the visibility test
GROUND = 0  # primitive index of the ground plane; -1 is sky

# world-anchored value noise: a fixed random lattice sampled (bilinear, wrapping) at surface
# coordinates, so the texture is a function of the surface point and moves with it. Summed
# over octaves (fBm) it is aperiodic grain like asphalt, plaster or foliage; a periodic sine
# pattern let a matcher lock onto the wrong period and smooth patterns left the road textureless.
_NOISE_SIZE = 256  # lattice cells per side (wraps)
_NOISE = np.random.default_rng(12345).standard_normal((_NOISE_SIZE, _NOISE_SIZE)).astype(np.float32)
_NOISE_OCTAVES = 5  # cell sizes wavelength * 2^-k, k = 0..4
_NOISE_GAIN = 0.7  # amplitude ratio of successive (finer) octaves
_OCTAVE_ROT = np.random.default_rng(54321).uniform(0, 2 * np.pi, _NOISE_OCTAVES)  # decorrelate octaves
_OCTAVE_OFF = np.random.default_rng(54322).uniform(0, _NOISE_SIZE, (_NOISE_OCTAVES, 2))
# all octaves together have the spread (std ~0.3) the material amplitudes were tuned for
_NOISE_SCALE = 0.5 / np.sqrt(sum(_NOISE_GAIN ** (2 * k) for k in range(_NOISE_OCTAVES)))


def intrinsics(height: int, width: int, focal_scale: float) -> np.ndarray:
    """3x3 pinhole intrinsics; the principal point is the image centre in pixel-centre coordinates."""
    f = focal_scale * width
    return np.array([[f, 0.0, (width - 1) / 2], [0.0, f, (height - 1) / 2], [0.0, 0.0, 1.0]])


@dataclass
class Render:
    """One rendered frame before exposure and noise; flat arrays are row-major pixels."""

    frame: int
    depth: np.ndarray  # HxW float32 z-depth, 0 = sky
    prim: np.ndarray  # HxW int32 primitive index, -1 sky, 0 ground
    normal: np.ndarray  # (H*W, 3) float32 world normals (0 on sky)
    colour: np.ndarray  # HxWx3 float32 linear colour in [0, ~1]
    slope: np.ndarray  # HxW float32 depth change over half a pixel within one primitive, metres
    semantic: np.ndarray  # HxW uint8 Cityscapes train ID
    instance: np.ndarray  # HxW int32 track ID, 0 = stuff or sky
    groups: list[tuple[int, np.ndarray]]  # (primitive, flat pixel indices), sky excluded


@dataclass(frozen=True)
class _PrimTable:
    """Primitives of all objects, flattened; index 0 is the ground plane."""

    kind: np.ndarray
    obj: np.ndarray
    center: np.ndarray
    half: np.ndarray
    semantic: np.ndarray
    track: np.ndarray
    materials: list[Material | None]


class RayCaster:
    """Renders frames of one scene; holds only per-scene constants."""

    def __init__(self, spec: SynthSceneSpec, height: int, width: int, focal_scale: float, *, shadows: bool = True):
        self.spec, self.height, self.width, self.shadows = spec, height, width, shadows
        self.K = intrinsics(height, width, focal_scale)
        f, cx, cy = self.K[0, 0], self.K[0, 2], self.K[1, 2]
        v, u = np.mgrid[0:height, 0:width].astype(np.float32)
        self.ray_x = (u - np.float32(cx)) / np.float32(f)  # camera-frame ray, z = 1
        self.ray_y = (v - np.float32(cy)) / np.float32(f)
        self.u, self.v = u, v
        kinds, objs, centers, halves, sems, tracks, mats = [-1], [0], [(0, 0, 0)], [(0, 0, 0)], [ROAD], [0], [None]
        for o, obj in enumerate(spec.objects):
            for p in obj.primitives:
                kinds.append(p.kind)
                objs.append(o)
                centers.append(p.center)
                halves.append(p.half_size)
                sems.append(p.semantic)
                tracks.append(obj.track_id)
                mats.append(p.material)
        self.table = _PrimTable(np.array(kinds), np.array(objs), np.array(centers, float), np.array(halves, float),
                                np.array(sems, np.uint8), np.array(tracks, np.int32), mats)
        # world corners of primitives that never move: one vectorised behind-the-camera test per
        # frame instead of a Python call per primitive (long sequences hold thousands of them)
        signs = np.array([[sx, sy, sz] for sx in (-1, 1) for sy in (-1, 1) for sz in (-1, 1)], float)
        fixed = np.array([spec.objects[o].is_identity for o in self.table.obj])
        fixed[0] = False  # the ground is handled apart
        self._fixed = np.flatnonzero(fixed)
        self._fixed_corners = self.table.center[self._fixed, None, :] + signs * self.table.half[self._fixed, None, :]
        self._signs = signs

    # ------------------------------------------------------------------ geometry
    def object_pose(self, obj: int, frame: int) -> np.ndarray:
        return self.spec.objects[obj].pose(frame / self.spec.fps)

    def camera_transforms(self, src: int, dst: int) -> tuple[np.ndarray, np.ndarray]:
        """Per object: 4x4 camera(src) -> camera(dst) of its points, and 3x3 world normal at
        src -> camera(dst) normal."""
        cam_src, cam_dst = self.spec.camera_pose(src), self.spec.camera_pose(dst)
        inv_dst = np.linalg.inv(cam_dst)
        points, normals = [], []
        for o in range(len(self.spec.objects)):
            a, b = self.object_pose(o, src), self.object_pose(o, dst)
            motion = b @ np.linalg.inv(a)
            points.append(inv_dst @ motion @ cam_src)
            normals.append(inv_dst[:3, :3] @ motion[:3, :3])
        return np.stack(points), np.stack(normals)

    def _screen_rect(self, corners_world: np.ndarray, cam_inv: np.ndarray) -> tuple[int, int, int, int] | None:
        """Pixel rectangle (v0, v1, u0, u1) covering a convex hull, clipped at the near plane."""
        pc = corners_world @ cam_inv[:3, :3].T + cam_inv[:3, 3]
        front = pc[:, 2] >= NEAR
        if not front.any():
            return None
        pts = [pc[front]]
        if not front.all():  # add where hull edges cross the near plane
            a, b = pc[:, None, :], pc[None, :, :]
            za, zb = pc[:, 2][:, None], pc[:, 2][None, :]
            cross = (za < NEAR) & (zb >= NEAR)
            w = np.where(cross, (NEAR - za) / np.where(cross, zb - za, 1.0), 0.0)
            pts.append((a + w[..., None] * (b - a))[cross])
        p = np.concatenate(pts)
        f, cx, cy = self.K[0, 0], self.K[0, 2], self.K[1, 2]
        us, vs = f * p[:, 0] / p[:, 2] + cx, f * p[:, 1] / p[:, 2] + cy
        u0, u1 = max(int(np.floor(us.min())) - 1, 0), min(int(np.ceil(us.max())) + 2, self.width)
        v0, v1 = max(int(np.floor(vs.min())) - 1, 0), min(int(np.ceil(vs.max())) + 2, self.height)
        if u0 >= u1 or v0 >= v1:
            return None
        return v0, v1, u0, u1

    # ------------------------------------------------------------------ rendering
    def render(self, frame: int) -> Render:
        """Ray-cast the scene at ``frame``: nearest hit per pixel, then shading and labels."""
        spec, tab = self.spec, self.table
        cam = spec.camera_pose(frame)
        cam_inv = np.linalg.inv(cam)
        r = cam[:3, :3].astype(np.float32)
        origin = cam[:3, 3]
        wx = r[0, 0] * self.ray_x + r[0, 1] * self.ray_y + r[0, 2]
        wy = r[1, 0] * self.ray_x + r[1, 1] * self.ray_y + r[1, 2]
        wz = r[2, 0] * self.ray_x + r[2, 1] * self.ray_y + r[2, 2]
        down = wy > 1e-6
        zbuf = np.where(down, np.float32(-origin[1]) / np.where(down, wy, 1), np.inf).astype(np.float32)
        prim = np.where(down, GROUND, -1).astype(np.int32)
        poses = [self.object_pose(o, frame) for o in range(len(spec.objects))]
        z_cam = (self._fixed_corners - origin) @ cam[:3, 2]
        behind = set(self._fixed[z_cam.max(axis=1) < NEAR].tolist())
        for k in range(1, len(tab.kind)):
            if k in behind:
                continue
            pose = poses[tab.obj[k]]
            corners = (tab.center[k] + self._signs * tab.half[k]) @ pose[:3, :3].T + pose[:3, 3]
            rect = self._screen_rect(corners, cam_inv)
            if rect is None:
                continue
            v0, v1, u0, u1 = rect
            dx, dy, dz = wx[v0:v1, u0:u1], wy[v0:v1, u0:u1], wz[v0:v1, u0:u1]
            rot = pose[:3, :3]
            o_local = rot.T @ (origin - pose[:3, 3])
            if not np.allclose(rot, np.eye(3)):
                rt = rot.T.astype(np.float32)
                dx, dy, dz = (rt[0, 0] * dx + rt[0, 1] * dy + rt[0, 2] * dz,
                              rt[1, 0] * dx + rt[1, 1] * dy + rt[1, 2] * dz,
                              rt[2, 0] * dx + rt[2, 1] * dy + rt[2, 2] * dz)
            t = _INTERSECT[tab.kind[k]](o_local - tab.center[k], tab.half[k], dx, dy, dz)
            zb, pr = zbuf[v0:v1, u0:u1], prim[v0:v1, u0:u1]
            better = t < zb
            np.copyto(zb, t, where=better)
            np.copyto(pr, k, where=better)
        depth = np.where(prim >= 0, zbuf, 0).astype(np.float32)
        return self._shade(frame, depth, prim, (wx, wy, wz), origin, poses, cam_inv)

    def _shade(self, frame: int, depth: np.ndarray, prim: np.ndarray, wdir: tuple[np.ndarray, ...],
               origin: np.ndarray, poses: list[np.ndarray], cam_inv: np.ndarray) -> Render:
        """Colour, normals and labels of the visible surface, one primitive group at a time."""
        tab, look = self.table, self.spec.ground
        h, w = depth.shape
        flat_prim = prim.ravel()
        flat_depth = depth.ravel()
        order = np.argsort(flat_prim.astype(np.int16), kind="stable")
        counts = np.bincount(flat_prim + 1, minlength=len(tab.kind) + 1)
        ends = np.cumsum(counts)
        wx, wy, wz = (a.ravel() for a in wdir)
        colour = np.empty((h * w, 3), np.float32)
        normal = np.zeros((h * w, 3), np.float32)
        f = float(self.K[0, 0])
        # sky: gradient by elevation of the viewing ray
        sky = order[: ends[0]]
        elev = np.clip(-wy[sky] / np.sqrt(wx[sky] ** 2 + wy[sky] ** 2 + wz[sky] ** 2), 0, 1)[:, None]
        colour[sky] = look.sky_horizon + (look.sky_zenith - look.sky_horizon) * np.sqrt(elev)
        shade = self._blob_shadows(prim, cam_inv, poses) if self.shadows else None
        semantic = np.full(h * w, SKY, np.uint8)
        instance = np.zeros(h * w, np.int32)
        groups: list[tuple[int, np.ndarray]] = []
        for k in range(len(tab.kind)):
            idx = order[ends[k]: ends[k + 1]]
            if idx.size == 0:
                continue
            groups.append((k, idx))
            t = flat_depth[idx]
            p = np.stack([origin[0] + t * wx[idx], origin[1] + t * wy[idx], origin[2] + t * wz[idx]], axis=1)
            footprint = t / f
            if k == GROUND:
                n = np.zeros_like(p, dtype=np.float32)
                n[:, 1] = -1.0
                grazing = np.maximum(np.abs(wy[idx]) / np.sqrt(wx[idx] ** 2 + wy[idx] ** 2 + wz[idx] ** 2), 0.05)
                # grain is a texture, not a sharp edge: filter it by the geometric mean of the
                # across (t/f) and along (t/f/grazing) footprints, as an anisotropic filter would
                albedo = _ground_albedo(look, p, footprint / grazing, footprint / np.sqrt(grazing))
                light = look.ambient + (1 - look.ambient) * max(-look.sun[1], 0.0)
                side = look.shade_side * p[:, 0]
                light = light * (1.0 - 0.3 * np.clip((side - 3.0) / 6.0, 0, 1))  # street side in shade
                if shade is not None:
                    light = light * shade.ravel()[idx]
                colour[idx] = albedo * light[:, None]
                normal[idx] = n
                semantic[idx] = ground_semantic(p[:, 0])
                continue
            pose = poses[tab.obj[k]]
            rot = pose[:3, :3]
            local = (p - pose[:3, 3]) @ rot - tab.center[k]
            n_local = _NORMAL[tab.kind[k]](local, tab.half[k])
            n = n_local @ rot.T
            mat = tab.materials[k]
            view = np.abs(np.sum(n * np.stack([wx[idx], wy[idx], wz[idx]], 1), 1)) / np.sqrt(
                wx[idx] ** 2 + wy[idx] ** 2 + wz[idx] ** 2)
            fp = footprint / np.maximum(view, 0.1)
            albedo = _albedo(mat, local + tab.center[k], n_local, fp)
            light = look.ambient + (1 - look.ambient) * np.clip(n @ look.sun, 0, 1)
            colour[idx] = albedo * light[:, None]
            normal[idx] = n
            semantic[idx] = tab.semantic[k]
            instance[idx] = tab.track[k]
        return Render(frame, depth, prim, normal, colour.reshape(h, w, 3), _depth_slope(depth, prim),
                      semantic.reshape(h, w), instance.reshape(h, w), groups)

    def _blob_shadows(self, prim: np.ndarray, cam_inv: np.ndarray, poses: list[np.ndarray]) -> np.ndarray:
        """Soft elliptic shadows of things on the ground, displaced away from the sun."""
        shade = np.ones(prim.shape, np.float32)
        sun = self.spec.ground.sun
        away = -np.array([sun[0], sun[2]]) / max(-sun[1], 0.3)
        for o, obj in enumerate(self.spec.objects):
            if obj.track_id == 0:
                continue
            lo = np.min([np.asarray(p.center) - p.half_size for p in obj.primitives], axis=0)
            hi = np.max([np.asarray(p.center) + p.half_size for p in obj.primitives], axis=0)
            height = -lo[1]
            rx, rz = (hi[0] - lo[0]) / 2 + 0.25, (hi[2] - lo[2]) / 2 + 0.25
            pose = poses[o]
            centre = pose[:3, 3] + np.array([away[0], 0.0, away[1]]) * height * 0.35
            reach = 2.2 * max(rx, rz)
            corners = centre + np.array([[sx * reach, 0.0, sz * reach] for sx in (-1, 1) for sz in (-1, 1)])
            rect = self._screen_rect(corners, cam_inv)
            if rect is None:
                continue
            v0, v1, u0, u1 = rect
            on_ground = prim[v0:v1, u0:u1] == GROUND
            if not on_ground.any():
                continue
            # back-project the ground pixels of the rectangle onto y = 0
            cam = np.linalg.inv(cam_inv)
            ru, rv = self.ray_x[v0:v1, u0:u1][on_ground], self.ray_y[v0:v1, u0:u1][on_ground]
            d = np.stack([ru, rv, np.ones_like(ru)], 1) @ cam[:3, :3].T
            t = -cam[1, 3] / d[:, 1]
            gx, gz = cam[0, 3] + t * d[:, 0] - centre[0], cam[2, 3] + t * d[:, 2] - centre[2]
            c, s = np.cos(obj.heading), np.sin(obj.heading)
            ax, az = c * gx - s * gz, s * gx + c * gz
            k = 1.0 - 0.55 * np.exp(-((ax / rx) ** 2 + (az / rz) ** 2) ** 1.5)
            block = shade[v0:v1, u0:u1]
            block[on_ground] *= k.astype(np.float32)
        return shade


# --------------------------------------------------------------------------- intersections
def _box_hit(o: np.ndarray, half: np.ndarray, dx, dy, dz) -> np.ndarray:
    """Slab test; ``o`` is the ray origin relative to the box centre."""
    tmin = np.full(dx.shape, -np.inf, np.float32)
    tmax = np.full(dx.shape, np.inf, np.float32)
    for oc, hc, d in zip(o, half, (dx, dy, dz)):
        inv = np.float32(1.0) / np.where(np.abs(d) < 1e-12, np.float32(1e-12), d)
        t1, t2 = (np.float32(-hc - oc)) * inv, (np.float32(hc - oc)) * inv
        np.maximum(tmin, np.minimum(t1, t2), out=tmin)
        np.minimum(tmax, np.maximum(t1, t2), out=tmax)
    return np.where((tmax >= tmin) & (tmin > NEAR), tmin, np.inf).astype(np.float32)


def _cylinder_hit(o: np.ndarray, half: np.ndarray, dx, dy, dz) -> np.ndarray:
    """Vertical cylinder (axis y): side and top cap (the bottom stands on the ground)."""
    r, hh = np.float32(half[0]), np.float32(half[1])
    ox, oy, oz = (np.float32(c) for c in o)
    a = dx * dx + dz * dz
    b = ox * dx + oz * dz
    c = ox * ox + oz * oz - r * r
    disc = b * b - a * c
    hit = disc >= 0
    t_side = (-b - np.sqrt(np.where(hit, disc, 0))) / np.maximum(a, np.float32(1e-12))
    y_side = oy + t_side * dy
    t = np.where(hit & (np.abs(y_side) <= hh) & (t_side > NEAR), t_side, np.inf)
    t_cap = (-hh - oy) / np.where(np.abs(dy) < 1e-12, np.float32(1e-12), dy)
    cx_, cz_ = ox + t_cap * dx, oz + t_cap * dz
    cap = (t_cap > NEAR) & (cx_ * cx_ + cz_ * cz_ <= r * r)
    return np.where(cap & (t_cap < t), t_cap, t).astype(np.float32)


def _ellipsoid_hit(o: np.ndarray, half: np.ndarray, dx, dy, dz) -> np.ndarray:
    inv = (1.0 / np.asarray(half)).astype(np.float32)
    ox, oy, oz = (np.float32(c) for c in o * inv)
    ex, ey, ez = dx * inv[0], dy * inv[1], dz * inv[2]
    a = ex * ex + ey * ey + ez * ez
    b = ox * ex + oy * ey + oz * ez
    c = ox * ox + oy * oy + oz * oz - 1
    disc = b * b - a * c
    t = (-b - np.sqrt(np.maximum(disc, 0))) / a
    return np.where((disc >= 0) & (t > NEAR), t, np.inf).astype(np.float32)


_INTERSECT = {BOX: _box_hit, CYLINDER: _cylinder_hit, ELLIPSOID: _ellipsoid_hit}


def _box_normal(p: np.ndarray, half: np.ndarray) -> np.ndarray:
    q = p / half
    axis = np.argmax(np.abs(q), axis=1)
    n = np.zeros_like(p)
    rows = np.arange(len(p))
    n[rows, axis] = np.sign(q[rows, axis])
    return n


def _cylinder_normal(p: np.ndarray, half: np.ndarray) -> np.ndarray:
    n = np.stack([p[:, 0], np.zeros(len(p)), p[:, 2]], 1) / half[0]
    cap = p[:, 1] <= -half[1] + 1e-3
    n[cap] = (0.0, -1.0, 0.0)
    return n / np.maximum(np.linalg.norm(n, axis=1, keepdims=True), 1e-9)


def _ellipsoid_normal(p: np.ndarray, half: np.ndarray) -> np.ndarray:
    n = p / np.asarray(half) ** 2
    return n / np.maximum(np.linalg.norm(n, axis=1, keepdims=True), 1e-9)


_NORMAL = {BOX: _box_normal, CYLINDER: _cylinder_normal, ELLIPSOID: _ellipsoid_normal}


# --------------------------------------------------------------------------- appearance
def _fade(footprint: np.ndarray, wavelength: float) -> np.ndarray:
    """Weight of a pattern of this wavelength: 1 when resolved, 0 when it would alias."""
    return np.clip((wavelength / 2 - footprint) / (wavelength / 4), 0, 1)


def _band(coord: np.ndarray, period: float, lo: float, hi: float, footprint: np.ndarray) -> np.ndarray:
    """Periodic pulse: 1 where ``coord / period mod 1`` lies in [lo, hi], edges blurred over
    ``footprint`` metres (a box filter the size of the pixel) so patterns do not alias."""
    width = (hi - lo) * period
    f = np.mod(coord - lo * period, period)
    signed = np.where(f <= width, np.minimum(f, width - f), -np.minimum(f - width, period - f))
    return np.clip(signed / np.maximum(footprint, 1e-4) + 0.5, 0, 1)


def _lattice(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Bilinear value noise at lattice coordinates (a, b) (float64, any range), float32 ~N(0, 0.5)."""
    n = len(a)
    pad = (-n) % 1024  # cv2.remap wants maps under 32767 rows: lay the points out 1024 wide
    ma = np.pad(np.mod(a, _NOISE_SIZE).astype(np.float32), (0, pad)).reshape(-1, 1024)
    mb = np.pad(np.mod(b, _NOISE_SIZE).astype(np.float32), (0, pad)).reshape(-1, 1024)
    return cv2.remap(_NOISE, ma, mb, cv2.INTER_LINEAR, borderMode=cv2.BORDER_WRAP).reshape(-1)[:n]


def _texture(a: np.ndarray, b: np.ndarray, wavelength: float, footprint: np.ndarray) -> np.ndarray:
    """Band-limited fBm value noise in about [-1, 1] on surface coordinates (a, b) in metres.

    Octave k has cells of ``wavelength / 2^k``; an octave fades out where a pixel's footprint
    would alias it (a cell of value noise carries wavelengths down to about two cells).
    """
    out = np.zeros(len(a), np.float32)
    for k in range(_NOISE_OCTAVES):
        cell = wavelength * 0.5**k
        weight = _fade(footprint, 2.0 * cell)
        sel = np.flatnonzero(weight > 0)
        if sel.size == 0:
            continue
        c, s = np.cos(_OCTAVE_ROT[k]) / cell, np.sin(_OCTAVE_ROT[k]) / cell
        u = c * a[sel] - s * b[sel] + _OCTAVE_OFF[k, 0]
        v = s * a[sel] + c * b[sel] + _OCTAVE_OFF[k, 1]
        out[sel] += (_NOISE_GAIN**k * weight[sel]).astype(np.float32) * _lattice(u, v)
    return np.clip(out * np.float32(_NOISE_SCALE), -1.0, 1.0)


def _surface_coords(p: np.ndarray, n_local: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Two coordinates along the face: drop the axis the local normal points along."""
    axis = np.argmax(np.abs(n_local), axis=1)
    a = np.where(axis == 0, p[:, 2], p[:, 0])
    b = np.where(axis == 1, p[:, 2], p[:, 1])
    return a, b


def _albedo(mat: Material, p: np.ndarray, n_local: np.ndarray, footprint: np.ndarray,
            texture_footprint: np.ndarray | None = None) -> np.ndarray:
    base = np.asarray(mat.albedo, np.float32)
    fp_tex = footprint if texture_footprint is None else texture_footprint
    tex = 1.0 + mat.texture_amplitude * _texture(*_surface_coords(p, n_local), mat.texture_wavelength, fp_tex) * 2
    albedo = base[None, :] * tex[:, None]
    if mat.pattern == PATTERN_WINDOWS:
        along = np.where(np.abs(n_local[:, 0]) > 0.5, p[:, 2], p[:, 0])
        height = -p[:, 1]
        win = (_band(along, 3.0, 0.25, 0.75, footprint) * _band(height, 3.2, 0.35, 0.8, footprint)
               * np.clip((height - 2.5) / footprint + 0.5, 0, 1))
        weight = _fade(footprint, 1.5)
        coverage = win * weight + 0.225 * (1 - weight)
        glass = np.array([0.12, 0.15, 0.2], np.float32)
        albedo = albedo + (glass - albedo) * coverage[:, None] * (np.abs(n_local[:, 1]) < 0.5)[:, None]
    return albedo.astype(np.float32)


def _ground_albedo(look, p: np.ndarray, footprint: np.ndarray, texture_footprint: np.ndarray) -> np.ndarray:
    x, z = p[:, 0], p[:, 2]
    ax = np.abs(x)
    out = np.empty((len(p), 3), np.float32)
    for region, mat in ((ground_semantic(x) == ROAD, look.road), (ground_semantic(x) == SIDEWALK, look.sidewalk),
                        (ground_semantic(x) == TERRAIN, look.terrain)):
        if not region.any():
            continue
        q, fp = p[region], footprint[region]
        alb = _albedo(mat, q, np.tile([0.0, -1.0, 0.0], (len(q), 1)), fp, texture_footprint[region])
        if mat.pattern == PATTERN_TILES:
            grid = 1 - (1 - _band(q[:, 0], 0.6, 0.0, 0.08, fp)) * (1 - _band(q[:, 2], 0.6, 0.0, 0.08, fp))
            weight = _fade(fp, 0.6)
            alb *= (1 - 0.25 * (grid * weight + 0.15 * (1 - weight)))[:, None]
        out[region] = alb
    # lane markings: dashed at 0 and +-3.5 m, solid edge lines at +-8.2 m
    lateral_fp = footprint * np.maximum(np.abs(x) / np.maximum(p[:, 2] - z.min() + 1.0, 1.0), 0.3)
    line = [np.clip((0.08 - np.abs(ax - c)) / lateral_fp + 0.5, 0, 1) for c in (0.0, 3.5, 8.2)]
    dashed = _band(z, 9.0, 0.0, 0.35, footprint)
    coverage = np.maximum(np.maximum(line[0], line[1]) * dashed, line[2]) * _fade(footprint, 0.32)
    out += (np.float32(0.85) - out) * coverage[:, None].astype(np.float32)
    return out


def ground_semantic(x: np.ndarray) -> np.ndarray:
    """Class of the ground at lateral position ``x`` (metres from the road axis)."""
    ax = np.abs(x)
    return np.where(ax < KERB_X, ROAD, np.where(ax < SIDEWALK_OUTER_X, SIDEWALK, TERRAIN)).astype(np.uint8)


def _depth_slope(depth: np.ndarray, prim: np.ndarray) -> np.ndarray:
    """Half-pixel depth change bound within one primitive: 0.5 * (max |dz/du| + max |dz/dv|)."""
    du = np.abs(np.diff(depth, axis=1)) * (prim[:, 1:] == prim[:, :-1])
    dv = np.abs(np.diff(depth, axis=0)) * (prim[1:, :] == prim[:-1, :])
    gu = np.zeros_like(depth)
    gv = np.zeros_like(depth)
    gu[:, 1:] = du
    np.maximum(gu[:, :-1], du, out=gu[:, :-1])
    gv[1:, :] = dv
    np.maximum(gv[:-1, :], dv, out=gv[:-1, :])
    return 0.5 * (gu + gv)


def rigid_flow(caster: RayCaster, src: Render, dst: Render) -> tuple[np.ndarray, np.ndarray]:
    """Exact flow from ``src`` to ``dst`` (pixels, HxWx2 float32) and its validity (HxW bool)."""
    h, w = src.depth.shape
    k = caster.K
    f, cx, cy = k[0, 0], k[0, 2], k[1, 2]
    to_dst, n_to_dst = caster.camera_transforms(src.frame, dst.frame)
    flat_depth = src.depth.ravel().astype(np.float64)
    rx, ry = caster.ray_x.ravel(), caster.ray_y.ravel()
    flow = np.zeros((h * w, 2), np.float32)
    valid = np.zeros(h * w, bool)
    dst_prim, dst_depth, dst_slope = dst.prim.ravel(), dst.depth.ravel(), dst.slope.ravel()
    for prim_k, idx in src.groups:
        obj = caster.table.obj[prim_k]
        m = to_dst[obj]
        z = flat_depth[idx]
        p = np.stack([z * rx[idx], z * ry[idx], z], 1)
        q = p @ m[:3, :3].T + m[:3, 3]
        zq = q[:, 2]
        ahead = zq > NEAR
        zs = np.where(ahead, zq, 1.0)
        u2, v2 = f * q[:, 0] / zs + cx, f * q[:, 1] / zs + cy
        flow[idx, 0] = u2 - caster.u.ravel()[idx]
        flow[idx, 1] = v2 - caster.v.ravel()[idx]
        ru, rv = np.rint(u2), np.rint(v2)
        inside = ahead & (ru >= 0) & (ru < w) & (rv >= 0) & (rv < h)
        target = np.where(inside, rv * w + ru, 0).astype(np.int64)
        n = src.normal[idx].astype(np.float64) @ n_to_dst[obj].T
        facing = np.sum(n * q, axis=1) < 0
        same = dst_prim[target] == prim_k
        close = np.abs(dst_depth[target] - zq) <= DEPTH_REL_TOL * zq + dst_slope[target]
        valid[idx] = inside & facing & same & close
    return flow.reshape(h, w, 2), valid.reshape(h, w)
