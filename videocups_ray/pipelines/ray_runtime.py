"""Starting and stopping Ray from config: the same job runs on a laptop and on a cluster.

``address=None`` starts a local instance sized for small machines (see ENVIRONMENT.md: on 2
cores, actor pools with 1 CPU each starve Ray Data's read/write tasks, so the local instance
declares at least 4 logical CPUs and every actor declares a fractional ``num_cpus``).
``address="auto"`` or ``"ray://host:10001"`` joins an existing cluster and never shuts it down.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from contextlib import contextmanager
from typing import Iterator

from videocups_ray.config import RayConfig

log = logging.getLogger(__name__)

MIN_LOCAL_LOGICAL_CPUS = 4  # below this, a 2-actor pool plus read/write tasks can deadlock


# Ray's own "local only" mode (what it uses on macOS/Windows): the node IP is 127.0.0.1, so GCS,
# raylet, object manager, workers and the driver listen on loopback alone. Read by Ray when its
# constants module is imported; set in the environment too, for the processes Ray starts.
_LOCAL_ONLY_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
_LOOPBACK = ("127.0.0.1", "::1", "localhost")


class RayRuntimeError(RuntimeError):
    """The local Ray instance could not be started as promised (e.g. not on loopback only)."""


@contextmanager
def _loopback_only() -> Iterator[None]:
    old = os.environ.get(_LOCAL_ONLY_ENV)
    os.environ[_LOCAL_ONLY_ENV] = "0"
    from ray._private import ray_constants  # imported once; the flag is read at call time

    old_flag = ray_constants.ENABLE_RAY_CLUSTER
    ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        yield
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = old_flag
        if old is None:
            os.environ.pop(_LOCAL_ONLY_ENV, None)
        else:
            os.environ[_LOCAL_ONLY_ENV] = old


def _remove_temp(path: str) -> None:
    """Delete the session folder we created; a failure is logged with the path, never hidden."""
    def report(_func, failed, exc_info) -> None:
        log.warning("could not remove Ray's temp folder %s (%s); delete it by hand", failed, exc_info[1])

    shutil.rmtree(path, onerror=report)


@contextmanager
def ray_session(cfg: RayConfig) -> Iterator[object]:
    """Yield the ``ray`` module, initialised per ``cfg``; shut down only what we started.

    A local instance (``address=None``) has token auth disabled, so it must be private: it
    listens on 127.0.0.1 only (checked after start: an error otherwise), its temp folder is
    readable by the user alone, and that folder is deleted at the end. Joining a cluster
    (``address="auto"`` / ``"ray://..."``) is the user's explicit choice and keeps Ray's settings.
    """
    import ray

    if ray.is_initialized():
        yield ray
        return
    created: str | None = None
    if cfg.address:
        log.info("joining Ray cluster at %s", cfg.address)
        ray.init(address=cfg.address, log_to_driver=False)
    else:
        os.environ.setdefault("RAY_AUTH_MODE", "disabled")
        num_cpus = cfg.num_cpus or max(os.cpu_count() or 1, MIN_LOCAL_LOGICAL_CPUS)
        temp = cfg.temp_dir
        if temp is None:
            temp = created = tempfile.mkdtemp(prefix="vcr", dir="/tmp")  # mode 0700
        log.info("starting local Ray on 127.0.0.1: %d logical CPUs, %d MiB object store",
                 num_cpus, cfg.object_store_memory // 2**20)
        try:
            with _loopback_only():
                ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=False,
                         object_store_memory=cfg.object_store_memory, _temp_dir=temp)
            if created:
                os.chmod(created, 0o700)  # Ray opens its session folders to everyone
            node_ip = ray.util.get_node_ip_address()
            if node_ip not in _LOOPBACK:
                raise RayRuntimeError(f"the local Ray instance came up on {node_ip}, not 127.0.0.1; "
                                      "refusing to run it without auth (set ray.address to join a cluster)")
        except BaseException:
            if ray.is_initialized():
                ray.shutdown()
            if created:
                _remove_temp(created)
            raise
    try:
        yield ray
    finally:
        ray.shutdown()
        if created:
            _remove_temp(created)


def get_each(ray, refs: list) -> list:
    """The values of ``refs`` in one ``ray.get`` (one round trip, which is what the driver's CPU
    per frame is made of); when that raises, each ref alone, so every failure stays attached to
    its own ref: the list holds a value or the exception ``ray.get`` raised for it."""
    if not refs:
        return []
    try:
        return list(ray.get(list(refs)))
    except Exception:  # noqa: BLE001 - attributed below, per ref, for the caller to classify
        out = []
        for ref in refs:
            try:
                out.append(ray.get(ref))
            except Exception as exc:  # noqa: BLE001 - returned to the caller, who classifies or re-raises
                out.append(exc)
        return out
