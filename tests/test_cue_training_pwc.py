"""PWC-tiny, the small flow network ``train-cues flow`` trains on CPUs: its cost volume peaks at
a known shift, its loss (UFlow terms + the DIS proxy teacher) falls on SynthDrive, and its checkpoint loads
into the ``pwc`` flow backend unchanged."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from videocups_ray.config import Config, FlowConfig, with_overrides
from videocups_ray.cues import build_flow
from videocups_ray.cues.flow import PwcFlow, flow_net_predictions
from videocups_ray.cues.pwc import PwcTiny, local_correlation
from videocups_ray.cues.training.build import backend_overrides, build_cue_trainer, save_backend_checkpoint
from videocups_ray.cues.training.windows import dis_pair_flows, read_window
from videocups_ray.data.inputs import synth_source
from videocups_ray.data.types import DataError


def pwc_cfg(**ct) -> Config:
    base = dict(height=64, width=128, flow_net="pwc", occlusion_after=100, batch_size=1, dis_teacher_weight=1.0)
    base.update(ct)
    return with_overrides(Config(), synth=dict(sequences=1, frames=3, height=64, width=128, seed=3), cue_training=base)


def test_local_correlation_peaks_at_the_true_offset():
    torch.manual_seed(0)
    f1 = torch.nn.functional.normalize(torch.randn(1, 8, 12, 16), dim=1)  # unit vectors: max at the match
    f2 = torch.roll(f1, shifts=(1, 2), dims=(2, 3))  # f2(x + (2, 1)) = f1(x)
    corr = local_correlation(f1, f2, 3)  # offsets row-major, dy outer: (dy=1, dx=2) -> (1+3)*7 + (2+3)
    assert int(corr[0, :, 4:-4, 4:-4].argmax(0).unique().item()) == 4 * 7 + 5


def test_pwc_predictions_are_full_size_coarse_to_fine_and_guard_their_input():
    net = PwcTiny()
    a, b = torch.rand(2, 3, 40, 72) * 2 - 1, torch.rand(2, 3, 40, 72) * 2 - 1
    preds = flow_net_predictions(net, a, b, iters=1)  # padded to x16 and cropped back
    assert len(preds) == 4 and all(p.shape == (2, 2, 40, 72) for p in preds)
    with pytest.raises(ValueError, match="multiple of 16"):
        net(a, b)


def test_pwc_loss_decreases_and_checkpoint_loads_into_the_pwc_backend(tmp_path):
    torch.manual_seed(0)
    cfg = pwc_cfg()
    source = synth_source(cfg.synth)
    w = read_window(source, "0000", 0, 2, 64, 128)
    module = build_cue_trainer("flow", cfg).train()
    assert isinstance(module.net, PwcTiny)
    teacher = torch.from_numpy(dis_pair_flows(w["images"]))[None]
    with pytest.raises(ValueError, match="no 'teacher'"):
        module(torch.from_numpy(w["images"])[None])
    opt = torch.optim.Adam(module.parameters(), lr=1e-3)
    losses = []
    for i in range(8):
        total = sum(module(torch.from_numpy(w["images"])[None], step=i, teacher=teacher).values())
        opt.zero_grad()
        total.backward()
        opt.step()
        losses.append(float(total.detach()))
    assert min(losses[-2:]) < 0.97 * losses[0], losses

    path = save_backend_checkpoint(module, tmp_path / "flow.pt")
    overrides = dict(o.split("=", 1) for o in backend_overrides("flow", cfg, path))
    assert overrides == {"cues.flow.backend": "pwc", "cues.flow.checkpoint": str(path)}
    est = build_flow(FlowConfig(backend="pwc", checkpoint=str(path)))
    assert isinstance(est, PwcFlow)
    for k, v in module.net.state_dict().items():
        assert torch.equal(est.net.state_dict()[k], v), k
    frames = list(source.frames("0000", 0, 2))
    fr = est([frames[0]], [frames[1]])
    assert fr.fw.shape == (1, 64, 128, 2) and np.isfinite(fr.fw).all() and fr.occlusion.shape == (1, 64, 128)
    with pytest.raises(DataError, match="pwc flow.*too small"):
        est(np.zeros((1, 16, 64, 3), np.uint8), np.zeros((1, 16, 64, 3), np.uint8))


def test_augment_step_adds_the_dis_teacher_only_when_asked():
    from videocups_ray.pipelines.train_cues import MODEL_INPUTS, augment_windows

    source = synth_source(pwc_cfg().synth)
    w = read_window(source, "0000", 0, 2, 64, 128)
    batch = {"images": w["images"][None], "K": w["K"][None]}
    kw = dict(task="flow", flip_prob=0.0, color_jitter=0.0, dis_preset="medium")
    with_teacher = augment_windows(batch, teacher=True, **kw)
    assert with_teacher["teacher"].shape == (1, 2, 64, 128, 2) and "teacher" in MODEL_INPUTS["flow"]
    assert np.array_equal(with_teacher["teacher"][0], dis_pair_flows(w["images"]))
    assert "teacher" not in augment_windows(batch, **kw)


def test_pwc_coarse_levels_start_flat_and_bad_sharpness_is_refused():
    torch.manual_seed(0)
    net = PwcTiny()
    assert torch.allclose(net.log_beta.exp(), torch.tensor([10.0, 10.0, 1.0, 1.0]))
    # a flat softmax at the coarse levels keeps a fresh network's coarse flow small on unrelated images
    a, b = torch.rand(1, 3, 64, 128) * 2 - 1, torch.rand(1, 3, 64, 128) * 2 - 1
    with torch.no_grad():
        coarse = net(a, b)[0]
    sharp = PwcTiny(init_sharpness=(10.0, 10.0, 10.0, 10.0))
    sharp.load_state_dict({**net.state_dict(), "log_beta": sharp.log_beta.data})
    with torch.no_grad():
        assert coarse.abs().mean() < sharp(a, b)[0].abs().mean()
    with pytest.raises(ValueError, match="init_sharpness"):
        PwcTiny(init_sharpness=(1.0, 1.0))
    with pytest.raises(ValueError, match="sharpness > 0"):
        PwcTiny(init_sharpness=(1.0, 1.0, 0.0, 1.0))
