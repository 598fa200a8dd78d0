"""A simulated Ray cluster on one machine: several real Ray nodes on loopback, with fake GPUs.

Every node is a real raylet with its own object store, workers and resources, started by Ray's
own ``ray.cluster_utils.Cluster`` (what Ray's test suite uses for multi-node tests). Worker
nodes declare GPUs they do not have (``num_gpus``), so Ray schedules GPU actors by the declared
resources and sets ``CUDA_VISIBLE_DEVICES`` for each one, exactly as on a GPU node; the system
under test does not know it is simulated. Pair it with the ``simulated`` cue backend
(``cues/simulated.py``), which spends its "GPU time" asleep, so 2 cores can host many replicas.

Each node carries its type twice: a node label ``videocups.io/node-type`` and a custom resource
``node_type:<type>`` (1 per node), so work can be pinned to a node type either way.

Small machine rules (ENVIRONMENT.md): logical CPUs are declared, not detected, and object stores
are small (128 MiB per node by default). Nodes advertise 127.0.0.2, so all cluster traffic stays
on loopback: Ray rewrites 127.0.0.1 to the machine's address when a driver connects, but leaves
the rest of 127.0.0.0/8 alone, and Linux routes all of it to loopback. Ray's gRPC servers still
*listen* on every interface whatever the node address and auth mode (measured with ``ss``), so
the cluster keeps Ray's token auth unless the caller turned it off (``RAY_AUTH_MODE=disabled``,
as the test suite does on its isolated machines). Every process of the cluster carries its private temp dir
in its command line, which is how :meth:`SimCluster.pids` finds them and how
:meth:`SimCluster.shutdown` makes sure none outlives the cluster.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)

NODE_IP = "127.0.0.2"
NODE_TYPE_LABEL = "videocups.io/node-type"
HEAD_TYPE = "head"


def node_type_resource(node_type: str) -> str:
    """The custom resource (1 per node) that names a node's type."""
    return f"node_type:{node_type}"


@dataclass(frozen=True)
class NodeSpec:
    """``count`` worker nodes of one type."""

    node_type: str
    count: int = 1
    cpus: int = 4  # logical CPUs declared (not cores; Ray wants whole numbers): actors use fractions
    gpus: int = 4  # fake GPUs declared; Ray assigns their ids and sets CUDA_VISIBLE_DEVICES
    gpu_memory_gb: float = 0.0  # optional custom resource "gpu_memory_gb" (heterogeneous GPU types)
    object_store_mb: int = 128  # this node's object store, MiB (>= 75, Ray's minimum)
    resources: dict = field(default_factory=dict)  # extra custom resources per node

    def __post_init__(self) -> None:
        if not self.node_type or self.node_type == HEAD_TYPE:
            raise ValueError(f"NodeSpec.node_type must be a non-empty name other than {HEAD_TYPE!r}")
        if self.count < 0 or self.cpus < 0 or self.gpus < 0 or self.object_store_mb < 75 \
                or int(self.cpus) != self.cpus or int(self.gpus) != self.gpus:
            raise ValueError(f"NodeSpec {self.node_type}: need whole count, cpus, gpus >= 0 and "
                             f"object_store_mb >= 75, got {self}")


def uniform(nodes: int, gpus_per_node: int = 4, cpus_per_node: int = 4,
            node_type: str = "gpu") -> list[NodeSpec]:
    """``nodes`` identical worker nodes."""
    return [NodeSpec(node_type, count=nodes, cpus=cpus_per_node, gpus=gpus_per_node)]


