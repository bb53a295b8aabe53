"""A standby origin takes over (control/cluster.py, streamer/cluster/onair.py), with real
processes and a real redis-server on loopback: two `loa serve --role origin` on one data
directory (the second waits on its lock: the standby), one `--role edge` and a receiver.
The active origin is killed with SIGKILL mid-programme; the standby takes the lease, carries
the programme on under the same broadcast id at the offset it had reached, and the receiver
hears it again within 10 s. Then the killed one comes back as the standby and the takeover is
repeated the other way."""
from __future__ import annotations

import os
import time
import urllib.error

import pytest
import redis as sync_redis

from receivers.cli import decode_secret
from tests.integration.conftest import free_udp_ports, wait_for
from tests.integration.redis_proc import redis_server  # noqa: F401  (fixture)
from tests.integration.test_control_cluster import Node
from tests.integration.test_receiver_restart import ThreadedReceiver

pytestmark = pytest.mark.integration

TRIALS = int(os.environ.get("LOA_TAKEOVER_TRIALS", "2"))   # 10 for a p95


def _health(n: Node) -> int:
    try:
        return n.get("/api/v1/health")[0]
    except urllib.error.HTTPError as e:
        return e.code
    except OSError:
        return 0


def _up(n: Node) -> bool:
    try:
        return n.get("/api/v1/health")[0] == 200
    except OSError:
        return False


def test_standby_origin_carries_the_programme_on(tmp_path, redis_server):  # noqa: F811
    data = tmp_path / "shared-data"
    nodes: list[Node] = []

    def origin(name: str, wait: bool) -> Node:
        n = Node(tmp_path, name, "origin", redis_server.url, {}, data_dir=data, wait=False)
        nodes.append(n)       # stopped at the end even if it never comes up
        if wait:
            wait_for(f"{name} up", n._up, 40)
        return n

    red = sync_redis.Redis.from_url(redis_server.url)
    r = None
    try:
        active = origin("origin-a", True)
        standby = origin("origin-b", False)
        wait_for("the standby waits", lambda: "standby origin" in standby.output(), 15)
        wait_for("the standby ready", lambda: _health(standby) == 503, 40)
        assert not _up(standby)
        (pe,) = free_udp_ports(1)
        edge = Node(tmp_path, "edge-1", "edge", redis_server.url, {"LOA_SEND_PORT": str(pe)})
        nodes.append(edge)
        st, rx = active.post("/api/v1/receivers", {"zone": "xa-nhon-ly", "name": "Loa chợ"})
        assert st == 201
        wait_for("the secret at the edge", lambda: edge.get("/health")[1]["secrets"] >= 1, 10)
        r = ThreadedReceiver(rx["id"], decode_secret(rx["secret"]), ("127.0.0.1", pe))
        wait_for("registration", lambda: r.session.registered, 10)
        st, bc = active.post("/api/v1/broadcasts", {
            "zones": ["xa-nhon-ly"], "level": "normal",
            "source": {"kind": "tone", "freq_hz": 800, "seconds": 300}})
        assert st == 201
        t_start = time.time()
        wait_for("audio through the edge", lambda: r.decoded > 50, 10)
        # what is on air is in Redis, with the leader's token
        wait_for("on air in Redis", lambda: red.sismember("loa:onair", bc["id"]), 5)
        took: list[float] = []
        for trial in range(TRIALS):
            time.sleep(2.0)                        # mid-programme
            ssrc = r.fr.rx.jitter.ssrc
            fence = int(red.get("loa:lease:leader:fence"))
            t_kill = time.time()
            active.kill9()
            t0 = time.monotonic()
            base = r.decoded
            try:
                wait_for("playing again", lambda b=base, s=ssrc: r.decoded >= b + 25
                         and r.fr.rx.jitter.ssrc != s, 15, interval=0.02)
            except AssertionError:
                print("edge:", edge.get("/health")[1], "\nreceiver:", r.session.counters,
                      r.fr.rx.jitter.stats, r.decoded, base)
                raise
            took.append(time.monotonic() - t0)
            print(f"\ntrial {trial}: origin killed -> the standby on air at the receiver in "
                  f"{took[-1]:.2f} s")
            wait_for("the standby serves", lambda s=standby: _up(s), 5)
            # the same broadcast, carried on from where it had got to, under a higher token
            snap = standby.get(f"/api/v1/broadcasts/{bc['id']}")[1]
            assert snap["state"] == "playing", snap
            assert int(red.get("loa:lease:leader:fence")) > fence
            cl = standby.get("/api/v1/health")[1]["cluster"]
            assert cl["leader"] and cl["on_air"] == [bc["id"]], cl
            (carried,) = [x for x in cl["took_over"] if x["broadcast"] == bc["id"]]
            # at the offset reached by now: at least the time since it started until the kill
            assert carried["resumed"] and carried["offset_s"] >= t_kill - t_start - 1.0, carried
            assert carried["offset_s"] <= time.time() - t_start + 1.0, carried
            # the killed one comes back as the standby
            active, standby = standby, origin(f"origin-{trial}-again", False)
            wait_for("the new standby waits",
                     lambda s=standby: "standby origin" in s.output(), 15)
            # ready: its HTTP answers (503 until it has the database; it serves once its TTS
            # workers are warm, which takes seconds on a loaded machine)
            wait_for("the new standby ready", lambda s=standby: _health(s) == 503, 40)
        took.sort()
        print(f"takeover times: {[round(t, 2) for t in took]}")
        assert max(took) < 10.0, took
    finally:
        if r is not None:
            r.stop()
        for n in nodes:
            n.stop()
