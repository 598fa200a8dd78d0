from pathlib import Path

import pytest

from videocups_ray.config import Config, ConfigError, load_config, parse_override, with_overrides

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def test_defaults_are_the_paper_values():
    c = Config()
    assert (c.labeling.alpha, c.labeling.radius, c.labeling.tau_d, c.labeling.tau_f) == (0.15, 8, 0.02, 0.04)
    assert (c.labeling.tau_m, c.labeling.num_clusters, c.labeling.psi, c.labeling.clip_length) == (0.4, 27, 0.01, 30)
    assert c.train.lr == 2e-5 and c.train.drop_loss_iou == 0.5 and c.model.cascade_ious == (0.5, 0.6, 0.7)


def test_dotted_override_parses_yaml_values():
    c = load_config(overrides=["labeling.tau_m=0.5", "eval.things=[11, 13, 12]", "ray.address=auto"])
    assert c.labeling.tau_m == 0.5 and c.eval.things == (11, 13, 12) and c.ray.address == "auto"


def test_unknown_key_names_the_key():
    with pytest.raises(ConfigError, match="labeling.tau_x"):
        load_config(overrides=["labeling.tau_x=0.5"])
    with pytest.raises(ConfigError, match="nosuchsection"):
        load_config(overrides=["nosuchsection.a=1"])


def test_wrong_type_names_the_key():
    with pytest.raises(ConfigError, match=r"labeling\.tau_m"):
        load_config(overrides=["labeling.tau_m=abc"])
    with pytest.raises(ConfigError, match=r"labeling\.radius"):
        load_config(overrides=["labeling.radius=0"])


def test_yaml_file_errors_name_file_and_key(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("labeling:\n  tau_mm: 0.3\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml[\s\S]*labeling\.tau_mm"):
        load_config([bad])
    with pytest.raises(ConfigError, match="not found"):
        load_config([tmp_path / "missing.yaml"])
    with pytest.raises(ConfigError, match="override"):
        parse_override("labeling.tau_m")


def test_files_then_overrides_in_order(tmp_path):
    a = tmp_path / "a.yaml"
    a.write_text("labeling:\n  tau_m: 0.3\n  alpha: 0.2\n")
    b = tmp_path / "b.yaml"
    b.write_text("labeling:\n  tau_m: 0.35\n")
    c = load_config([a, b], ["labeling.alpha=0.25"])
    assert c.labeling.tau_m == 0.35 and c.labeling.alpha == 0.25


def test_hash_changes_with_config():
    assert Config().hash() == Config().hash()
    assert with_overrides(Config(), labeling={"tau_m": 0.5}).hash() != Config().hash()


# configs/cluster/ holds Ray launcher and KubeRay files, not videocups configs.
SHIPPED = sorted(p for p in CONFIGS.rglob("*.yaml") if "cluster" not in p.parts)


def test_there_are_shipped_configs():
    assert len(SHIPPED) >= 3


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: str(p.relative_to(CONFIGS)))
def test_shipped_configs_validate(path):
    load_config([path])
