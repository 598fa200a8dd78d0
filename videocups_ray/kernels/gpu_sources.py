"""CUDA C sources of the CuPy kernels, kept free of any CuPy import so that a test can
compile-check them with NVRTC (through CuPy, or libnvrtc directly) on a machine without a GPU.

Float arithmetic mirrors ``reference.py`` step for step in float32; ``--fmad=false`` stops
NVRTC from fusing ``a*b + c`` into one FMA, which rounds once instead of twice.
"""

from __future__ import annotations

import numpy as np

NVRTC_OPTIONS = ("--std=c++14", "--fmad=false")

_COMMON = r"""
__device__ __forceinline__ int uf_find(const int* parent, int x) {
    // parent[x] <= x always; concurrent writers only ever lower it, so this terminates
    int p = ((volatile const int*)parent)[x];
    while (p != x) {
        x = p;
        p = ((volatile const int*)parent)[x];
    }
    return x;
}

// Bilinear sample of channel-last float32 values at (py, px); false when out of frame.
__device__ __forceinline__ bool bilinear_at(const float* values, int h, int w, int c,
                                            float py, float px, float* out) {
    if (!(py >= 0.0f && py <= (float)(h - 1) && px >= 0.0f && px <= (float)(w - 1))) {
        for (int k = 0; k < c; ++k) out[k] = 0.0f;
        return false;
    }
    float y0f = floorf(py), x0f = floorf(px);
    float ay = py - y0f, ax = px - x0f;
    float by = 1.0f - ay, bx = 1.0f - ax;
    long long y0 = (long long)y0f, x0 = (long long)x0f;
    long long y1 = min(y0 + 1, (long long)(h - 1)), x1 = min(x0 + 1, (long long)(w - 1));
    for (int k = 0; k < c; ++k) {
        float top = bx * values[(y0 * w + x0) * c + k] + ax * values[(y0 * w + x1) * c + k];
        float bot = bx * values[(y1 * w + x0) * c + k] + ax * values[(y1 * w + x1) * c + k];
        out[k] = by * top + ay * bot;
    }
    return true;
}
"""

_REGION_SRC = (
    _COMMON
    + r"""
__device__ __forceinline__ void uf_unite(int* parent, int a, int b) {
    while (true) {
        a = uf_find(parent, a);
        b = uf_find(parent, b);
        if (a == b) return;
        if (a > b) { int t = a; a = b; b = t; }
        int old = atomicMin(&parent[b], a);
        if (old == b) return;      // b was a root and now hangs under a
        b = old;                   // b was re-linked meanwhile: unite a with its new parent
    }
}

extern "C" __global__ void rg_init(const float* d, const float* u, const float* v, const float* m,
                                   float alpha, float tau_d, float tau_f2, long long n,
                                   float* thr_d, float* thr_f, unsigned char* seed, int* parent) {
    long long p = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (p >= n) return;
    thr_d[p] = tau_d * fabsf(d[p]);
    thr_f[p] = tau_f2 * (u[p] * u[p] + v[p] * v[p]);
    seed[p] = m[p] > alpha;
    parent[p] = (int)p;
}

extern "C" __global__ void rg_union(const float* d, const float* u, const float* v,
                                    const float* thr_d, const float* thr_f,
                                    const unsigned char* seed, int* parent,
                                    int h, int w, int radius) {
    long long p = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (p >= (long long)h * w || !seed[p]) return;
    int i = (int)(p / w), j = (int)(p % w);
    float dp = d[p], up = u[p], vp = v[p], tdp = thr_d[p], tfp = thr_f[p];
    int i_last = min(i + radius, h - 1);
    for (int i2 = i; i2 <= i_last; ++i2) {
        int j_lo = (i2 == i) ? j + 1 : max(j - radius, 0);
        int j_hi = min(j + radius, w - 1);
        for (int j2 = j_lo; j2 <= j_hi; ++j2) {
            long long q = (long long)i2 * w + j2;
            if (!seed[q]) continue;
            float ad = fabsf(dp - d[q]);
            float du = up - u[q], dv = vp - v[q];
            float df = du * du + dv * dv;
            bool edge = (ad < tdp && df < tfp) || (ad < thr_d[q] && df < thr_f[q]);
            if (edge) uf_unite(parent, (int)p, (int)q);
        }
    }
}

extern "C" __global__ void rg_flatten(const unsigned char* seed, int* parent, int* size, long long n) {
    long long p = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (p >= n || !seed[p]) return;
    int r = uf_find(parent, (int)p);
    parent[p] = r;
    atomicAdd(&size[r], 1);
}
"""
)

