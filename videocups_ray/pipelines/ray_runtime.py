"""Starting and stopping Ray from config: the same job runs on a laptop and on a cluster.

``address=None`` starts a local instance sized for small machines (see ENVIRONMENT.md: on 2
cores, actor pools with 1 CPU each starve Ray Data's read/write tasks, so the local instance
declares at least 4 logical CPUs and every actor declares a fractional ``num_cpus``).
``address="auto"`` or ``"ray://host:10001"`` joins an existing cluster and never shuts it down.
"""

from __future__ import annotations

import logging
import os
import tempfile
from contextlib import contextmanager
from typing import Iterator

from videocups_ray.config import RayConfig

log = logging.getLogger(__name__)

MIN_LOCAL_LOGICAL_CPUS = 4  # below this, a 2-actor pool plus read/write tasks can deadlock


@contextmanager
def ray_session(cfg: RayConfig) -> Iterator[object]:
    """Yield the ``ray`` module, initialised per ``cfg``; shut down only what we started."""
    import ray

    if ray.is_initialized():
        yield ray
        return
    if cfg.address:
        log.info("joining Ray cluster at %s", cfg.address)
        ray.init(address=cfg.address, log_to_driver=False)
    else:
        os.environ.setdefault("RAY_AUTH_MODE", "disabled")
        num_cpus = cfg.num_cpus or max(os.cpu_count() or 1, MIN_LOCAL_LOGICAL_CPUS)
        temp = cfg.temp_dir or tempfile.mkdtemp(prefix="vcr", dir="/tmp")
        log.info("starting local Ray: %d logical CPUs, %d MiB object store",
                 num_cpus, cfg.object_store_memory // 2**20)
        ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=False,
                 object_store_memory=cfg.object_store_memory, _temp_dir=temp)
    try:
        yield ray
    finally:
        ray.shutdown()
