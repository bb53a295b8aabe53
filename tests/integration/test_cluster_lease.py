"""Leases, fencing tokens, the node registry and the command stream against a real
redis-server (started by the test on a free port, persistence off)."""
from __future__ import annotations

import asyncio
import time

import pytest
import redis.asyncio as aredis

from streamer.cluster.commands import CommandConsumer, CommandLog, NotLeader
from streamer.cluster.keys import Keys
from streamer.cluster.lease import ACQUIRE_LUA, EXTEND_LUA, RELEASE_LUA, RedisLease
from streamer.cluster.nodes import NodeRegistry, ReceiverDirectory
from tests.integration.redis_proc import redis_server  # noqa: F401  (fixture)

pytestmark = pytest.mark.integration


def client(rs):
    return aredis.from_url(rs.url, socket_timeout=1.0, socket_connect_timeout=1.0)


async def test_one_holder_takeover_after_expiry_and_fence_grows(redis_server):  # noqa: F811
    r = client(redis_server)
    keys = Keys("t:")
    a = RedisLease(r, keys, "leader", "origin-a", lease_ms=1000, fresh_redis_s=0)
    b = RedisLease(r, keys, "leader", "origin-b", lease_ms=1000, fresh_redis_s=0)
    await a.step()
    await b.step()
    assert a.state.held and not b.state.held and a.may_issue()
    fa = a.fence
    for _ in range(4):     # a renews: b never gets it
        await asyncio.sleep(0.25)
        await a.step()
        await b.step()
    assert a.state.held and not b.state.held
    # a stops renewing (a pause): within half a lease it stops issuing by itself...
    await asyncio.sleep(0.55)
    assert not a.may_issue()
    # ...and once the lease has expired in Redis, b takes it with a higher token
    t0 = time.monotonic()
    while not b.state.held and time.monotonic() - t0 < 3:
        await b.step()
        await asyncio.sleep(0.05)
    assert b.state.held and b.fence > fa
    await a.step()         # a wakes: compare-and-extend fails, it knows it lost
    assert not a.state.held
    await r.aclose()


async def _step_until_held(lease: RedisLease, timeout: float = 5.0) -> None:
    t0 = time.monotonic()
    while not lease.state.held and time.monotonic() - t0 < timeout:
        await lease.step()
        if not lease.state.held:
            await asyncio.sleep(0.1)


async def test_fence_never_goes_back_across_an_empty_redis_restart(redis_server):  # noqa: F811
    r = client(redis_server)
    keys = Keys("t:")
    # a counter that ran ahead of the wall clock (a leader whose clock was fast, say)
    await r.set(keys.fence("leader"), str(int(time.time() * 1000) + 10_000_000))
    a = RedisLease(r, keys, "leader", "origin-a", lease_ms=1000, fresh_redis_s=0)
    await a.step()
    first = a.fence
    await r.aclose()
    redis_server.restart()          # persistence off: the counter is gone
    r = client(redis_server)
    assert await r.get(keys.fence("leader")) is None
    # the new leader knows the highest token the edges reported (it never held the lease:
    # it takes it once Redis has been up for half a lease)
    b = RedisLease(r, keys, "leader", "origin-b", lease_ms=1000, floor_seen=lambda: (first,),
                   fresh_redis_s=0)
    await _step_until_held(b)
    assert b.state.held and b.fence > first
    # without that knowledge the wall clock alone still floors it
    await r.aclose()
    redis_server.restart()
    r = client(redis_server)
    c = RedisLease(r, keys, "leader", "origin-c", lease_ms=1000)
    await _step_until_held(c)
    assert c.fence >= int(time.time() * 1000) - 5000
    await r.aclose()


async def test_an_empty_redis_restart_leaves_the_lease_to_its_holder(redis_server):  # noqa: F811
    """A waiting origin does not take a lease that Redis lost (restarted empty) while its holder
    lives: the holder asks again at its next renewal and keeps it (before, the standby asking
    every 0.5 s took it first, the holder yielded what it aired, and with the on-air state gone
    with Redis nothing was carried on: silence). A released lease is taken at once."""
    r = client(redis_server)
    keys = Keys("t:")
    a = RedisLease(r, keys, "leader", "origin-a", lease_ms=3000, fresh_redis_s=0)
    b = RedisLease(r, keys, "leader", "origin-b", lease_ms=3000, fresh_redis_s=0)
    await a.step()
    await b.step()
    assert a.state.held and not b.state.held and b.other_holds is True
    await r.aclose()
    redis_server.restart()
    r = client(redis_server)
    a.redis = b.redis = r
    for lease in (a, b):
        lease._acquire = r.register_script(ACQUIRE_LUA)
        lease._extend = r.register_script(EXTEND_LUA)
        lease._release = r.register_script(RELEASE_LUA)
    assert await r.get(keys.lease("leader")) is None
    for _ in range(3):          # the waiting one asks first, and again
        await b.step()
        assert not b.state.held
    await a.step()              # the holder's renewal: refused (gone), taken again at once
    assert a.state.held and a.may_issue()
    await b.step()
    assert not b.state.held and b.other_holds is True
    # a lease its holder gives up is taken at once, without waiting out its expiry
    await a.release()
    t0 = time.monotonic()
    await b.step()
    assert b.state.held and time.monotonic() - t0 < 1.0
    await r.aclose()