class SimCluster:
    """Head + worker nodes on this machine. Use as a context manager, or ``start()`` / ``shutdown()``.

    ``address`` is what a driver passes to ``ray.init`` (or the pipelines' ``--set ray.address=``).
    The head node declares ``head_cpus`` and no GPU, like a real head that only runs the GCS.
    """

    def __init__(self, nodes: list[NodeSpec], *, head_cpus: int = 1, head_object_store_mb: int = 128,
                 temp_dir: str | None = None):
        self.specs = list(nodes)
        self.head_cpus = head_cpus
        self.head_object_store_mb = head_object_store_mb
        self._own_temp = temp_dir is None  # made here: removed (logs, sockets) once every process is gone
        self.temp_dir = temp_dir or tempfile.mkdtemp(prefix="vcsim", dir="/tmp")  # short: socket paths
        self._cluster = None
        self.workers: dict[str, list] = {}  # node type -> Ray node handles, in start order

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> str:
        """Start the head and every worker node; return the address."""
        from ray.cluster_utils import Cluster

        before = _address_file_state()
        try:
            self._cluster = Cluster(initialize_head=True, head_node_args=self._node_args(
                HEAD_TYPE, self.head_cpus, 0, self.head_object_store_mb, {}, head=True))
        finally:
            _restore_address_file(before)  # Cluster writes /tmp/ray/ray_current_cluster; others read it
        try:
            for spec in self.specs:
                for _ in range(spec.count):
                    self.add_node(spec)
        except BaseException:
            self.shutdown()
            raise
        return self.address

    def add_node(self, spec: NodeSpec):
        """Start one more worker node of ``spec``'s type (``spec.count`` is ignored); return it."""
        res = {node_type_resource(spec.node_type): 1, **spec.resources}
        if spec.gpu_memory_gb:
            res["gpu_memory_gb"] = spec.gpu_memory_gb
        node = self._cluster.add_node(**self._node_args(spec.node_type, spec.cpus, spec.gpus,
                                                        spec.object_store_mb, res))
        self.workers.setdefault(spec.node_type, []).append(node)
        return node

    def remove_node(self, node, timeout_s: float = 60) -> None:
        """Lose one worker node: SIGKILL all its processes, its actors' workers included, at once.

        ``Cluster.remove_node`` kills the raylet and its agents only; the worker processes would
        notice a few seconds later and meanwhile still answer direct actor calls, which a lost
        machine does not. Returns when the GCS has marked the node dead (if connected).
        """
        own = _pids_with(self.temp_dir.encode(), node._raylet_socket_name.encode() + b"\0")  # noqa: SLF001
        self._cluster.remove_node(node, allow_graceful=False)
        _kill(own)
        for nodes in self.workers.values():
            if node in nodes:
                nodes.remove(node)
        import ray

        if ray.is_initialized():
            deadline = time.monotonic() + timeout_s
            while any(n["NodeID"] == node.node_id and n["Alive"] for n in ray.nodes()):
                if time.monotonic() > deadline:
                    raise TimeoutError(f"node {node.node_id} still alive {timeout_s:g} s after its removal")
                time.sleep(0.5)

    def wait_for_nodes(self, timeout_s: float = 60) -> None:
        self._cluster.wait_for_nodes(timeout=timeout_s)

    def connect(self):
        """``ray.init`` this process to the cluster; returns the ``ray`` module."""
        import ray

        ray.init(address=self.address, log_to_driver=False)
        return ray

    def shutdown(self, timeout_s: float = 30) -> None:
        """Stop every node; then make sure no process of this cluster is left (SIGKILL stragglers)."""
        import ray

        if ray.is_initialized() and ray.get_runtime_context().gcs_address == self.address:
            ray.shutdown()
        if self._cluster is not None:
            try:
                self._cluster.shutdown()
            finally:
                self._cluster = None
                self.workers = {}
        deadline = time.monotonic() + timeout_s
        while self.pids() and time.monotonic() < deadline:
            time.sleep(0.2)
        left = self.pids()
        if left:
            log.warning("simulated cluster: processes %s outlived their nodes; killing them", left)
        _kill(left)
        if self._own_temp and not self.pids():
            shutil.rmtree(self.temp_dir, onerror=_report_rm)

    def __enter__(self) -> "SimCluster":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.shutdown()

    # ------------------------------------------------------------------ inspection
    @property
    def address(self) -> str:
        if self._cluster is None:
            raise RuntimeError("the simulated cluster is not running")
        return self._cluster.address

    @property
    def worker_nodes(self) -> list:
        return [n for nodes in self.workers.values() for n in nodes]

    def pids(self) -> list[int]:
        """Live processes of this cluster (raylets, GCS, workers): their command line names its temp dir."""
        return _pids_with(self.temp_dir.encode())

    def summary(self) -> dict:
        return {"address": self.address, "temp_dir": self.temp_dir,
                "nodes": {t: len(n) for t, n in self.workers.items()},
                "gpus": sum(s.gpus * len(self.workers.get(s.node_type, [])) for s in self.specs)}

    # ------------------------------------------------------------------ internals
    def _node_args(self, node_type: str, cpus: float, gpus: int, store_mb: int, resources: dict,
                   *, head: bool = False) -> dict:
        args = dict(num_cpus=cpus, num_gpus=gpus, object_store_memory=store_mb * 2**20,
                    resources=resources or {node_type_resource(node_type): 1}, node_ip_address=NODE_IP,
                    labels={NODE_TYPE_LABEL: node_type})
        if head:
            args.update(temp_dir=self.temp_dir, include_dashboard=False)
        return args


