"""The cue pool autoscaler's policy (``pipelines/pool_autoscaler.py``) with a fake Ray and clock;
the same autoscaler in a real corpus run on a simulated cluster is in test_cluster_node_loss.py."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from videocups_ray.config import Config, ConfigError, with_overrides
from videocups_ray.pipelines.pool_autoscaler import PoolAutoscaler


class FakeRef:
    def __init__(self):
        self.done = False


class FakeActor:
    def __init__(self, name: str):
        self.name, self.terminated, self.setup_ref = name, False, FakeRef()
        self.setup = SimpleNamespace(remote=lambda: self.setup_ref)
        self.__ray_terminate__ = SimpleNamespace(remote=self._terminate)

    def _terminate(self):
        self.terminated = True


class FakeRay:
    def wait(self, refs, timeout=None):
        return [r for r in refs if r.done], [r for r in refs if not r.done]

    def get(self, ref):
        assert ref.done
        return None

    def kill(self, actor, no_restart=True):
        actor.terminated = True


def make(backlog: dict, **flow):
    cfg = with_overrides(Config(), ray={"flow": {"replicas": 1, **flow}, "autoscale_backlog": 2.0,
                                        "autoscale_idle_s": 5.0}).ray
    pools = SimpleNamespace(flow=[FakeActor("flow0")], features=[FakeActor("feat0")])
    now = [0.0]
    created: list[FakeActor] = []

    def new_actor(kind):
        created.append(FakeActor(f"{kind}{len(created) + 1}"))
        return created[-1]

    scaler = PoolAutoscaler(FakeRay(), pools, cfg, new_actor, lambda kind: backlog[kind], clock=lambda: now[0])
    return scaler, pools, created, now


def test_pool_grows_one_actor_at_a_time_after_setup_up_to_max_then_shrinks_when_idle():
    backlog = {"flow": 5, "features": 50}
    scaler, pools, created, now = make(backlog, max_replicas=3)
    assert scaler.kinds == ["flow"]  # features has no max_replicas: fixed, however long its queue
    scaler.step()
    assert len(created) == 1 and len(pools.flow) == 1  # requested, not yet in the round-robin
    scaler.step()
    assert len(created) == 1  # one pending at a time
    created[0].setup_ref.done = True
    now[0] = 1.0
    scaler.step()  # admitted; 5 calls on 2 actors is still > 2 per actor: one more requested
    assert pools.flow[-1] is created[0] and len(created) == 2
    created[1].setup_ref.done = True
    now[0] = 2.0
    scaler.step()
    assert len(pools.flow) == 3
    backlog["flow"] = 100
    now[0] = 3.0
    scaler.step()
    assert len(created) == 2  # at max_replicas

    backlog["flow"] = 1  # fewer calls than actors: idle
    for t in (4.0, 8.0):
        now[0] = t
        scaler.step()
    assert len(pools.flow) == 3  # idle for 4 s < autoscale_idle_s
    now[0] = 9.0
    scaler.step()
    assert len(pools.flow) == 2 and created[1].terminated  # the newest leaves, gracefully
    for t in (14.0, 19.0, 24.0, 29.0):
        now[0] = t
        scaler.step()
    assert pools.flow == [pools.flow[0]] and pools.flow[0].name == "flow0"  # never below replicas
    events = scaler.summary()["flow"]
    assert events["peak"] == 3 and events["final"] == 1
    assert [e[1:] for e in events["events"]] == [("request", 2), ("grow", 2), ("request", 3), ("grow", 3),
                                                 ("shrink", 2), ("shrink", 1)]


def test_busy_pool_does_not_shrink_and_fixed_pools_are_not_scaled():
    backlog = {"flow": 3, "features": 0}
    scaler, pools, created, now = make(backlog, max_replicas=2)
    scaler.step()
    created[0].setup_ref.done = True
    scaler.step()
    assert len(pools.flow) == 2
    for t in range(1, 30):
        now[0] = float(t)
        scaler.step()  # 3 calls on 2 actors: busy, below the growth threshold
    assert len(pools.flow) == 2
    assert not PoolAutoscaler.wanted(Config().ray)


@pytest.mark.parametrize("ray_cfg, message", [
    ({"depth": {"max_replicas": 4}}, "ray.depth.max_replicas: only the flow and features pools grow"),
    ({"flow": {"replicas": 4, "max_replicas": 2}}, "ray.flow.max_replicas (2) is below replicas (4)"),
])
def test_max_replicas_where_it_would_do_nothing_is_an_error(ray_cfg, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        with_overrides(Config(), ray=ray_cfg)
