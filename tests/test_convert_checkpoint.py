"""`videocups convert-checkpoint`: official layouts -> the files the learned backends load.

Every "official" file here is a randomly initialised network written in exactly the official
key layout, built independently of the project's modules (torchvision's own RAFT / ResNet-50,
DINO's ViT names and shapes written out by hand, Monodepth2's encoder.pth / depth.pth keys),
so a renamed key on either side fails the test.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from videocups_ray.cli import main
from videocups_ray.config import DepthConfig, FeatureConfig, FlowConfig
from videocups_ray.cues import CheckpointError
from videocups_ray.cues.convert import convert_checkpoint


def _dino_vit_state(dim: int, depth: int = 12, patch: int = 8, head: bool = False) -> dict[str, torch.Tensor]:
    """DINO's vision_transformer.VisionTransformer state dict (``*_pretrain.pth``), by hand."""
    g = torch.Generator().manual_seed(dim)
    r = lambda *s: torch.randn(*s, generator=g) * 0.02  # noqa: E731
    st = {"cls_token": r(1, 1, dim), "pos_embed": r(1, 1 + (224 // patch) ** 2, dim),
          "patch_embed.proj.weight": r(dim, 3, patch, patch), "patch_embed.proj.bias": r(dim)}
    for i in range(depth):
        b = f"blocks.{i}."
        st.update({b + "norm1.weight": 1 + r(dim), b + "norm1.bias": r(dim),
                   b + "attn.qkv.weight": r(3 * dim, dim), b + "attn.qkv.bias": r(3 * dim),
                   b + "attn.proj.weight": r(dim, dim), b + "attn.proj.bias": r(dim),
                   b + "norm2.weight": 1 + r(dim), b + "norm2.bias": r(dim),
                   b + "mlp.fc1.weight": r(4 * dim, dim), b + "mlp.fc1.bias": r(4 * dim),
                   b + "mlp.fc2.weight": r(dim, 4 * dim), b + "mlp.fc2.bias": r(dim)})
    st.update({"norm.weight": 1 + r(dim), "norm.bias": r(dim)})
    if head:  # DINO's projection head, only in the full training checkpoint
        st.update({"head.mlp.0.weight": r(2048, dim), "head.last_layer.weight_v": r(65536 // 64, 256)})
    return st


def _monodepth2_files(tmp_path, arch: str = "resnet18"):
    """Monodepth2's encoder.pth (ResnetEncoder: ``encoder.*`` + height/width/use_stereo) and
    depth.pth (DepthDecoder's ModuleList: upconv(4,0), upconv(4,1), ..., dispconv(0..3))."""
    import torchvision

    enc = {"encoder." + k: v for k, v in getattr(torchvision.models, arch)(weights=None).state_dict().items()}
    enc.update({"height": 192, "width": 640, "use_stereo": False})
    ch_enc = [64, 64, 128, 256, 512] if arch == "resnet18" else [64, 256, 512, 1024, 2048]
    ch_dec = [16, 32, 64, 128, 256]
    dec, j = {}, 0
    g = torch.Generator().manual_seed(3)
    for i in range(4, -1, -1):
        for cin in ((ch_enc[-1] if i == 4 else ch_dec[i + 1]), ch_dec[i] + (ch_enc[i - 1] if i > 0 else 0)):
            dec[f"decoder.{j}.conv.conv.weight"] = torch.randn(ch_dec[i], cin, 3, 3, generator=g) * 0.05
            dec[f"decoder.{j}.conv.conv.bias"] = torch.zeros(ch_dec[i])
            j += 1
    for s in range(4):
        dec[f"decoder.{10 + s}.conv.weight"] = torch.randn(1, ch_dec[s], 3, 3, generator=g) * 0.05
        dec[f"decoder.{10 + s}.conv.bias"] = torch.zeros(1)
    torch.save(enc, tmp_path / "encoder.pth")
    torch.save(dec, tmp_path / "depth.pth")
    return tmp_path / "encoder.pth", tmp_path / "depth.pth", dec


def test_raft_torchvision_state_dict_converts_and_loads(tmp_path):
    from torchvision.models.optical_flow import raft_small

    from videocups_ray.cues.flow import RaftFlow

    official = raft_small(weights=None).state_dict()
    torch.save(official, tmp_path / "raft_small_C_T_V2.pth")
    s = convert_checkpoint("raft", [tmp_path / "raft_small_C_T_V2.pth"], tmp_path / "raft.pt")
    assert s["arch"] == "raft_small" and s["tensors"] == len(official)
    est = RaftFlow.from_config(FlowConfig(backend="raft", checkpoint=str(tmp_path / "raft.pt")))
    for k, v in est.net.state_dict().items():
        assert torch.equal(v, official[k]), k
    bad = {k: v for k, v in official.items() if k != "update_block.flow_head.conv2.weight"}
    torch.save(bad, tmp_path / "bad.pth")
    with pytest.raises(CheckpointError, match=r"bad\.pth.*update_block\.flow_head\.conv2\.weight"):
        convert_checkpoint("raft", [tmp_path / "bad.pth"], tmp_path / "x.pt")


def test_dino_vits8_pretrain_and_full_checkpoint(tmp_path):
    official = _dino_vit_state(384)
    torch.save(official, tmp_path / "dino_vits8_pretrain.pth")
    s = convert_checkpoint("dino-vit", [tmp_path / "dino_vits8_pretrain.pth"], tmp_path / "vits8.pt")
    assert s["arch"] == "vit_small_patch8" and s["dropped"] == []
    from videocups_ray.cues.vit import DinoFeatures

    fe = DinoFeatures.from_config(FeatureConfig(backend="dino", arch="vit_small_patch8",
                                                checkpoint=str(tmp_path / "vits8.pt")))
    assert torch.equal(fe.net.state_dict()["blocks.11.mlp.fc2.weight"], official["blocks.11.mlp.fc2.weight"])
    # DINO's full training checkpoint: the teacher, "backbone." prefix, projection head dropped
    full = {"teacher": {("backbone." + k): v for k, v in _dino_vit_state(384, head=True).items()
                        if not k.startswith("head.")} | {"head.mlp.0.weight": torch.zeros(2048, 384)},
            "epoch": 800}
    torch.save(full, tmp_path / "full.pth")
    s = convert_checkpoint("dino-vit", [tmp_path / "full.pth"], tmp_path / "full.pt")
    assert s["dropped"] == ["head.mlp.0.weight"]
    del official["blocks.3.attn.qkv.bias"]
    torch.save(official, tmp_path / "missing.pth")
    with pytest.raises(CheckpointError, match=r"missing key 'blocks\.3\.attn\.qkv\.bias'"):
        convert_checkpoint("dino-vit", [tmp_path / "missing.pth"], tmp_path / "x.pt")


@pytest.mark.slow
def test_dino_vitb8_pretrain(tmp_path):
    torch.save(_dino_vit_state(768), tmp_path / "dino_vitb8_pretrain.pth")
    s = convert_checkpoint("dino-vit", [tmp_path / "dino_vitb8_pretrain.pth"], tmp_path / "vitb8.pt")
    assert s["arch"] == "vit_base_patch8" and s["parameters"] > 85_000_000


def test_dino_resnet50_loads_into_the_model_backbone(tmp_path):
    from torchvision.models import resnet50

    from videocups_ray.model.backbone import ResNetFPN, load_backbone_checkpoint

    official = {k: v for k, v in resnet50(weights=None).state_dict().items() if not k.startswith("fc.")}
    torch.save(official, tmp_path / "dino_resnet50_pretrain.pth")
    s = convert_checkpoint("dino-resnet50", [tmp_path / "dino_resnet50_pretrain.pth"], tmp_path / "r50.pt")
    assert all(k.endswith("num_batches_tracked") for k in s["dropped"]) and s["dropped"]
    body = ResNetFPN("resnet50", 64).body
    report = load_backbone_checkpoint(body, tmp_path / "r50.pt")
    assert report.missing == [] and report.unexpected == []
    assert torch.equal(body.state_dict()["layer4.2.conv3.weight"], official["layer4.2.conv3.weight"])
    del official["layer2.0.downsample.0.weight"]
    torch.save(official, tmp_path / "missing.pth")
    with pytest.raises(CheckpointError, match=r"layer2\.0\.downsample\.0\.weight"):
        convert_checkpoint("dino-resnet50", [tmp_path / "missing.pth"], tmp_path / "x.pt")


def test_monodepth2_encoder_and_depth_via_cli(tmp_path, capsys):
    from videocups_ray.cues.monodepth import MonoDepth

    enc, dep, dec = _monodepth2_files(tmp_path)
    out = tmp_path / "md2.pt"
    # Monodepth2 has no motion decoder: asking for neither is an error naming the choice
    assert main(["convert-checkpoint", "monodepth2", str(enc), str(dep), "--out", str(out)]) == 2
    assert "--no-motion" in capsys.readouterr().err
    assert main(["convert-checkpoint", "monodepth2", str(enc), str(dep), "--out", str(out), "--no-motion"]) == 0
    assert '"arch": "resnet18"' in capsys.readouterr().out
    est = MonoDepth.from_config(DepthConfig(backend="monodepth", checkpoint=str(out)))
    assert torch.equal(est.net.state_dict()["depth_decoder.decoder.12.conv.weight"], dec["decoder.12.conv.weight"])
    r = est(np.full((1, 64, 96, 3), 128, np.uint8))
    assert r.depth.shape == (1, 64, 96) and np.isfinite(r.depth).all() and r.motion_prob.max() < 1e-6
    # the same decoder file as a motion decoder: its keys land under motion_decoder.*
    s = convert_checkpoint("monodepth2", [enc, dep], out, motion_decoder=dep)
    assert s["tensors"] == len(est.net.state_dict())
    del dec["decoder.7.conv.conv.bias"]
    torch.save(dec, dep)
    assert main(["convert-checkpoint", "monodepth2", str(enc), str(dep), "--out", str(out), "--no-motion"]) == 2
    err = capsys.readouterr().err
    assert "depth.pth" in err and "depth_decoder.decoder.7.conv.conv.bias" in err
