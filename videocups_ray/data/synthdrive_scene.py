"""SynthDrive scene description: what is where, and how it moves (no rendering here).

World frame: x right, y down, z forward along the road (the same axes as the camera at zero
yaw), the ground is the plane y = 0, so heights above the road are negative y. Every object
is a rigid set of primitives in its own frame, placed in the world by ``pose(time)``;
primitives are boxes, vertical cylinders and ellipsoids, all described by a centre and a
half-size so the ray caster can bound them the same way. The ground plane is not an
object: its class and material depend on the lateral position (road, sidewalk, terrain).

Road layout, lateral metres from the road axis: lanes at -5.25, -1.75 (oncoming), +1.75
(ego) and +5.25 (same direction); parking strips at +-7.5; kerb at +-8.5; sidewalk to
+-11.5; terrain and buildings beyond.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from videocups_ray.config import SynthConfig

ROAD, SIDEWALK, BUILDING, POLE, VEGETATION, TERRAIN, SKY, PERSON, CAR = 0, 1, 2, 5, 8, 9, 10, 11, 13
SYNTH_CLASSES: dict[int, str] = {
    ROAD: "road", SIDEWALK: "sidewalk", BUILDING: "building", POLE: "pole",
    VEGETATION: "vegetation", TERRAIN: "terrain", SKY: "sky", PERSON: "person", CAR: "car",
}
THING_CLASSES: tuple[int, ...] = (PERSON, CAR)

KERB_X = 8.5  # metres from the road axis to the kerb
SIDEWALK_OUTER_X = 11.5  # metres from the road axis to the sidewalk's outer edge
PARKING_X = 7.5  # lateral position of parked cars' centres, metres
EGO_LANE_X = 1.75  # ego lane centre, metres

BOX, CYLINDER, ELLIPSOID = 0, 1, 2
PATTERN_PLAIN, PATTERN_WINDOWS, PATTERN_TILES = 0, 1, 2


@dataclass(frozen=True)
class Material:
    """Albedo in [0, 1] RGB, procedural texture amplitude (relative) and wavelength (metres)."""

    albedo: tuple[float, float, float]
    texture_amplitude: float = 0.15
    texture_wavelength: float = 1.0
    pattern: int = PATTERN_PLAIN


@dataclass(frozen=True)
class Primitive:
    """A solid in its object's frame: ``center`` and ``half_size`` (box: half extents;
    cylinder (vertical, y axis): (radius, half height, radius); ellipsoid: radii)."""

    kind: int
    center: tuple[float, float, float]
    half_size: tuple[float, float, float]
    semantic: int
    material: Material


@dataclass
class SceneObject:
    """A rigid object moving at constant velocity (zero for parked cars, waiting people, stuff).

    ``pose(time)`` is object-to-world (4x4): rotation ``heading`` about the world y axis, then
    translation ``start + velocity * time``.
    """

    name: str
    track_id: int  # persistent instance ID, 0 for stuff
    primitives: list[Primitive]
    start: tuple[float, float, float] = (0.0, 0.0, 0.0)
    velocity: tuple[float, float, float] = (0.0, 0.0, 0.0)
    heading: float = 0.0  # radians about the world y axis

    @property
    def moving(self) -> bool:
        return bool(np.any(np.asarray(self.velocity) != 0.0))

    @property
    def is_identity(self) -> bool:
        return not self.moving and self.heading == 0.0 and not np.any(np.asarray(self.start))

    def pose(self, time: float) -> np.ndarray:
        c, s = np.cos(self.heading), np.sin(self.heading)
        m = np.eye(4)
        m[:3, :3] = [[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]]
        m[:3, 3] = np.asarray(self.start, float) + np.asarray(self.velocity, float) * time
        return m


@dataclass
class GroundLook:
    """Materials of the ground regions and the per-sequence lighting."""

    road: Material
    sidewalk: Material
    terrain: Material
    sun: np.ndarray  # unit vector towards the sun (world)
    ambient: float  # ambient light fraction
    shade_side: float  # +1 or -1: the side of the street in building shadow
    sky_horizon: np.ndarray  # RGB
    sky_zenith: np.ndarray  # RGB


@dataclass
class SynthSceneSpec:
    """Everything that defines one sequence: ego trajectory, objects, looks."""

    video_id: str
    frames: int
    fps: float
    camera_height: float
    ego_position: np.ndarray  # (frames, 3) world camera centres
    ego_yaw: np.ndarray  # (frames,) radians
    objects: list[SceneObject] = field(default_factory=list)
    ground: GroundLook | None = None

    def camera_pose(self, frame: int) -> np.ndarray:
        """Camera-to-world 4x4 (camera axes x right, y down, z forward)."""
        c, s = np.cos(self.ego_yaw[frame]), np.sin(self.ego_yaw[frame])
        m = np.eye(4)
        m[:3, :3] = [[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]]
        m[:3, 3] = self.ego_position[frame]
        return m


# --------------------------------------------------------------------------- palettes
_CAR_COLOURS = (  # greys on purpose: a grey car on grey asphalt must not stand out
    (0.38, 0.38, 0.39), (0.45, 0.45, 0.46), (0.62, 0.63, 0.64), (0.12, 0.12, 0.13),
    (0.85, 0.85, 0.84), (0.55, 0.10, 0.10), (0.12, 0.20, 0.45), (0.30, 0.34, 0.30),
    (0.70, 0.62, 0.45), (0.20, 0.35, 0.55), (0.50, 0.48, 0.44), (0.80, 0.55, 0.15),
)
_FACADES = (  # brick, concrete, plaster, glass, dark stone, asphalt-grey render
    Material((0.55, 0.28, 0.20), 0.25, 0.5, PATTERN_WINDOWS),
    Material((0.50, 0.50, 0.49), 0.20, 1.5, PATTERN_WINDOWS),
    Material((0.80, 0.74, 0.62), 0.12, 2.0, PATTERN_WINDOWS),
    Material((0.25, 0.35, 0.42), 0.10, 3.0, PATTERN_WINDOWS),
    Material((0.30, 0.29, 0.28), 0.20, 1.0, PATTERN_PLAIN),
    Material((0.42, 0.42, 0.43), 0.18, 0.8, PATTERN_PLAIN),
)
_CLOTHES = (
    (0.10, 0.10, 0.12), (0.40, 0.40, 0.42), (0.15, 0.22, 0.45), (0.55, 0.15, 0.12),
    (0.60, 0.58, 0.50), (0.20, 0.35, 0.20), (0.75, 0.70, 0.20), (0.35, 0.25, 0.18),
)


def _pick(rng: np.random.Generator, options: tuple) -> object:
    return options[int(rng.integers(len(options)))]


def _jitter(rng: np.random.Generator, colour: tuple, amount: float = 0.05) -> tuple:
    """Brightness jitter of ``amount`` plus a weaker tint, so greys stay grey."""
    shift = rng.uniform(-amount, amount)
    return tuple(float(np.clip(c + shift + rng.uniform(-amount, amount) / 4, 0.02, 0.98)) for c in colour)


# --------------------------------------------------------------------------- ego
def _ego_trajectory(cfg: SynthConfig, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, bool]:
    """Per-frame camera centres and yaw; speed varies and may come to a full stop.

    A stop decelerates linearly to zero, stands still for at least two frame intervals
    (so consecutive poses are identical) and accelerates again.
    """
    n = cfg.frames
    cruise = cfg.speed_max * rng.uniform(0.5, 1.0)
    # interval speeds: slow drift around the cruising speed
    drift = 1.0 + 0.15 * np.sin(2 * np.pi * (np.arange(max(n - 1, 1)) / max(n, 2)) * rng.uniform(0.3, 1.0)
                                + rng.uniform(0, 2 * np.pi))
    speed = cruise * drift[: max(n - 1, 0)]
    stops = rng.random() < cfg.stop_probability and n >= 3
    if stops:
        ramp = max(1, min(5, n // 6))
        hold = max(2, n // 5)
        first = int(rng.integers(0, max(1, n - 1 - ramp - hold)))
        for k in range(ramp):  # decelerate
            if first + k < n - 1:
                speed[first + k] *= 1.0 - (k + 1) / (ramp + 1)
        stop_from = first + ramp
        speed[stop_from: stop_from + hold] = 0.0
        for k in range(ramp):  # accelerate again
            i = stop_from + hold + k
            if i < n - 1:
                speed[i] *= (k + 1) / (ramp + 1)
    z = np.concatenate([[0.0], np.cumsum(speed / cfg.fps)])
    # yaw and lateral sway are functions of the distance driven, so a stopped car stands still
    wavelength = rng.uniform(15.0, 40.0)  # metres
    phase = rng.uniform(0, 2 * np.pi)
    yaw = cfg.yaw_amplitude * np.sin(2 * np.pi * z / wavelength + phase)
    x = EGO_LANE_X + 0.15 * np.sin(2 * np.pi * z / (1.7 * wavelength) + phase)
    pos = np.stack([x, np.full(n, -cfg.camera_height), z], axis=1)
    return pos, yaw, stops


# --------------------------------------------------------------------------- things
def _car(rng: np.random.Generator, name: str, track_id: int, start, velocity, heading) -> SceneObject:
    length, width = rng.uniform(3.9, 4.8), rng.uniform(1.7, 1.95)
    body_h, cabin_h = rng.uniform(0.75, 0.95), rng.uniform(0.45, 0.6)
    clearance = 0.18
    paint = Material(_jitter(rng, _pick(rng, _CAR_COLOURS), 0.03), 0.06, 0.7)
    glass = Material(_jitter(rng, (0.12, 0.14, 0.16), 0.03), 0.05, 0.5)
    cabin_len = length * rng.uniform(0.45, 0.6)
    body = Primitive(BOX, (0.0, -(clearance + body_h / 2), 0.0), (width / 2, body_h / 2, length / 2), CAR, paint)
    cabin = Primitive(BOX, (0.0, -(clearance + body_h + cabin_h / 2), -0.1 * length),
                      (width / 2 - 0.08, cabin_h / 2, cabin_len / 2), CAR, glass)
    return SceneObject(name, track_id, [body, cabin], start, velocity, heading)


def _person(rng: np.random.Generator, name: str, track_id: int, start, velocity) -> SceneObject:
    height = rng.uniform(1.55, 1.9)
    radius = rng.uniform(0.18, 0.25)
    head_r = 0.11
    body_h = height - 2 * head_r
    clothes = Material(_jitter(rng, _pick(rng, _CLOTHES), 0.04), 0.15, 0.3)
    skin = Material(_jitter(rng, (0.62, 0.48, 0.38), 0.12), 0.05, 0.2)
    body = Primitive(CYLINDER, (0.0, -body_h / 2, 0.0), (radius, body_h / 2, radius), PERSON, clothes)
    head = Primitive(ELLIPSOID, (0.0, -(height - head_r), 0.0), (head_r * 0.9, head_r, head_r), PERSON, skin)
    heading = float(np.arctan2(velocity[0], velocity[2])) if np.any(velocity) else rng.uniform(-np.pi, np.pi)
    return SceneObject(name, track_id, [body, head], start, velocity, heading)


def _spread(rng: np.random.Generator, count: int, low: float, high: float, gap: float) -> list[float]:
    """Up to ``count`` positions in [low, high] at least ``gap`` apart (rejection sampling)."""
    out: list[float] = []
    for _ in range(count * 20):
        if len(out) == count:
            break
        z = rng.uniform(low, high)
        if all(abs(z - o) >= gap for o in out):
            out.append(z)
    return out


def _things(cfg: SynthConfig, rng: np.random.Generator, z_first: float, z_last: float,
            ego_speed: float) -> list[SceneObject]:
    duration = max(cfg.frames - 1, 1) / cfg.fps
    things: list[SceneObject] = []
    next_id = 1
    # parked cars: static things along both kerbs
    per_side = [0, 0]
    for _ in range(cfg.parked_cars):
        per_side[int(rng.integers(2))] += 1
    for side, count in zip((-1.0, 1.0), per_side):
        for z in _spread(rng, count, z_first + 4.0, z_last + 45.0, 5.5):
            heading = (0.0 if rng.random() < 0.5 else np.pi) + rng.uniform(-0.05, 0.05)
            x = side * (PARKING_X + rng.uniform(-0.1, 0.1))
            things.append(_car(rng, f"parked_car_{next_id}", next_id, (x, 0.0, z), (0.0, 0.0, 0.0), heading))
            next_id += 1
    # moving cars: one shared speed per lane so cars of a lane never collide
    lanes = ((-5.25, -1.0), (-1.75, -1.0), (5.25, 1.0))
    lane_speed = [rng.uniform(0.4, 1.0) * cfg.car_speed_max for _ in lanes]
    lane_of = [int(rng.integers(len(lanes))) for _ in range(cfg.moving_cars)]
    for lane, (x, direction) in enumerate(lanes):
        count = lane_of.count(lane)
        v = lane_speed[lane]
        if direction < 0:  # oncoming: start ahead, pass by the ego camera
            low, high = z_first + 15.0, z_last + 40.0 + v * duration
        else:  # same direction: overtaking from behind or being overtaken
            low, high = z_first - 10.0 - max(0.0, v - ego_speed) * duration, z_last + 35.0
        for z in _spread(rng, count, low, high, 9.0):
            heading = 0.0 if direction > 0 else np.pi
            things.append(_car(rng, f"moving_car_{next_id}", next_id, (x + rng.uniform(-0.1, 0.1), 0.0, z),
                               (0.0, 0.0, direction * v), heading))
            next_id += 1
    # people: waiting (static), walking along the sidewalk, crossing far ahead of the ego camera
    waiting = int(round(cfg.people * cfg.waiting_people_fraction))
    for k in range(cfg.people):
        side = -1.0 if rng.random() < 0.5 else 1.0
        speed = rng.uniform(0.5, 1.0) * cfg.person_speed_max
        if k < waiting or speed == 0.0:
            start = (side * rng.uniform(9.8, 11.2), 0.0, rng.uniform(z_first + 6.0, z_last + 35.0))
            velocity = (0.0, 0.0, 0.0)
        elif rng.random() < 0.35:  # crossing: beyond where the ego camera ends, so it is never run over
            parked_z = [o.start[2] for o in things if not o.moving]
            z = max((rng.uniform(z_last + 10.0, z_last + 30.0) for _ in range(8)),  # clear of parked cars
                    key=lambda c: min((abs(c - p) for p in parked_z), default=np.inf))
            direction = -side
            start = (side * rng.uniform(3.0, 11.0), 0.0, z)
            velocity = (direction * speed, 0.0, 0.0)
        else:
            direction = -1.0 if rng.random() < 0.5 else 1.0
            start = (side * rng.uniform(9.8, 11.2), 0.0, rng.uniform(z_first + 3.0, z_last + 40.0))
            velocity = (0.0, 0.0, direction * speed)
        things.append(_person(rng, f"person_{next_id}", next_id, start, velocity))
        next_id += 1
    return things


# --------------------------------------------------------------------------- stuff
def _stuff(rng: np.random.Generator, z_first: float, z_last: float) -> SceneObject:
    """Buildings, poles and trees in world coordinates (one static object)."""
    prims: list[Primitive] = []
    begin, end = z_first - 25.0, z_last + 110.0
    for side in (-1.0, 1.0):
        z = begin
        while z < end:
            length = rng.uniform(8.0, 25.0)
            setback = rng.uniform(0.0, 3.5) if rng.random() < 0.6 else 0.0
            height = rng.uniform(6.0, 24.0)
            depth = 12.0
            x_front = SIDEWALK_OUTER_X + setback
            x_centre = side * (x_front + depth / 2)
            mat = _pick(rng, _FACADES)
            mat = Material(_jitter(rng, mat.albedo, 0.05), mat.texture_amplitude, mat.texture_wavelength, mat.pattern)
            prims.append(Primitive(BOX, (x_centre, -height / 2, z + length / 2), (depth / 2, height / 2, length / 2),
                                   BUILDING, mat))
            gap = rng.uniform(3.0, 10.0) if rng.random() < 0.35 else 0.0
            if gap > 0 and rng.random() < 0.7:  # a tree in the gap
                prims += _tree(rng, side * (SIDEWALK_OUTER_X + rng.uniform(1.5, 4.0)), z + length + gap / 2)
            z += length + gap
        z = begin + rng.uniform(0, 10)
        while z < end:
            if rng.random() < 0.55:
                height = rng.uniform(5.0, 8.0)
                prims.append(Primitive(CYLINDER, (side * 8.9, -height / 2, z), (0.08, height / 2, 0.08), POLE,
                                       Material(_jitter(rng, (0.35, 0.36, 0.37), 0.08), 0.08, 0.5)))
            else:
                prims += _tree(rng, side * 9.3, z)
            z += rng.uniform(12.0, 28.0)
    # a building row closing the street far ahead, so depth stays bounded at the horizon
    far = z_last + 120.0
    prims.append(Primitive(BOX, (0.0, -12.0, far + 6.0), (80.0, 12.0, 6.0), BUILDING,
                           Material(_jitter(rng, (0.5, 0.5, 0.52), 0.1), 0.15, 2.0, PATTERN_WINDOWS)))
    return SceneObject("stuff", 0, prims)


def _tree(rng: np.random.Generator, x: float, z: float) -> list[Primitive]:
    trunk_h = rng.uniform(2.5, 3.5)
    crown = (rng.uniform(1.3, 2.3), rng.uniform(1.4, 2.2), rng.uniform(1.3, 2.3))
    bark = Material(_jitter(rng, (0.30, 0.22, 0.15), 0.05), 0.2, 0.3)
    leaves = Material(_jitter(rng, (0.22, 0.38, 0.16), 0.07), 0.45, 0.6)
    return [
        Primitive(CYLINDER, (x, -trunk_h / 2, z), (0.15, trunk_h / 2, 0.15), VEGETATION, bark),
        Primitive(ELLIPSOID, (x, -(trunk_h + crown[1] * 0.8), z), crown, VEGETATION, leaves),
    ]


def _ground_look(rng: np.random.Generator) -> GroundLook:
    elevation = rng.uniform(0.35, 1.0)
    azimuth = rng.uniform(-np.pi, np.pi)
    sun = np.array([np.cos(elevation) * np.sin(azimuth), -np.sin(elevation), np.cos(elevation) * np.cos(azimuth)])
    overcast = rng.random() < 0.3
    return GroundLook(
        road=Material(_jitter(rng, (0.40, 0.40, 0.41), 0.05), 0.18, 0.4),
        sidewalk=Material(_jitter(rng, _pick(rng, ((0.55, 0.54, 0.52), (0.45, 0.45, 0.46), (0.62, 0.55, 0.48))),
                                  0.04), 0.12, 0.6, PATTERN_TILES),
        terrain=Material(_jitter(rng, _pick(rng, ((0.30, 0.42, 0.18), (0.42, 0.40, 0.25))), 0.05), 0.35, 0.5),
        sun=sun / np.linalg.norm(sun),
        ambient=rng.uniform(0.55, 0.75) if overcast else rng.uniform(0.35, 0.5),
        shade_side=-1.0 if rng.random() < 0.5 else 1.0,
        sky_horizon=np.array(_jitter(rng, (0.80, 0.83, 0.86) if overcast else (0.75, 0.85, 0.95), 0.04)),
        sky_zenith=np.array(_jitter(rng, (0.65, 0.67, 0.70) if overcast else (0.30, 0.50, 0.85), 0.05)),
    )


def build_scene(cfg: SynthConfig, index: int) -> SynthSceneSpec:
    """The scene of sequence ``index``, deterministic by ``(cfg.seed, index)``."""
    rng = np.random.default_rng(cfg.seed * 1000 + index)
    pos, yaw, _ = _ego_trajectory(cfg, rng)
    z_first, z_last = float(pos[0, 2]), float(pos[-1, 2])
    ego_speed = (z_last - z_first) / max((cfg.frames - 1) / cfg.fps, 1e-9)
    ground = _ground_look(rng)
    objects = [_stuff(rng, z_first, z_last)] + _things(cfg, rng, z_first, z_last, ego_speed)
    return SynthSceneSpec(f"{index:04d}", cfg.frames, cfg.fps, cfg.camera_height, pos, yaw, objects, ground)
