"""Region growing on the configured device: CPU by default, CuPy on request, never a silent switch."""

import numpy as np
import pytest

from videocups_ray.config import LabelingConfig
from videocups_ray.labeling.instances import propose_instances


def _two_blobs():
    depth = np.full((32, 48), 20.0, np.float32)
    flow = np.zeros((32, 48, 2), np.float32)
    motion = np.zeros((32, 48), np.float32)
    flow[4:14, 4:14] = (3.0, 0.0)
    flow[18:28, 30:44] = (-2.0, 1.0)
    motion[4:14, 4:14] = motion[18:28, 30:44] = 0.9
    return depth, flow, motion


def test_cpu_default_finds_both_objects():
    labels = propose_instances(*_two_blobs(), LabelingConfig(min_pixels=10))
    assert labels.dtype == np.int32 and set(np.unique(labels)) == {0, 1, 2}


def _gpu_visible() -> bool:
    try:
        import cupy
    except ImportError:
        return False
    return bool(cupy.cuda.is_available())


@pytest.mark.skipif(_gpu_visible(), reason="a GPU is visible: the error path cannot be exercised")
def test_cuda_without_gpu_is_a_clear_error():
    with pytest.raises(RuntimeError, match=r"frame 3: labeling.device='cuda'"):
        propose_instances(*_two_blobs(), LabelingConfig(min_pixels=10, device="cuda"), where="frame 3")


@pytest.mark.gpu
@pytest.mark.skipif(not _gpu_visible(), reason="no GPU (or cupy not installed)")
def test_cuda_gives_the_cpu_labels():
    cpu = propose_instances(*_two_blobs(), LabelingConfig(min_pixels=10))
    gpu = propose_instances(*_two_blobs(), LabelingConfig(min_pixels=10, device="cuda"))
    np.testing.assert_array_equal(cpu, gpu)
