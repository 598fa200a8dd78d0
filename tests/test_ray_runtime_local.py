"""The private local Ray instance (auth disabled) listens on loopback only, keeps its temp
folder user-only, and removes it at the end (issue 17, found-#5 and found-#9)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# Runs in a fresh interpreter: the test session's own Ray instance must not be reused.
_PROBE = textwrap.dedent("""
    import json, os, stat, psutil
    from videocups_ray.config import RayConfig
    from videocups_ray.pipelines.ray_runtime import ray_session

    with ray_session(RayConfig(num_cpus=2, object_store_memory=128 * 1024**2)) as ray:
        @ray.remote(num_cpus=0.5)
        class Echo:
            def pid(self):
                return os.getpid()

        actor = Echo.remote()
        worker = ray.get(actor.pid.remote())
        temp = ray._private.worker._global_node.get_temp_dir_path()
        mode = stat.S_IMODE(os.stat(temp).st_mode)
        ours = {os.getpid(), worker}
        gcs = ray._private.worker._global_node.all_processes
        for infos in gcs.values():
            for info in infos:
                ours.add(info.process.pid)
        for pid in list(ours):
            try:
                ours.update(c.pid for c in psutil.Process(pid).children(recursive=True))
            except psutil.NoSuchProcess:
                pass
        listening = sorted({f"{c.laddr.ip}:{c.laddr.port} {psutil.Process(c.pid).name()}"
                            for c in psutil.net_connections("inet") if c.status == "LISTEN" and c.pid in ours})
    print(json.dumps({"temp": temp, "mode": mode, "listening": listening, "exists_after": os.path.exists(temp)}))
""")


@pytest.mark.ray
def test_local_ray_listens_on_loopback_only_and_cleans_its_temp_folder():
    env = dict(os.environ, PYTHONPATH=str(ROOT), RAY_AUTH_MODE="disabled")
    env.pop("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", None)
    proc = subprocess.run([sys.executable, "-c", _PROBE], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert got["listening"], "found no listening socket of the Ray processes: the probe is broken"
    exposed = [s for s in got["listening"]
               if not s.split(" ")[0].rsplit(":", 1)[0] in ("127.0.0.1", "::1", "::ffff:127.0.0.1")]
    assert not exposed, f"local Ray listens beyond loopback: {exposed}"
    assert got["mode"] & 0o077 == 0, f"temp folder {got['temp']} has mode {oct(got['mode'])}"
    assert not got["exists_after"], f"temp folder {got['temp']} left behind"
