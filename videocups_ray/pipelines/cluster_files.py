"""Offline checks of the shipped cluster files: they must work as shipped, before any cluster exists.

- A Ray cluster-launcher YAML (``ray up``) goes through exactly what ``ray up`` does first:
  Ray's ``prepare_config`` (merges the provider's defaults) then Ray's own ``validate_config``
  (the launcher's JSON schema plus its cross-field rules). Anything that passes here gets past
  ``ray up``'s config stage; cloud credentials and quotas are beyond an offline check.
- A KubeRay ``RayCluster`` manifest is checked against the RayCluster CRD's schema (a vendored
  subset, ``schemas/raycluster_v1_subset.yaml``, whose header names its source and version), then
  against the rules KubeRay's operator applies (unique group names, ``minReplicas <= replicas <=
  maxReplicas``), and its image must be the one the repo's ``Dockerfile`` builds.
- :func:`unplaceable_actors` then says whether every actor of a pipeline config fits on at
  least one worker node type of a cluster file (a GPU actor on a CPU-only cluster would wait
  forever in Ray's scheduler, which only warns).
"""

from __future__ import annotations

import copy
import importlib.metadata
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import yaml

from videocups_ray.config import ConfigError, RayConfig

SCHEMA_PATH = Path(__file__).with_name("schemas") / "raycluster_v1_subset.yaml"
IMAGE_NAME = "videocups-ray"  # what `docker build -t videocups-ray:<version> .` tags (Dockerfile)
ACTOR_FIELDS = ("flow", "depth", "features", "tracker", "writer")  # RayConfig sections with resources


class ClusterFileError(ConfigError):
    """A shipped or user cluster file would be rejected; the message names the file and the key."""


@dataclass(frozen=True)
class NodeGroup:
    """One kind of node a cluster file can start: its Ray resources and its autoscaling bounds."""

    name: str
    cpus: float
    gpus: float
    min_workers: int
    max_workers: int
    head: bool = False


def image_tag() -> str:
    """``videocups-ray:<package version>``: the tag the Dockerfile's build command gives."""
    try:
        version = importlib.metadata.version("videocups-ray")
    except importlib.metadata.PackageNotFoundError as exc:  # running from a tree that is not installed
        raise ClusterFileError("videocups-ray is not installed; cannot tell the image version") from exc
    return f"{IMAGE_NAME}:{version}"