_OCCLUSION_SRC = (
    _COMMON
    + r"""
extern "C" __global__ void occlusion_fb(const float* fw, const float* bw, float alpha1, float alpha2,
                                        int h, int w, bool* occ) {
    long long p = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (p >= (long long)h * w) return;
    int i = (int)(p / w), j = (int)(p % w);
    float fu = fw[2 * p], fv = fw[2 * p + 1];
    float b[2];
    if (!bilinear_at(bw, h, w, 2, (float)i + fv, (float)j + fu, b)) { occ[p] = true; return; }
    float su = fu + b[0], sv = fv + b[1];
    float lhs = su * su + sv * sv;
    float rhs = alpha1 * ((fu * fu + fv * fv) + (b[0] * b[0] + b[1] * b[1])) + alpha2;
    occ[p] = !(lhs < rhs);
}

extern "C" __global__ void warp_probs(const float* probs, const float* flow, const bool* occ,
                                      bool use_occ, float fill, int h, int w, int c, float* out) {
    long long p = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (p >= (long long)h * w) return;
    int i = (int)(p / w), j = (int)(p % w);
    float* o = out + p * c;
    bool ok = bilinear_at(probs, h, w, c, (float)i + flow[2 * p + 1], (float)j + flow[2 * p], o);
    if (!ok || (use_occ && occ[p])) for (int k = 0; k < c; ++k) o[k] = fill;
}
"""
)

# nearest-neighbour warp, instantiated per label type (LABEL_T is substituted)
_WARP_LABELS_TEMPLATE = r"""
extern "C" __global__ void warp_labels(const LABEL_T* labels, const float* flow, const bool* occ,
                                       bool use_occ, LABEL_T fill, int h, int w, LABEL_T* out) {
    long long p = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (p >= (long long)h * w) return;
    int i = (int)(p / w), j = (int)(p % w);
    float rr = floorf((float)i + flow[2 * p + 1] + 0.5f);
    float cc = floorf((float)j + flow[2 * p] + 0.5f);
    bool ok = rr >= 0.0f && rr < (float)h && cc >= 0.0f && cc < (float)w;
    if (use_occ && occ[p]) ok = false;
    out[p] = ok ? labels[(long long)rr * w + (long long)cc] : fill;
}
"""

LABEL_CTYPES = {
    np.dtype(np.uint8): "unsigned char",
    np.dtype(np.int8): "signed char",
    np.dtype(np.uint16): "unsigned short",
    np.dtype(np.int16): "short",
    np.dtype(np.uint32): "unsigned int",
    np.dtype(np.int32): "int",
    np.dtype(np.uint64): "unsigned long long",
    np.dtype(np.int64): "long long",
}


def warp_labels_source(ctype: str) -> str:
    """The nearest-neighbour warp kernel source for one C label type."""
    return _WARP_LABELS_TEMPLATE.replace("LABEL_T", ctype)


KERNEL_SOURCES: dict[str, str] = {
    "region": _REGION_SRC,
    "occlusion_warp_probs": _OCCLUSION_SRC,
    **{f"warp_labels_{dt.name}": warp_labels_source(ct) for dt, ct in LABEL_CTYPES.items()},
}
