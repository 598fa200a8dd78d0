"""The cluster files work as shipped: Ray's own launcher validator, the RayCluster CRD schema,
the Dockerfile they name, and actor placement; each check is shown to reject a broken file."""

from __future__ import annotations

import copy
import re
import tomllib
from pathlib import Path

import pytest
import yaml

from videocups_ray.cli import main
from videocups_ray.config import load_config
from videocups_ray.pipelines.cluster_files import (
    ClusterFileError,
    check_cluster_file,
    check_launcher_config,
    check_raycluster,
    image_tag,
    unplaceable_actors,
)

ROOT = Path(__file__).resolve().parents[1]
CLUSTER_FILES = sorted((ROOT / "configs" / "cluster").glob("*.yaml"))
AWS = ROOT / "configs" / "cluster" / "aws-gpu.yaml"
KUBERAY = ROOT / "configs" / "cluster" / "kuberay-raycluster.yaml"


def test_the_shipped_cluster_files_are_the_two_checked_here():
    assert {p.name for p in CLUSTER_FILES} == {"aws-gpu.yaml", "kuberay-raycluster.yaml"}


@pytest.mark.parametrize("path", CLUSTER_FILES, ids=lambda p: p.name)
def test_every_shipped_cluster_file_passes_and_hosts_the_gpu_pipeline(path):
    groups = check_cluster_file(path, image=image_tag())
    gpu_groups = [g for g in groups if g.gpus >= 1]
    assert gpu_groups and all(g.min_workers == 0 and g.max_workers >= 1 for g in gpu_groups)
    head = next(g for g in groups if g.head)
    assert head.cpus == 0  # the head runs the driver and the GCS, no work
    assert unplaceable_actors(groups, load_config([ROOT / "configs/pseudolabel/gpu.yaml"]).ray) == []


def test_ray_validator_rejects_a_node_type_without_resources():
    """The failure aws-gpu.yaml shipped with: Ray's schema requires `resources` per node type."""
    doc = yaml.safe_load(AWS.read_text())
    del doc["available_node_types"]["cpu_worker"]["resources"]
    with pytest.raises(ClusterFileError, match="'resources' is a required property"):
        check_launcher_config(doc, "broken.yaml")
    doc = yaml.safe_load(AWS.read_text())
    doc["head_node_type"] = "nope"
    with pytest.raises(ClusterFileError, match="head_node_type"):
        check_launcher_config(doc, "broken.yaml")


@pytest.mark.parametrize("mutate, message", [
    (lambda d: d["spec"]["headGroupSpec"]["rayStartParams"].update({"num-cpus": 0}), "is not of type 'string'"),
    (lambda d: d["spec"]["workerGroupSpecs"][0].update({"maxReplica": 4}), "maxReplica"),
    (lambda d: d["spec"]["workerGroupSpecs"][0].pop("minReplicas"), "'minReplicas' is a required property"),
    (lambda d: d["spec"]["autoscalerOptions"].update({"upscalingMode": "Fast"}), "'Fast' is not one of"),
    (lambda d: d["spec"]["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]["resources"]["limits"]
     .update({"memory": "48 GiB"}), "48 GiB"),
    (lambda d: d["spec"]["workerGroupSpecs"][0].update({"minReplicas": 5, "replicas": 1}), "minReplicas \\(5\\)"),
    (lambda d: d["spec"]["workerGroupSpecs"][1].update({"groupName": "gpu"}), "groupName repeats"),
    (lambda d: d["spec"]["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]
     .update({"image": "rayproject/ray:2.60.0"}), "not the one the Dockerfile builds"),
])
def test_raycluster_check_rejects_broken_manifests(mutate, message):
    doc = yaml.safe_load(KUBERAY.read_text())
    check_raycluster(copy.deepcopy(doc), "ok.yaml", image=image_tag())
    mutate(doc)
    with pytest.raises(ClusterFileError, match=message):
        check_raycluster(doc, "broken.yaml", image=image_tag())


def test_a_registry_prefix_is_the_same_image():
    doc = yaml.safe_load(KUBERAY.read_text())
    for c in doc["spec"]["headGroupSpec"]["template"]["spec"]["containers"]:
        c["image"] = f"registry.example.com/team/{image_tag()}"
    check_raycluster(doc, "pushed.yaml", image=image_tag())


def test_an_actor_no_node_can_host_is_named():
    groups = check_cluster_file(KUBERAY)
    cfg = load_config(overrides=["ray.features.num_gpus=2"])
    (problem,) = unplaceable_actors(groups, cfg.ray)
    assert problem.startswith("ray.features asks for 0.5 CPU / 2.0 GPU")


def test_pools_larger_than_the_gpu_groups_at_max_workers_are_named():
    groups = check_cluster_file(KUBERAY)  # 16 one-GPU nodes at most
    assert not unplaceable_actors(groups, load_config([str(ROOT / "configs/pseudolabel/gpu.yaml")]).ray)
    cfg = load_config([str(ROOT / "configs/pseudolabel/gpu.yaml")], ["ray.flow.max_replicas=64"])
    (problem,) = unplaceable_actors(groups, cfg.ray)
    assert problem.startswith("the actor pools at their largest need 24.2 GPUs (flow 64 x 0.25,"), problem
    assert problem.endswith("more than the cluster's 16 at max_workers")


def test_dockerfile_builds_the_image_the_manifest_names():
    """Static checks (no Docker daemon here): CUDA base, a Python the package accepts, the pinned
    install, files it copies exist, the tag it documents is the manifest's image, KubeRay's probe tool."""
    text = (ROOT / "Dockerfile").read_text()
    base = re.search(r"^FROM (\S+)", text, re.M).group(1)
    assert base.startswith("nvidia/cuda:13."), base  # torch==2.14.1 here is the CUDA 13 build
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["requires-python"] == ">=3.11,<3.13"
    assert re.search(r"python3\.1[12] -m venv", text)
    assert 'pip install -c constraints.txt ".[gpu,cluster]"' in text
    for line in re.findall(r"^COPY (.+)$", text, re.M):
        for src in line.split()[:-1]:
            assert (ROOT / src).exists(), f"Dockerfile copies {src}, which is not in the repo"
    assert f"docker build -t {image_tag()} ." in text
    assert re.search(r"apt-get install[^\n]* wget", text)
    assert image_tag() == f"videocups-ray:{project['version']}"


def test_cli_cluster_check(tmp_path, capsys):
    assert main(["cluster", "check", str(AWS), str(KUBERAY), "--config",
                 str(ROOT / "configs/pseudolabel/gpu.yaml")]) == 0
    assert capsys.readouterr().out.count('"ok": true') == 2
    doc = yaml.safe_load(AWS.read_text())
    doc["available_node_types"]["gpu_worker"]["resources"] = {"CPU": 16, "GPU": 0.5}  # integers only
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(doc))
    assert main(["cluster", "check", str(bad)]) == 2
    assert "bad.yaml: Ray's cluster-config validation fails at available_node_types/gpu_worker/resources/GPU" \
        in capsys.readouterr().err
