"""benchmarks/gpu_check.py: the dry run (tiny shapes, CPU) runs in the default suite without
Ray and pydantic, exactly as the GPU machine will run the real one; without a GPU the real
check is an error, not a CPU fallback (issue 17)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from videocups_ray import config as C
from videocups_ray.config_plain import plain_section

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_check.py"
# The GPU machine has neither Ray nor pydantic: make both unimportable in the child.
_NO_RAY_NO_PYDANTIC = ("import sys, runpy; sys.modules['pydantic'] = None; sys.modules['ray'] = None; "
                       "sys.argv = ['gpu_check.py', *sys.argv[1:]]; "
                       "runpy.run_path({script!r}, run_name='__main__')")


def _run(*args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT), CUDA_VISIBLE_DEVICES="")
    code = _NO_RAY_NO_PYDANTIC.format(script=str(SCRIPT))
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, env=env,
                          timeout=timeout, cwd=ROOT)


def _plain(v):
    return {k: _plain(x) for k, x in vars(v).items()} if type(v).__name__ == "SimpleNamespace" else v


@pytest.mark.parametrize("name", ["Config", "LabelingConfig", "ModelConfig", "TrainConfig", "RayConfig"])
def test_plain_sections_equal_pydantic_defaults(name):
    assert _plain(plain_section(name)) == getattr(C, name)().model_dump()


def test_plain_section_rejects_unknown_override():
    assert plain_section("LabelingConfig", device="cuda").device == "cuda"
    with pytest.raises(KeyError, match="tau_x"):
        plain_section("LabelingConfig", tau_x=1)


def test_gpu_check_dry_run_without_ray_and_pydantic(tmp_path):
    out = tmp_path / "gpu_check.md"
    proc = _run("--dry-run", "--out", str(out))
    assert proc.returncode == 0, proc.stderr[-4000:] + proc.stdout[-2000:]
    text = out.read_text()
    data = json.loads(out.with_suffix(".json").read_text())
    assert data["dry_run"] and data["failures"] == 0
    assert text.startswith("GPU check (DRY RUN") and "| section | item |" in text
    sections = {r["section"] for r in data["rows"]}
    assert sections == {"kernel tests", "kernels", "cues", "tracker", "training"}
    items = " ".join(r["item"] for r in data["rows"])
    for needle in ("region_grow", "warp_labels", "warp_probs", "occlusion_mask", "iou_matrix", "majority_vote3",
                   "RAFT small", "DINO ViT-S/8", "Monodepth2", "proposals + tracking", "VPS model step"):
        assert needle in items
    equal = [r for r in data["rows"] if r["item"].endswith(" equal")]
    assert len(equal) == 12 and all(r["value"] == "equal" for r in equal)


def test_gpu_check_without_gpu_is_an_error(tmp_path):
    proc = _run("--out", str(tmp_path / "x.md"), timeout=300)
    assert proc.returncode == 2
    assert "no CUDA GPU" in proc.stderr and "--dry-run" in proc.stderr
    assert not (tmp_path / "x.md").exists()
