# The image the cluster files run (configs/cluster/kuberay-raycluster.yaml names it):
# CUDA runtime, Python 3.12, the pinned install of this package with its GPU and cluster extras.
#
#   docker build -t videocups-ray:0.1.0 .                 # the tag is the package version
#   docker tag videocups-ray:0.1.0 <registry>/videocups-ray:0.1.0 && docker push <registry>/videocups-ray:0.1.0
#
# torch's CUDA 13 wheels bring their own CUDA libraries (cuBLAS, cuDNN, NCCL); the base image gives
# the CUDA 13 runtime and the driver hooks of the NVIDIA container toolkit. CuPy (the `gpu` extra)
# is cupy-cuda13x to match. No weights are baked in: mount checkpoints (configs/pseudolabel/gpu.yaml
# reads /models/*.pt).
FROM nvidia/cuda:13.0.0-runtime-ubuntu24.04

ENV DEBIAN_FRONTEND=noninteractive \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONUNBUFFERED=1 \
    NUMBA_CACHE_DIR=/tmp/numba-cache \
    MPLBACKEND=Agg

# python3.12: Ubuntu 24.04's Python, inside the package's requires-python (>=3.11,<3.13).
# wget: KubeRay's default readiness/liveness probes call it. libglib2.0-0: OpenCV's runtime.
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3.12 python3.12-venv wget ca-certificates libglib2.0-0 \
 && rm -rf /var/lib/apt/lists/*

RUN python3.12 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

WORKDIR /opt/videocups-ray
COPY pyproject.toml constraints.txt README.md ./
COPY videocups_ray ./videocups_ray
# The same pins as `make install` (pyproject's exact versions + constraints.txt), not editable.
RUN pip install -c constraints.txt ".[gpu,cluster]" \
 && videocups --help > /dev/null
COPY configs ./configs

# Ray's own processes are started by `ray start` (KubeRay, the cluster launcher); no entrypoint.
CMD ["bash"]