def _pids_with(*needles: bytes) -> list[int]:
    """Live (non-zombie) processes other than this one whose command line contains every needle."""
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmd = (entry / "cmdline").read_bytes()
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except (FileNotFoundError, ProcessLookupError, PermissionError, IndexError):
            continue
        if state != "Z" and all(n in cmd for n in needles):
            out.append(int(entry.name))
    return out


def _report_rm(_func, path, exc_info) -> None:
    if not isinstance(exc_info[1], FileNotFoundError):  # a process removed it first
        log.warning("simulated cluster: could not remove %s: %s", path, exc_info[1])


def _kill(pids: list[int]) -> None:
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _address_file_state() -> tuple[Path, str | None]:
    from ray._private.utils import get_ray_address_file

    path = Path(get_ray_address_file(None))
    return path, path.read_text() if path.exists() else None


def _restore_address_file(state: tuple[Path, str | None]) -> None:
    path, text = state
    if text is None:
        path.unlink(missing_ok=True)
    else:
        path.write_text(text)


def placement() -> dict:
    """Where the calling Ray worker runs and which devices it sees (call it inside an actor)."""
    import ray

    ctx = ray.get_runtime_context()
    return {"node_id": ctx.get_node_id(), "pid": os.getpid(),
            "node_type": ctx.get_node_labels().get(NODE_TYPE_LABEL),
            "gpu_ids": [str(g) for g in ray.get_gpu_ids()],
            "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES")}


def probed(cls: type) -> type:
    """A subclass of actor class ``cls`` with a ``placement()`` method, for tests and benchmarks.

    Built at run time, so Ray ships it by value while ``cls`` itself stays the production class.
    """
    return type(f"Probed{cls.__name__}", (cls,), {"placement": lambda self: placement()})


# --------------------------------------------------------------------------- autoscaling
def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind((NODE_IP, 0))
        return int(sock.getsockname()[1])


class AutoscalingSimCluster(SimCluster):
    """A head node whose Ray autoscaler adds and removes simulated worker nodes on demand.

    Ray's fake multi-node provider (the one behind ``ray.cluster_utils.AutoscalingCluster`` and
    Ray's own autoscaler tests) starts each node the autoscaler asks for as a local raylet.
    ``AutoscalingCluster`` itself is not used: it runs ``ray stop --force``, which kills every
    Ray instance on the machine, and its base config is missing from the wheel. Here the head is
    started like any :class:`SimCluster` head, with the autoscaling config and the fake provider
    pointed at its GCS; the ``specs`` give the worker node types with ``count`` as their
    ``max_workers`` (``min_workers`` 0), and nodes idle for ``idle_timeout_s`` are removed.
    Worker nodes are started by the autoscaler process, so only the :meth:`pids` sweep of
    :meth:`shutdown` can stop them: it does.
    """

    def __init__(self, nodes: list[NodeSpec], *, idle_timeout_s: float = 6.0, **kwargs):
        super().__init__(nodes, **kwargs)
        self.idle_timeout_s = idle_timeout_s

    def autoscaling_config(self, gcs_port: int) -> dict:
        types = {"ray.head.default": {"resources": {"CPU": self.head_cpus}, "node_config": {}, "max_workers": 0}}
        for spec in self.specs:
            res = {"CPU": spec.cpus, "GPU": spec.gpus, "object_store_memory": spec.object_store_mb * 2**20,
                   node_type_resource(spec.node_type): 1, **spec.resources}
            if spec.gpu_memory_gb:
                res["gpu_memory_gb"] = spec.gpu_memory_gb
            types[spec.node_type] = {"resources": res, "node_config": {}, "min_workers": 0,
                                     "max_workers": spec.count, "labels": {NODE_TYPE_LABEL: spec.node_type}}
        return {"cluster_name": "videocups-sim", "max_workers": sum(s.count for s in self.specs),
                "provider": {"type": "fake_multinode", "use_node_id_as_ip": True, "disable_node_updaters": True,
                             "disable_launch_config_check": True, "gcs_address": f"{NODE_IP}:{gcs_port}"},
                "available_node_types": types, "head_node_type": "ray.head.default", "auth": {},
                "upscaling_speed": 1.0, "idle_timeout_minutes": self.idle_timeout_s / 60, "docker": {},
                "initialization_commands": [], "setup_commands": [], "head_setup_commands": [],
                "worker_setup_commands": [], "head_start_ray_commands": [], "worker_start_ray_commands": [],
                "file_mounts": {}, "cluster_synced_files": [], "file_mounts_sync_continuously": False,
                "rsync_exclude": [], "rsync_filter": []}

    def start(self) -> str:
        import json

        from ray.cluster_utils import Cluster

        port = _free_port()
        path = Path(self.temp_dir) / "autoscaling.json"
        path.write_text(json.dumps(self.autoscaling_config(port)))
        env = {"RAY_FAKE_CLUSTER": "1", "AUTOSCALER_UPDATE_INTERVAL_S": "1"}  # read by the monitor process
        saved = {k: os.environ.get(k) for k in env}
        os.environ.update(env)
        before = _address_file_state()
        try:
            args = self._node_args(HEAD_TYPE, self.head_cpus, 0, self.head_object_store_mb, {}, head=True)
            self._cluster = Cluster(initialize_head=True, head_node_args={
                **args, "gcs_server_port": port, "autoscaling_config": str(path)})
        finally:
            _restore_address_file(before)
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
        return self.address

    def add_node(self, spec: NodeSpec):
        raise RuntimeError("an autoscaling simulated cluster gets its worker nodes from the autoscaler")


