"""SynthDrive generation speed, ground truth included, on one core.

Claim: at least 10 frames/s at 256x512 (image, depth, panoptic, forward + backward flow
with validity, motion mask). Prints frames/s for easy and hard difficulty knobs at 256x512
and 375x1242, the ratio to the 10 fps target, and the ratio to a baseline measured in the
same run: rendering alone (no flow ground truth, no sensor model), so the table also shows
what the ground truth costs.

    .venv/bin/python benchmarks/bench_synthdrive.py [--quick]
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")  # one core, as claimed

import argparse  # noqa: E402
import time  # noqa: E402

from videocups_ray.config import SynthConfig  # noqa: E402
from videocups_ray.data.synthdrive import SynthScene  # noqa: E402

TARGET_FPS = 10.0
EASY = dict(noise_std=0.0, exposure_jitter=0.0, parked_cars=3, moving_cars=2, people=2, speed_max=8.0,
            car_speed_max=10.0)
HARD = dict(noise_std=6.0, exposure_jitter=0.15, parked_cars=12, moving_cars=10, people=12, speed_max=16.0,
            car_speed_max=20.0, yaw_amplitude=0.06)


def _time_full(cfg: SynthConfig) -> float:
    """Frames/s of the complete generator (all ground truth)."""
    start, n = time.perf_counter(), 0
    for s in range(cfg.sequences):
        for _ in SynthScene(cfg, s).frames():
            n += 1
    return n / (time.perf_counter() - start)


def _time_render_only(cfg: SynthConfig) -> float:
    """Frames/s of ray casting and shading alone (the baseline)."""
    start, n = time.perf_counter(), 0
    for s in range(cfg.sequences):
        scene = SynthScene(cfg, s)
        for t in range(cfg.frames):
            scene.render(t)
            n += 1
    return n / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="6 frames x 1 sequence per setting")
    args = parser.parse_args()
    frames, sequences = (6, 1) if args.quick else (30, 2)
    print(f"load average before: {os.getloadavg()}")
    print(f"{'resolution':>10} {'knobs':>5} {'render-only fps':>16} {'full fps':>9} "
          f"{'full/render':>11} {'full/10fps':>10}")
    for height, width in ((256, 512), (375, 1242)):
        for name, knobs in (("easy", EASY), ("hard", HARD)):
            cfg = SynthConfig(height=height, width=width, frames=frames, sequences=sequences, **knobs)
            _time_full(cfg.model_copy(update={"frames": 2, "sequences": 1}))  # warm caches
            base = _time_render_only(cfg)
            full = _time_full(cfg)
            print(f"{height:>4}x{width:<5} {name:>5} {base:>16.1f} {full:>9.1f} {full / base:>11.2f} "
                  f"{full / TARGET_FPS:>10.2f}")
    print(f"load average after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