async def test_node_registry_entries_expire_by_themselves(redis_server):  # noqa: F811
    r = client(redis_server)
    keys = Keys("t:")
    e1 = NodeRegistry(r, keys, "edge-1", "edge", lambda: {"media": "127.0.0.1:5004",
                                                          "receivers": 3}, ttl_s=1.0)
    e2 = NodeRegistry(r, keys, "edge-2", "edge", lambda: {"media": "127.0.0.1:5005",
                                                          "receivers": 0}, ttl_s=1.0)
    await e1.publish()
    await e2.publish()
    found = {n["node"]: n for n in await e1.nodes("edge")}
    assert set(found) == {"edge-1", "edge-2"} and found["edge-1"]["receivers"] == "3"
    # edge-2 dies (stops refreshing); edge-1 keeps refreshing
    for _ in range(3):
        await asyncio.sleep(0.5)
        await e1.publish()
    assert [n["node"] for n in await e1.nodes("edge")] == ["edge-1"]
    assert not await r.exists(keys.node("edge-2"))
    assert await r.zscore(keys.nodes("edge"), "edge-2") is None   # pruned by the reader
    await r.aclose()


async def test_receiver_moves_between_edges_never_in_two_sets(redis_server):  # noqa: F811
    r = client(redis_server)
    keys = Keys("t:")
    d1 = ReceiverDirectory(r, keys, "edge-1", ttl_s=5)
    d2 = ReceiverDirectory(r, keys, "edge-2", ttl_s=5)
    assert await d1.claim("rx-1", "z1", {"loss": 0}) is None
    assert await d1.claim("rx-1", "z1", now=time.monotonic() + 1) is None   # not due: no write
    assert await d2.claim("rx-1", "z1") == "edge-1"
    assert await r.smembers(keys.edge_receivers("edge-1")) == set()
    assert await r.smembers(keys.edge_receivers("edge-2")) == {b"rx-1"}
    assert await r.hget(keys.receiver("rx-1"), "edge") == b"edge-2"
    assert await r.smembers(keys.zone_receivers("z1")) == {b"rx-1"}
    assert 0 < await r.ttl(keys.receiver("rx-1")) <= 5
    await r.aclose()


async def test_stale_leader_commands_refused_by_edges(redis_server):  # noqa: F811
    r = client(redis_server)
    keys = Keys("t:")
    a = RedisLease(r, keys, "leader", "origin-a", lease_ms=600, fresh_redis_s=0)
    await a.step()
    log_a = CommandLog(r, keys, "origin-a", lambda: a.fence, a.may_issue)
    applied: list[str] = []
    edges = [CommandConsumer(r, keys, f"edge-{i}", lambda c, i=i: applied.append(f"{i}:{c.kind}"),
                             block_ms=100) for i in (1, 2)]
    for e in edges:
        await e.ensure_group()
    await log_a.send("start", {"zones": ["z1"]})
    for e in edges:
        await e.poll()
    assert sorted(applied) == ["1:start", "2:start"]
    # a pauses past its lease; b leads
    await asyncio.sleep(0.7)
    with pytest.raises(NotLeader):
        await log_a.send("stop", {})
    b = RedisLease(r, keys, "leader", "origin-b", lease_ms=600, fresh_redis_s=0)
    await b.step()
    assert b.state.held
    log_b = CommandLog(r, keys, "origin-b", lambda: b.fence, b.may_issue)
    await log_b.send("alert", {"zones": ["z1"]})
    # edge-1 reads b's command before a's late one; edge-2 was away and reads both after
    await edges[0].poll()
    await log_a.send("stop", {"why": "stale"}, check=False)   # a wakes and sends anyway
    for e in edges:
        await e.poll()
    assert sorted(applied) == ["1:alert", "1:start", "2:alert", "2:start"]
    assert [c.kind for c in edges[0].refused] == ["stop"]
    assert [c.kind for c in edges[1].refused] == ["stop"]
    # everything acknowledged: nothing pending for any edge
    for e in edges:
        assert (await r.xpending(keys.commands, e.group))["pending"] == 0
    await r.aclose()


async def test_an_edge_that_has_not_acknowledged_is_visible(redis_server):  # noqa: F811
    r = client(redis_server)
    keys = Keys("t:")
    a = RedisLease(r, keys, "leader", "origin-a", fresh_redis_s=0)
    await a.step()
    log_a = CommandLog(r, keys, "origin-a", lambda: a.fence, a.may_issue)

    def fail(c):
        raise RuntimeError("edge crashed while applying")
    e = CommandConsumer(r, keys, "edge-1", fail, block_ms=100)
    await e.ensure_group()
    await log_a.send("alert", {"zones": ["z1"]})
    with pytest.raises(RuntimeError):
        await e.poll()
    assert (await r.xpending(keys.commands, e.group))["pending"] == 1
    # restarted, it re-reads its pending entry first
    got = []
    e2 = CommandConsumer(r, keys, "edge-1", got.append, block_ms=100)
    await e2.poll()
    assert [c.kind for c in got] == ["alert"]
    assert (await r.xpending(keys.commands, e.group))["pending"] == 0
    await r.aclose()


