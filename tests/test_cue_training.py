"""Self-supervised cue training (``videocups train-cues``): losses, windows, checkpoints that load
into the flow / depth backends, and (slow) Ray Train runs that resume after a failure."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from videocups_ray.cli import build_parser
from videocups_ray.config import Config, DepthConfig, FlowConfig, with_overrides
from videocups_ray.cues import build_flow
from videocups_ray.cues.flow import RaftFlow
from videocups_ray.cues.monodepth import MonoDepth
from videocups_ray.cues.training.build import backend_overrides, build_cue_trainer, save_backend_checkpoint
from videocups_ray.cues.training.losses import census_loss, fb_valid, warp
from videocups_ray.cues.training.windows import augment_window, dis_flows, plan_windows, read_window
from videocups_ray.data.shards import frames_to_shards
from videocups_ray.data.types import DataError
from videocups_ray.pipelines.pseudolabel import MemorySource, synth_source
from videocups_ray.pipelines.train_cues import choose_device


def tiny_cfg(h: int = 64, w: int = 128, **ct) -> Config:
    base = dict(height=h, width=w, occlusion_after=0, motion_after=0, checkpoint_every=2, log_every=1,
                batch_size=1, max_steps=4, torch_threads=1, shuffle_buffer=0, cpus_per_worker=0.5)
    base.update(ct)
    return with_overrides(Config(), synth=dict(sequences=1, frames=4, height=h, width=w, seed=3),
                          cues={"flow": {"raft_arch": "raft_tiny", "raft_iters": 2}}, cue_training=base)


@pytest.fixture(scope="module")
def synth_frames():
    return synth_source(tiny_cfg().synth)


# --------------------------------------------------------------------------- losses
def test_warp_follows_the_project_convention_and_census_ignores_brightness():
    rng = np.random.default_rng(0)
    img = torch.from_numpy(rng.random((1, 3, 24, 32)).astype(np.float32))
    shifted = torch.roll(img, shifts=2, dims=3)  # content moves 2 px right: frame t1(x + 2) = t(x)
    flow = torch.zeros(1, 2, 24, 32)
    flow[:, 0] = 2.0
    rec = warp(shifted, flow)  # out(x) = t1(x + flow(x)) reconstructs t
    assert torch.allclose(rec[..., 2:-3], img[..., 2:-3], atol=1e-5)
    same = census_loss(img, img * 0.7 + 0.1)  # census is invariant to gain and offset
    other = census_loss(img, torch.roll(img, 5, dims=2))
    assert float(same.mean()) < 0.5 * float(other.mean())


def test_fb_valid_marks_inconsistent_flow_occluded():
    fw = torch.zeros(1, 2, 16, 16)
    fw[:, 0] = 3.0
    assert bool((fb_valid(fw, -fw) == 1).all())
    assert bool((fb_valid(fw, fw) == 0).all())  # |3 + 3|^2 = 36 > 0.01 * 18 + 0.5


# --------------------------------------------------------------------------- windows
def test_windows_are_planned_read_resized_and_flipped_with_K(synth_frames):
    assert plan_windows(synth_frames, 3) == [("0000", 0), ("0000", 1)]
    assert len(plan_windows(synth_frames, 2, stride=2)) == 2
    w = read_window(synth_frames, "0000", 1, 3, 32, 64)
    K0 = synth_frames.frames("0000", 1, 2).__next__().extra["K"]
    assert w["images"].shape == (3, 32, 64, 3) and w["images"].dtype == np.uint8
    assert np.isclose(w["K"][0, 0], K0[0, 0] / 2) and np.isclose(w["K"][1, 2], K0[1, 2] / 2)
    img, K = augment_window(w["images"], w["K"], np.random.default_rng(0), flip_prob=1.0, color_jitter=0.0)
    assert np.array_equal(img, w["images"][:, :, ::-1]) and np.isclose(K[0, 2], 63 - w["K"][0, 2])
    with pytest.raises(DataError, match="0000.*outside"):
        read_window(synth_frames, "0000", 3, 3, 32, 64)


# --------------------------------------------------------------------------- loss decreases
def _steps(module, inputs: dict, n: int, lr: float) -> list[float]:
    torch.manual_seed(0)
    opt = torch.optim.Adam(module.parameters(), lr=lr)
    out = []
    for i in range(n):
        losses = module(**inputs, step=i)
        total = sum(losses.values())
        opt.zero_grad()
        total.backward()
        opt.step()
        out.append(float(total.detach()))
    return out


def test_flow_loss_decreases_on_synthdrive(synth_frames):
    torch.manual_seed(0)
    cfg = tiny_cfg(occlusion_after=100)  # no masking yet: the photometric term alone must fall
    w = read_window(synth_frames, "0000", 0, 2, 128, 128)  # RAFT needs >= 128 px sides
    module = build_cue_trainer("flow", cfg).train()
    losses = _steps(module, {"images": torch.from_numpy(w["images"])[None]}, 6, 1e-4)
    assert min(losses[-2:]) < 0.97 * losses[0], losses


def test_depth_loss_decreases_on_synthdrive(synth_frames):
    torch.manual_seed(0)
    cfg = tiny_cfg(motion_after=0)
    w = read_window(synth_frames, "0000", 0, 3, 64, 128)
    inputs = {"images": torch.from_numpy(w["images"])[None], "K": torch.from_numpy(w["K"])[None],
              "flow": torch.from_numpy(dis_flows(w["images"]))[None]}
    module = build_cue_trainer("depth", cfg).train()
    assert {"photo", "smooth", "motion", "motion_smooth", "height"} <= set(module(**inputs, step=0))
    losses = _steps(module, inputs, 6, 1e-3)
    assert min(losses[-2:]) < 0.97 * losses[0], losses


# --------------------------------------------------------------------------- checkpoints
def test_trained_checkpoints_load_into_the_backends(tmp_path, synth_frames):
    cfg = tiny_cfg()
    frames = list(synth_frames.frames("0000", 0, 2))
    flow_tr = build_cue_trainer("flow", cfg)
    path = save_backend_checkpoint(flow_tr, tmp_path / "flow.pt")
    overrides = dict(o.split("=", 1) for o in backend_overrides("flow", cfg, path))
    assert overrides["cues.flow.raft_arch"] == "raft_tiny" and overrides["cues.flow.backend"] == "raft"
    est = RaftFlow.from_config(FlowConfig(backend="raft", raft_arch="raft_tiny", raft_iters=2, checkpoint=str(path)))
    for k, v in flow_tr.net.state_dict().items():
        assert torch.equal(est.net.state_dict()[k], v), k
    big = [np.repeat(np.repeat(f.image, 2, 0), 2, 1) for f in frames]  # RAFT needs >= 128 px sides
    fr = est(np.stack(big[:1]), np.stack(big[1:]))
    assert fr.fw.shape == (1, 128, 256, 2) and np.isfinite(fr.fw).all()

    depth_tr = build_cue_trainer("depth", cfg)
    path = save_backend_checkpoint(depth_tr, tmp_path / "depth.pt")
    est = MonoDepth.from_config(DepthConfig(backend="monodepth", checkpoint=str(path)))
    for k, v in depth_tr.net.state_dict().items():
        assert torch.equal(est.net.state_dict()[k], v), k
    dr = est(np.stack([frames[0].image]))
    assert dr.depth.shape == (1, 64, 128) and (dr.depth >= 0.5).all() and (dr.depth <= 80).all()


def test_device_choice_is_explicit():
    with pytest.raises(DataError, match="no GPU"):
        choose_device("cuda", 0)
    assert choose_device("auto", 0) is False and choose_device("auto", 2) is True and choose_device("cpu", 8) is False


def test_cli_parses_train_cues():
    args = build_parser().parse_args(["train-cues", "depth", "--input", "synth:", "--out", "x", "--workers", "1,2",
                                      "--steps", "5", "--set", "cue_training.lr=0.001"])
    assert (args.cue, args.steps, args.workers, args.overrides) == ("depth", 5, "1,2", ["cue_training.lr=0.001"])


# --------------------------------------------------------------------------- Ray Train (slow)
@pytest.mark.slow
def test_train_cues_flow_resumes_after_a_failed_run(ray_session, tmp_path):
    from videocups_ray.pipelines.train_cues import run_train_cues

    cfg = tiny_cfg(128, 128, fail_after_step=2, max_failures=0, flow_net="pwc", dis_teacher_weight=1.0)
    source = synth_source(cfg.synth)
    out = tmp_path / "flow"
    with pytest.raises(Exception, match="injected failure"):
        run_train_cues(cfg, "flow", source, out, workers=1, progress=False)
    cfg = with_overrides(cfg, cue_training={"fail_after_step": None})
    summary = run_train_cues(cfg, "flow", source, out, workers=1, progress=False)
    assert summary["resumed_from"] == 2 and summary["steps"] == 4
    records = [json.loads(x) for x in (out / "flow_metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2, 3, 4]
    assert (out / "flow_loss.png").stat().st_size > 1000
    assert summary["pseudolabel_overrides"][0] == "cues.flow.backend=pwc" and summary["stopped"] == "max_steps"
    assert "loss_teacher" in records[-1]  # the DIS teacher column came through Ray Data
    build_flow(FlowConfig(backend="pwc", checkpoint=summary["checkpoint"]))


@pytest.mark.slow
def test_train_cues_depth_writes_a_monodepth_checkpoint(ray_session, tmp_path):
    from videocups_ray.pipelines.train_cues import run_train_cues

    cfg = tiny_cfg(max_steps=50, max_minutes=1e-4)  # the time budget stops it at the first logged step
    summary = run_train_cues(cfg, "depth", MemorySource(list(synth_source(cfg.synth))), tmp_path / "d",
                             progress=False)
    assert summary["steps"] == 1 and summary["stopped"] == "max_minutes" and summary["device"] == "cpu"
    est = MonoDepth.from_config(DepthConfig(backend="monodepth", checkpoint=summary["checkpoint"]))
    assert est.net is not None


def test_drop_metrics_after_keeps_what_a_resumed_run_does_not_repeat(tmp_path):
    from videocups_ray.pipelines.train_cues import drop_metrics_after

    path = tmp_path / "flow_metrics.jsonl"
    assert drop_metrics_after(path, 3) == 0  # no file yet
    path.write_text("".join(json.dumps({"step": s, "loss": 1.0}) + "\n" for s in (1, 2, 3, 4, 5)))
    assert drop_metrics_after(path, 4) == 1
    assert [json.loads(x)["step"] for x in path.read_text().splitlines()] == [1, 2, 3, 4]


@pytest.mark.slow
def test_train_cues_resumes_after_sigkill_of_the_whole_command(tmp_path):
    """SIGKILL of the `videocups train-cues flow` process group once a checkpoint exists; the
    same command then resumes from it, finishes, and logs every step once."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    from conftest import sigkill_cli_when

    root = Path(__file__).resolve().parents[1]
    out = tmp_path / "flow"
    sets = ["synth.sequences=1", "synth.frames=4", "synth.height=64", "synth.width=128", "synth.seed=3",
            "cue_training.height=64", "cue_training.width=128", "cue_training.flow_net=pwc",
            "cue_training.batch_size=1", "cue_training.checkpoint_every=2", "cue_training.log_every=1",
            "cue_training.torch_threads=1", "cue_training.cpus_per_worker=0.5", "cue_training.shuffle_buffer=0",
            "ray.num_cpus=2"]
    args = ["train-cues", "flow", "--input", "synth:", "--out", str(out), "--steps", "400", "--quiet",
            *[a for s in sets for a in ("--set", s)]]
    # SIGKILL once a checkpoint exists, letting it log a few steps past it
    sigkill_cli_when(args, lambda: bool(list((out / "cues_flow").glob("checkpoint_*/cue_train_state.pt"))),
                     tmp_path / "train.log", grace=3.0)
    assert not (out / "flow_summary.json").exists()
    logged = [json.loads(x)["step"] for x in (out / "flow_metrics.jsonl").read_text().splitlines()]
    final = max(logged) + 4
    args[args.index("--steps") + 1] = str(final)
    rerun = subprocess.run([sys.executable, "-m", "videocups_ray.cli", *args], capture_output=True, text=True,
                           timeout=600, env={**os.environ, "PYTHONPATH": str(root)})
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    summary = json.loads((out / "flow_summary.json").read_text())
    assert summary["steps"] == final and 2 <= summary["resumed_from"] < final
    assert summary["resumed_from"] % 2 == 0  # a checkpoint step
    steps = [json.loads(x)["step"] for x in (out / "flow_metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, final + 1)), steps
    build_flow(FlowConfig(backend="pwc", checkpoint=summary["checkpoint"]))


def test_shard_folders_are_an_input_of_cue_training(tmp_path, synth_frames):
    """`train-cues --input <shards>`: a shard folder opens as a source of its stored images, read
    by the same window reader; a video stored with a gap is refused by name."""
    from videocups_ray.config import ShardConfig, SynthConfig
    from videocups_ray.data.formats import detect_format
    from videocups_ray.data.inputs import MemorySource, open_input
    from videocups_ray.data.shard_source import ShardSource

    out = tmp_path / "shards"
    frames_to_shards(synth_frames, out, ShardConfig(rows_per_shard=3))  # several shards per video
    assert detect_format(str(out)) == "shards"
    src = open_input(str(out), SynthConfig())
    assert isinstance(src, ShardSource) and not src.has_labels
    assert src.videos() == synth_frames.videos()
    vid = src.videos()[0]
    assert src.num_frames(vid) == synth_frames.num_frames(vid)
    got = list(src.frames(vid, 1, 4))  # crosses a shard boundary
    want = list(synth_frames.frames(vid, 1, 4))
    assert [f.frame_index for f in got] == [f.frame_index for f in want]
    assert all(np.array_equal(g.image, w.image) for g, w in zip(got, want))
    w = read_window(src, vid, 0, 3, 64, 128)
    assert w["images"].shape == (3, 64, 128, 3)

    gappy = MemorySource([f for f in synth_frames if f.frame_index != 2], has_labels=True)
    frames_to_shards(gappy, tmp_path / "gappy", ShardConfig())
    with pytest.raises(DataError, match="not stored as consecutive frames.*frame 1 is followed by 3"):
        ShardSource(tmp_path / "gappy")