def wait_for(predicate, timeout_s: float, poll_s: float = 0.5) -> float:
    """Seconds until ``predicate()`` is true; TimeoutError after ``timeout_s``."""
    t0 = time.monotonic()
    while not predicate():
        if time.monotonic() - t0 > timeout_s:
            raise TimeoutError(f"condition not met within {timeout_s:g} s")
        time.sleep(poll_s)
    return time.monotonic() - t0


# --------------------------------------------------------------------------- CLI helpers
DEFAULT_STATE = Path.home() / ".cache" / "videocups" / "sim-cluster.json"


class _Stop(Exception):
    pass


def _raise_stop(signum, frame) -> None:
    raise _Stop(signum)


def serve(nodes: list[NodeSpec], state_file: Path = DEFAULT_STATE, *, head_cpus: int = 1,
          on_ready=print) -> dict:
    """Run a simulated cluster in this process until SIGTERM/SIGINT (``videocups cluster up``).

    The process owns every node, so stopping it (``videocups cluster down``, Ctrl-C) stops the
    cluster; the state file tells ``down`` which process to signal.
    """
    import json

    state_file = Path(state_file)
    if state_file.exists():
        old = json.loads(state_file.read_text())
        if _alive(old.get("pid", -1)):
            raise RuntimeError(f"a simulated cluster is already up (pid {old['pid']}, {old['address']}); "
                               f"`videocups cluster down --state {state_file}` first")
    cluster = SimCluster(nodes, head_cpus=head_cpus)
    previous = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        cluster.start()
        for s in previous:  # after start: Ray's head node installs its own SIGTERM handler (exit 1)
            signal.signal(s, _raise_stop)
        info = {**cluster.summary(), "pid": os.getpid(),
                "use": f"--set ray.address={cluster.address}"}
        state_file.parent.mkdir(parents=True, exist_ok=True)
        state_file.write_text(json.dumps(info))
        on_ready(json.dumps(info))
        while True:
            time.sleep(3600)
    except _Stop:
        return info
    finally:
        cluster.shutdown()
        state_file.unlink(missing_ok=True)
        for s, h in previous.items():
            signal.signal(s, h)


def stop(state_file: Path = DEFAULT_STATE, timeout_s: float = 60) -> dict:
    """Stop the cluster ``serve`` runs (``videocups cluster down``); wait until none of its processes is left."""
    import json

    state_file = Path(state_file)
    if not state_file.exists():
        raise RuntimeError(f"no simulated cluster is up (no state file {state_file})")
    info = json.loads(state_file.read_text())
    pid = int(info["pid"])
    if _alive(pid):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    probe = SimCluster([], temp_dir=info["temp_dir"])
    while (_alive(pid) or probe.pids()) and time.monotonic() < deadline:
        time.sleep(0.2)
    left = probe.pids() + ([pid] if _alive(pid) else [])
    if left:
        raise RuntimeError(f"simulated cluster at {info['address']}: processes {left} still running "
                           f"after {timeout_s:g} s")
    state_file.unlink(missing_ok=True)
    return {"stopped": info["address"], "pid": pid}


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False
    return state != "Z"