def load_cluster_file(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ClusterFileError(f"cluster file not found: {path}")
    try:
        doc = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ClusterFileError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(doc, dict):
        raise ClusterFileError(f"{path}: expected a mapping at top level")
    return doc


def _where(err) -> str:
    return "/".join(str(p) for p in err.absolute_path) or "(top level)"


# --------------------------------------------------------------------------- ray up
def check_launcher_config(doc: dict, source: str) -> list[NodeGroup]:
    """Ray's own launcher checks (what ``ray up`` runs before touching a cloud); node groups out."""
    import jsonschema
    from ray.autoscaler._private.util import prepare_config, validate_config

    try:
        prepared = prepare_config(copy.deepcopy(doc))
        validate_config(prepared)
    except jsonschema.ValidationError as exc:
        raise ClusterFileError(f"{source}: Ray's cluster-config validation fails at "
                               f"{_where(exc)}: {exc.message}") from None
    except (ValueError, RuntimeError, KeyError) as exc:
        raise ClusterFileError(f"{source}: Ray's cluster-config validation fails: {exc}") from None
    groups = []
    for name, spec in prepared["available_node_types"].items():
        res = spec.get("resources", {})
        groups.append(NodeGroup(name, float(res.get("CPU", 0)), float(res.get("GPU", 0)),
                                int(spec.get("min_workers", 0)), int(spec.get("max_workers", 0)),
                                head=name == prepared["head_node_type"]))
    return groups


# --------------------------------------------------------------------------- KubeRay
@lru_cache(maxsize=1)
def raycluster_schema() -> dict:
    return yaml.safe_load(SCHEMA_PATH.read_text())


_QUANTITY = re.compile(r"^([0-9.]+)(m|k|Ki|M|Mi|G|Gi)?$")


def _cpu_quantity(value: object, where: str) -> float:
    """A Kubernetes CPU quantity ("8", "500m", 4) as cores."""
    m = _QUANTITY.match(str(value))
    if not m or m.group(2) not in (None, "m"):
        raise ClusterFileError(f"{where}: cannot read CPU quantity {value!r}")
    return float(m.group(1)) / (1000 if m.group(2) == "m" else 1)


def _group_resources(name: str, start: dict, template: dict, where: str) -> tuple[float, float]:
    """Ray's CPU/GPU count of a KubeRay group: rayStartParams win, else the Ray container's limits."""
    limits = template["spec"]["containers"][0].get("resources", {}).get("limits", {})
    cpus = float(start["num-cpus"]) if "num-cpus" in start else _cpu_quantity(limits.get("cpu", 0), where)
    gpus = float(start["num-gpus"]) if "num-gpus" in start else float(limits.get("nvidia.com/gpu", 0))
    return cpus, gpus


def check_raycluster(doc: dict, source: str, *, image: str | None = None) -> list[NodeGroup]:
    """The RayCluster CRD schema (vendored subset) and KubeRay's own group rules; groups out."""
    import jsonschema

    errors = sorted(jsonschema.Draft7Validator(raycluster_schema()).iter_errors(doc),
                    key=lambda e: list(e.absolute_path))
    if errors:
        raise ClusterFileError(f"{source}: RayCluster schema check fails at {_where(errors[0])}: "
                               f"{errors[0].message}" + (f" (+{len(errors) - 1} more)" if len(errors) > 1 else ""))
    spec = doc["spec"]
    head = spec["headGroupSpec"]
    groups = [NodeGroup("head", *_group_resources("head", head["rayStartParams"], head["template"],
                                                  f"{source}: headGroupSpec"), 0, 0, head=True)]
    seen: set[str] = set()
    for i, g in enumerate(spec.get("workerGroupSpecs", [])):
        where = f"{source}: workerGroupSpecs[{i}] ({g['groupName']})"
        if g["groupName"] in seen:
            raise ClusterFileError(f"{where}: groupName repeats an earlier group")
        seen.add(g["groupName"])
        lo, hi, n = g["minReplicas"], g["maxReplicas"], g.get("replicas", g["minReplicas"])
        if not 0 <= lo <= n <= hi:
            raise ClusterFileError(f"{where}: needs 0 <= minReplicas ({lo}) <= replicas ({n}) <= maxReplicas ({hi})")
        groups.append(NodeGroup(g["groupName"], *_group_resources(g["groupName"], g["rayStartParams"],
                                                                  g["template"], where), lo, hi))
    if image is not None:
        pods = [("headGroupSpec", head["template"])] + [
            (f"workerGroupSpecs/{g['groupName']}", g["template"]) for g in spec.get("workerGroupSpecs", [])]
        for where, tpl in pods:
            for c in tpl["spec"]["containers"]:
                got = c.get("image", "")
                if got.rsplit("/", 1)[-1] != image:
                    raise ClusterFileError(f"{source}: {where} container {c['name']} runs image {got!r}, "
                                           f"not the one the Dockerfile builds ({image!r}, any registry)")
    return groups


# --------------------------------------------------------------------------- both
def check_cluster_file(path: str | Path, *, image: str | None = None) -> list[NodeGroup]:
    """Check one cluster file by its kind; return the node groups it can start."""
    doc = load_cluster_file(path)
    if doc.get("kind") == "RayCluster":
        return check_raycluster(doc, str(path), image=image)
    if "provider" in doc or "available_node_types" in doc:
        return check_launcher_config(doc, str(path))
    raise ClusterFileError(f"{path}: neither a Ray cluster-launcher config (no 'provider') nor a "
                           "KubeRay RayCluster (kind is not RayCluster)")


def unplaceable_actors(groups: list[NodeGroup], ray_cfg: RayConfig) -> list[str]:
    """Actor kinds of ``ray_cfg`` that no worker node group of the cluster can host, with why."""
    workers = [g for g in groups if not g.head or g.cpus > 0]
    out = []
    for kind in ACTOR_FIELDS:
        res = getattr(ray_cfg, kind)
        if not any(g.cpus >= res.num_cpus and g.gpus >= res.num_gpus and g.max_workers + g.head > 0
                   for g in workers):
            out.append(f"ray.{kind} asks for {res.num_cpus} CPU / {res.num_gpus} GPU per actor, more "
                       f"than any node group offers ({', '.join(f'{g.name}: {g.cpus:g}/{g.gpus:g}' for g in groups)})")
    # autoscaling limits: the pools at their largest (max_replicas; one tracker per stream in flight)
    # must fit the GPUs of every group at its max_workers, or the last actors wait forever
    largest = {k: max(getattr(ray_cfg, k).replicas, getattr(ray_cfg, k).max_replicas) for k in ACTOR_FIELDS}
    largest["tracker"] = ray_cfg.max_videos_in_flight
    need = sum(getattr(ray_cfg, k).num_gpus * n for k, n in largest.items())
    cap = sum(g.gpus * g.max_workers for g in workers if not g.head)
    if need > cap + 1e-9:
        pools = ", ".join(f"{k} {n} x {getattr(ray_cfg, k).num_gpus:g}" for k, n in largest.items()
                          if getattr(ray_cfg, k).num_gpus)
        out.append(f"the actor pools at their largest need {need:g} GPUs ({pools}), more than the cluster's "
                   f"{cap:g} at max_workers")
    return out
