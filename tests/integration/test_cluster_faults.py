"""Faults with a real redis-server: Redis restarted (persistence off) and Redis stalled
(`DEBUG SLEEP 5`) while a programme plays through an edge whose registry work runs against that
Redis — the receivers lose nothing; and a lease holder stopped (SIGSTOP) past its lease and
continued (SIGCONT) — its commands are refused by the edges."""
from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import redis.asyncio as aredis

from streamer.cluster.commands import CommandConsumer, CommandLog
from streamer.cluster.keys import Keys
from streamer.cluster.lease import RedisLease
from streamer.cluster.nodes import NodeRegistry, ReceiverDirectory
from tests.integration.redis_proc import redis_server  # noqa: F401  (fixture)
from tests.integration.test_cluster_edge import SECRET, Edge, FieldRx, Origin, wait_until

pytestmark = pytest.mark.integration
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


async def _claims(d: ReceiverDirectory, edge: Edge, stop: asyncio.Event) -> None:
    while not stop.is_set():
        for st in edge.registry.status() or []:
            try:
                await d.claim(st["id"], st["zone"], {"online": st.get("online")})
            except Exception:
                pass
        try:
            await asyncio.wait_for(stop.wait(), 0.5)
        except TimeoutError:
            pass


async def test_redis_restart_and_stall_lose_no_packet(redis_server):  # noqa: F811
    r = aredis.from_url(redis_server.url, socket_timeout=0.5, socket_connect_timeout=0.5)
    keys = Keys("t:")
    origin = Origin()
    edge = Edge("edge-a", origin, {"rx1": (SECRET, "z1")})
    await edge.start()
    stop = asyncio.Event()
    reg = NodeRegistry(r, keys, "edge-a", "edge",
                       lambda: {"media": f"127.0.0.1:{edge.address[1]}",
                                "receivers": len(edge.node.wanted)},
                       ttl_s=2.0, refresh_s=0.5, timeout_s=0.5)
    lease = RedisLease(r, keys, "leader", "origin-a", lease_ms=2000)
    tasks = [asyncio.create_task(reg.run(stop)), asyncio.create_task(lease.run(stop)),
             asyncio.create_task(_claims(ReceiverDirectory(r, keys, "edge-a"), edge, stop))]
    rx = FieldRx("rx1", [edge.address])
    samples: list[tuple[float, int]] = []

    async def sample() -> None:
        while not stop.is_set():
            samples.append((time.monotonic(), rx.received))
            await asyncio.sleep(0.1)
    tasks.append(asyncio.create_task(sample()))
    try:
        origin.tone("z1", seconds=60)
        await wait_until(lambda: rx.received >= 50, 10)
        await wait_until(lambda: reg.published >= 2 and lease.state.held, 5)
        assert await r.hget(keys.receiver("rx1"), "edge") == b"edge-a"
        start_lost = rx.fr.rx.jitter.stats.lost
        t_fault = time.monotonic()
        redis_server.restart()                       # empty again
        await asyncio.sleep(1.5)
        stall = redis_server.stall(5)                # Redis answers nothing for 5 s
        await asyncio.sleep(5.5)
        stall.wait(5)
        # the control plane comes back by itself
        await wait_until(lambda: reg.errors > 0, 1)
        n = reg.published
        await wait_until(lambda: reg.published > n, 5)
        assert await r.exists(keys.node("edge-a"))
        await asyncio.sleep(0.3)
        st = rx.fr.rx.jitter.stats
        assert st.lost == start_lost == 0, st
        # audio never stopped: at most 0.5 s between two samples without new packets
        during = [(t, c) for t, c in samples if t >= t_fault]
        gaps = [t2 - t1 for (t1, c1), (t2, c2) in zip(during, during[1:]) if c2 == c1]
        assert not gaps or max(gaps) < 0.5, gaps
        assert during[-1][1] - during[0][1] >= 50 * 6    # ~8 s of packets went on arriving
        assert rx.session.counters["failovers"] == 0
    finally:
        stop.set()
        await asyncio.gather(*tasks, return_exceptions=True)
        await rx.close()
        edge.close()
        origin.close()
        await r.aclose()


HOLDER = textwrap.dedent("""
    import asyncio, sys
    import redis.asyncio as aredis
    from streamer.cluster.keys import Keys
    from streamer.cluster.lease import RedisLease
    from streamer.cluster.commands import CommandLog

    async def main():
        r = aredis.from_url(sys.argv[1], socket_timeout=0.5)
        keys = Keys("t:")
        lease = RedisLease(r, keys, "leader", "origin-a", lease_ms=1000)
        while not lease.state.held:
            await lease.step()
        print("held", lease.fence, flush=True)
        log = CommandLog(r, keys, "origin-a", lambda: lease.fence, lease.may_issue)
        i = 0
        while True:
            i += 1
            # a leader that does not look at its lease before each command (its check passed
            # and then it was paused): what it sends after waking must be refused
            await log.send("start", {"i": i}, check=False)
            await lease.step()
            await asyncio.sleep(0.1)
    asyncio.run(main())
""")


async def test_stopped_lease_holder_is_refused_after_it_continues(redis_server):  # noqa: F811
    r = aredis.from_url(redis_server.url, socket_timeout=1.0)
    keys = Keys("t:")
    edge = CommandConsumer(r, keys, "edge-1", lambda c: None, block_ms=100)
    await edge.ensure_group()
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, redis_server.url], cwd=ROOT,
                              stdout=subprocess.PIPE, text=True, start_new_session=True)
    try:
        line = await asyncio.wait_for(asyncio.to_thread(holder.stdout.readline), 10)
        old_fence = int(line.split()[1])
        await asyncio.sleep(0.5)
        await edge.poll()
        assert edge.applied and all(c.fence == old_fence for c in edge.applied)
        os.kill(holder.pid, signal.SIGSTOP)
        await asyncio.sleep(1.3)                      # past its 1 s lease
        b = RedisLease(r, keys, "leader", "origin-b", lease_ms=1000)
        t0 = time.monotonic()
        while not b.state.held and time.monotonic() - t0 < 5:
            await b.step()
            await asyncio.sleep(0.05)
        assert b.state.held and b.fence > old_fence
        log_b = CommandLog(r, keys, "origin-b", lambda: b.fence, b.may_issue)
        await log_b.send("alert", {"zones": ["z1"]})
        await edge.poll()
        os.kill(holder.pid, signal.SIGCONT)            # it wakes and sends as before
        await asyncio.sleep(0.6)
        for _ in range(5):
            await edge.poll()
        stale = [c for c in edge.refused if c.issuer == "origin-a"]
        assert stale, "the stale leader sent nothing after SIGCONT?"
        assert all(c.fence == old_fence for c in stale)
        assert [c.kind for c in edge.applied if c.issuer == "origin-b"] == ["alert"]
        # nothing from a was applied after b's command
        ids = [c.id for c in edge.applied]
        b_at = next(i for i, c in enumerate(edge.applied) if c.issuer == "origin-b")
        assert all(c.issuer == "origin-b" for c in list(edge.applied)[b_at:]), ids
    finally:
        holder.kill()
        holder.wait(5)
        await r.aclose()