async def test_consumer_reads_its_pending_list_only_when_it_may_have_one(redis_server):  # noqa: F811
    r = client(redis_server)
    keys = Keys("t:")
    a = RedisLease(r, keys, "leader", "origin-a", fresh_redis_s=0)
    await a.step()
    log_a = CommandLog(r, keys, "origin-a", lambda: a.fence, a.may_issue)
    reads: list[str] = []
    real = r.xreadgroup

    async def spy(group, consumer, streams, **kw):
        reads.extend(streams.values())
        return await real(group, consumer, streams, **kw)
    r.xreadgroup = spy
    fail = [True]
    got = []

    def apply(c):
        if fail[0]:
            raise RuntimeError("apply failed")
        got.append(c.kind)
    e = CommandConsumer(r, keys, "edge-1", apply, block_ms=50)
    await e.ensure_group()
    await e.poll()
    assert reads == ["0", ">"]                 # at start: its own pending entries first
    reads.clear()
    await e.poll()
    assert reads == [">"]                      # nothing pending: new entries only
    await log_a.send("alert", {"zones": ["z1"]})
    reads.clear()
    with pytest.raises(RuntimeError):
        await e.poll()
    fail[0] = False
    await e.poll()                             # the same consumer reads it again, first
    assert reads[:3] == [">", "0", ">"] and got == ["alert"]
    assert (await r.xpending(keys.commands, e.group))["pending"] == 0
    reads.clear()
    await e.poll()
    await e.poll()
    assert reads == ["0", ">", ">"]            # once more to see it empty, then no more
    await r.aclose()


async def test_consumer_survives_redis_restart(redis_server):  # noqa: F811
    r = client(redis_server)
    keys = Keys("t:")
    a = RedisLease(r, keys, "leader", "origin-a", fresh_redis_s=0)
    await a.step()
    first = a.fence
    got = []
    e = CommandConsumer(r, keys, "edge-1", got.append, block_ms=100)
    stop = asyncio.Event()
    task = asyncio.create_task(e.run(stop))
    await asyncio.sleep(0.2)
    redis_server.restart()
    a2 = RedisLease(r, keys, "leader", "origin-a", floor_seen=lambda: (first,),
                    fresh_redis_s=0)
    t0 = time.monotonic()
    while not a2.state.held and time.monotonic() - t0 < 5:
        await a2.step()
        await asyncio.sleep(0.1)
    assert a2.fence > first
    log_a = CommandLog(r, keys, "origin-a", lambda: a2.fence, a2.may_issue)
    await log_a.send("start", {})   # before the consumer has made its group again
    t0 = time.monotonic()
    while not got and time.monotonic() - t0 < 5:
        await asyncio.sleep(0.05)
    stop.set()
    await asyncio.wait_for(task, 5)
    assert [c.kind for c in got] == ["start"]
    await r.aclose()


async def test_a_standby_that_never_saw_the_holder_leaves_a_lease_redis_lost_to_it(
        redis_server):  # noqa: F811
    """A standby origin still starting when Redis restarted empty never saw the holder, so it
    had no holder to wait out: it took the vanished lease, the holder yielded what it aired and
    nothing was left in Redis to carry on (CI: the static zone went silent 0.4 s into a Redis
    restart of `loa bench nodes`). While Redis has been up less than half a lease, only a node
    that held the lease takes it; after that, anyone (a lease gone then expired by itself)."""
    r = client(redis_server)
    keys = Keys("t:")
    a = RedisLease(r, keys, "leader", "origin-a", lease_ms=6000, fresh_redis_s=0)
    await a.step()
    assert a.state.held
    await r.aclose()
    redis_server.restart()
    r = client(redis_server)
    a.redis = r
    a._acquire = r.register_script(ACQUIRE_LUA)
    a._extend = r.register_script(EXTEND_LUA)
    a._release = r.register_script(RELEASE_LUA)
    fresh = RedisLease(r, keys, "leader", "origin-new", lease_ms=6000)   # first step after
    for _ in range(3):
        await fresh.step()
        assert not fresh.state.held and fresh.deferred >= 1
    await a.step()              # the holder's renewal: refused (gone), taken again at once
    assert a.state.held and a.may_issue()
    await fresh.step()
    assert not fresh.state.held and fresh.other_holds is True
    # with nobody holding it, a node that never held it takes it once Redis has been up for
    # half a lease (3 s here), not before
    await a.release()
    await r.aclose()
    redis_server.restart()
    r = client(redis_server)
    late = RedisLease(r, keys, "leader", "origin-late", lease_ms=6000)
    t0 = time.monotonic()
    await _step_until_held(late, timeout=8.0)
    took = time.monotonic() - t0
    assert late.state.held and 2.0 <= took <= 6.0, took
    await r.aclose()
