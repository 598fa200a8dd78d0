"""The test suite itself: KITTI tests reach the sample only through the fixture, and a missing
sample fails CI instead of skipping silently (issue 17)."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import require_sample

TESTS = Path(__file__).resolve().parent


def test_missing_sample_fails_in_ci_and_skips_elsewhere(tmp_path, monkeypatch):
    missing = tmp_path / "nope"
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="nope"):
        require_sample(missing)
    monkeypatch.delenv("CI")
    with pytest.raises(pytest.skip.Exception, match="../shared/data missing"):
        require_sample(missing)
    assert require_sample(tmp_path) == tmp_path


def test_no_test_hard_codes_the_shared_sample_path():
    absolute = "/" + "/".join(("work", "shared"))  # the development machine's layout, spelled in parts
    offenders = [p.name for p in TESTS.glob("*.py") if absolute in p.read_text() and p.name != Path(__file__).name]
    assert not offenders, f"use the kitti_sample fixture instead of an absolute path: {offenders}"
