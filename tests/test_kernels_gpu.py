"""CuPy kernels: compile-check every CUDA source with NVRTC (no GPU needed), and on a GPU
check CuPy == numpy reference exactly for all five operations."""

from __future__ import annotations

import ctypes
import importlib.util
from pathlib import Path

import numpy as np
import pytest

from videocups_ray import kernels as K
from videocups_ray.kernels import reference as R
from videocups_ray.kernels.gpu_sources import KERNEL_SOURCES, NVRTC_OPTIONS

HAVE_CUPY = importlib.util.find_spec("cupy") is not None


def _gpu_available() -> bool:
    if not HAVE_CUPY:
        return False
    import cupy

    return bool(cupy.cuda.is_available())


needs_cupy = pytest.mark.skipif(not HAVE_CUPY, reason="cupy not installed")
needs_gpu = pytest.mark.skipif(not _gpu_available(), reason="no GPU (or cupy not installed)")


@needs_cupy
@pytest.mark.parametrize("key", sorted(KERNEL_SOURCES))
def test_sources_compile_with_cupy_nvrtc(key):
    from cupy.cuda import nvrtc

    prog = nvrtc.createProgram(KERNEL_SOURCES[key], f"{key}.cu", [], [])
    try:
        nvrtc.compileProgram(prog, list(NVRTC_OPTIONS))
        assert nvrtc.getPTX(prog)
    except nvrtc.NVRTCError as exc:
        pytest.fail(f"{key}: {exc}\n{nvrtc.getProgramLog(prog)}")
    finally:
        nvrtc.destroyProgram(prog)


def _find_libnvrtc() -> Path | None:
    """libnvrtc shipped by the nvidia-* wheels that torch's CUDA build installs."""
    spec = importlib.util.find_spec("nvidia")
    for root in spec.submodule_search_locations if spec else []:
        hits = sorted(p for p in Path(root).glob("*/lib/libnvrtc.so*") if "alt" not in p.name and "builtins" not in p.name)
        if hits:
            return hits[0]
    return None


LIBNVRTC = _find_libnvrtc()


@pytest.mark.skipif(LIBNVRTC is None, reason="libnvrtc not found (no nvidia-cuda-nvrtc wheel)")
@pytest.mark.parametrize("key", sorted(KERNEL_SOURCES))
def test_sources_compile_with_libnvrtc(key):
    """Same check through ctypes, so the CUDA sources are compiled in CI even without CuPy."""
    for builtins in sorted(LIBNVRTC.parent.glob("libnvrtc-builtins.so*")):
        if "alt" not in builtins.name:  # nvrtc dlopens it by soname: load it first, globally
            ctypes.CDLL(str(builtins), mode=ctypes.RTLD_GLOBAL)
    lib = ctypes.CDLL(str(LIBNVRTC))
    prog = ctypes.c_void_p()
    src = KERNEL_SOURCES[key].encode()
    assert lib.nvrtcCreateProgram(ctypes.byref(prog), src, f"{key}.cu".encode(), 0, None, None) == 0
    opts = (ctypes.c_char_p * len(NVRTC_OPTIONS))(*[o.encode() for o in NVRTC_OPTIONS])
    rc = lib.nvrtcCompileProgram(prog, len(NVRTC_OPTIONS), opts)
    size = ctypes.c_size_t()
    lib.nvrtcGetProgramLogSize(prog, ctypes.byref(size))
    log = ctypes.create_string_buffer(size.value)
    lib.nvrtcGetProgramLog(prog, log)
    ptx_size = ctypes.c_size_t()
    lib.nvrtcGetPTXSize(prog, ctypes.byref(ptx_size))
    lib.nvrtcDestroyProgram(ctypes.byref(prog))
    assert rc == 0, f"{key} failed to compile:\n{log.value.decode(errors='replace')}"
    assert ptx_size.value > 100


# --------------------------------------------------------------------------- on a GPU
def _cues(seed: int, h: int, w: int, all_seeds: bool):
    from test_kernels import make_cues

    return make_cues(seed, h, w, all_seeds=all_seeds)


@needs_gpu
@pytest.mark.gpu
@pytest.mark.parametrize("seed", range(12))
@pytest.mark.parametrize("radius", [1, 8, 14])
def test_region_grow_cupy_matches_reference(seed, radius):
    import cupy as cp

    h, w = [(0, 4), (1, 1), (23, 29), (64, 96)][seed % 4]
    depth, flow, motion = _cues(seed, h, w, all_seeds=seed % 3 == 0)
    kw = dict(alpha=0.15, radius=radius, tau_d=0.02, tau_f=0.04, min_pixels=1 + seed % 5)
    got = K.region_grow(cp.asarray(depth), cp.asarray(flow), cp.asarray(motion), **kw)
    assert isinstance(got, cp.ndarray)
    np.testing.assert_array_equal(cp.asnumpy(got), R.region_grow(depth, flow, motion, **kw))


@needs_gpu
@pytest.mark.gpu
@pytest.mark.parametrize("seed", range(6))
def test_warps_occlusion_iou_vote_cupy_match_reference(seed):
    import cupy as cp

    rng = np.random.default_rng(seed)
    h, w = 37, 53
    flow = (rng.standard_normal((h, w, 2)) * 6).astype(np.float32)
    flow.reshape(-1, 2)[rng.integers(0, h * w, 40)] = np.nan
    bw = -flow + (rng.standard_normal((h, w, 2)) * 0.7).astype(np.float32)
    occ = rng.random((h, w)) < 0.2
    labels = rng.integers(0, 9, (h, w)).astype(np.int32)
    probs = rng.random((h, w, 3)).astype(np.float32)
    g = cp.asarray
    np.testing.assert_array_equal(K.warp_labels(g(labels), g(flow), g(occ)).get(), R.warp_labels(labels, flow, occ, 0))
    np.testing.assert_array_equal(K.warp_probs(g(probs), g(flow), g(occ)).get(), R.warp_probs(probs, flow, occ, 0.0))
    np.testing.assert_array_equal(K.occlusion_mask(g(flow), g(bw)).get(), R.occlusion_mask(flow, bw, 0.01, 0.5))
    other = rng.integers(0, 6, (h, w)).astype(np.int32)
    for got, want in zip(K.iou_matrix(g(labels), g(other), g(~occ)), R.iou_matrix(labels, other, ~occ)):
        np.testing.assert_array_equal(got.get(), want)
    maps = [rng.choice(np.array([0, 1, 255], np.uint8), (h, w)) for _ in range(3)]
    np.testing.assert_array_equal(K.majority_vote3(*map(g, maps)).get(), R.majority_vote3(*maps, 255))
