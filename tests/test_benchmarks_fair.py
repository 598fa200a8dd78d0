"""Benchmarks compare like with like (issue 17): the baseline is timed the same way as the
implementation it is compared with."""

from __future__ import annotations

import importlib.util
import sys
from collections import Counter
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


def _load(name: str):
    sys.path.insert(0, str(BENCH))
    try:
        spec = importlib.util.spec_from_file_location(name, BENCH / f"{name}.py")
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        return mod
    finally:
        sys.path.remove(str(BENCH))


def test_bench_kernels_times_reference_and_numba_alike(monkeypatch, capsys):
    bk = _load("bench_kernels")
    calls: Counter = Counter()
    real_ref, real_fast = bk.R.region_grow, bk.K.region_grow

    def ref(*a, **kw):
        calls["reference"] += 1
        return real_ref(*a, **kw)

    def fast(*a, **kw):
        calls["numba"] += 1
        return real_fast(*a, **kw)
    monkeypatch.setattr(bk.R, "region_grow", ref)
    monkeypatch.setattr(bk.K, "region_grow", fast)
    bk.bench_region_grow([(24, 48)], repeats=3, gpu=False)
    # 3 scene kinds; numba runs at 1 and 2 threads: per kind and thread count, 1 warm-up + 3 timed
    assert calls["reference"] == 3 * (1 + 3)
    assert calls["numba"] == 3 * 2 * (1 + 3)
    assert "region_grow/typical" in capsys.readouterr().out
