"""`loa serve --role origin` and two `loa serve --role edge` processes with a real redis-server on
loopback (control/cluster.py): a receiver provisioned at the origin (its secret reaches the edges
sealed in Redis) and listing both edges plays the origin's programme through the first; the
edge is killed with SIGKILL mid-programme and the receiver plays again through the other edge
within 5 s. Commands: the origin's start reaches the edges with its fencing token; a command
with an older token is refused and counted; `zone.set` gives an edge its own destination."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest
import redis as sync_redis

from receivers.cli import decode_secret
from tests.integration.conftest import LOA, ROOT, free_port, free_udp_ports, wait_for
from tests.integration.redis_proc import redis_server  # noqa: F401  (fixture)
from tests.integration.test_receiver_restart import ThreadedReceiver

pytestmark = pytest.mark.integration

KEY = "cluster-key-for-process-tests-0123456789"
TOML = """
[[zones]]
id = "xa-nhon-ly"
name = "Xã Nhơn Lý"
"""


class Node:
    def __init__(self, tmp: Path, name: str, role: str, redis_url: str, env: dict, *,
                 data_dir: Path | None = None, wait: bool = True) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = open(tmp / f"{name}.log", "w+b")
        cfg = tmp / "loa.toml"
        cfg.write_text(TOML, encoding="utf-8")
        args = ["serve", "--role", role, "--http", f"127.0.0.1:{self.port}"]
        if role != "edge":
            args += ["--config", str(cfg), "--data-dir", str(data_dir or tmp / f"{name}-data")]
        e = {**os.environ, "PYTHONUNBUFFERED": "1", "LOA_REDIS_URL": redis_url,
             "LOA_CLUSTER_KEY": KEY, "LOA_NODE_ID": name, "LOA_RECEIVER_HEARTBEAT_S": "1",
             "LOA_FANOUT_WORKERS": "0", "LOA_ENGINE_REALTIME": "false", "LOA_SEND_PORT": "0",
             **env}
        self.proc = subprocess.Popen(LOA + args, stdout=self.log, stderr=subprocess.STDOUT,
                                     env=e, cwd=ROOT, start_new_session=True)
        if wait:
            wait_for(f"{name} up", lambda: self._up(), 60)   # a bound, not a speed claim

    def _up(self) -> bool:
        if self.proc.poll() is not None:
            raise RuntimeError(f"exited: {self.output()}")
        try:
            return self.get("/api/v1/health")[0] == 200
        except OSError:
            return False

    def output(self) -> str:
        self.log.flush()
        self.log.seek(0)
        return self.log.read().decode(errors="replace")

    def get(self, path: str) -> tuple[int, dict]:
        with urllib.request.urlopen(self.url + path, timeout=5) as r:
            return r.status, json.loads(r.read())

    def post(self, path: str, body: dict) -> tuple[int, dict]:
        req = urllib.request.Request(self.url + path, data=json.dumps(body).encode(),
                                     method="POST", headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, json.loads(r.read())

    def kill9(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(5)

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        self.log.close()


@pytest.fixture
def cluster(tmp_path, redis_server):  # noqa: F811
    nodes: list[Node] = []

    def start(name: str, role: str, env: dict | None = None) -> Node:
        n = Node(tmp_path, name, role, redis_server.url, env or {})
        nodes.append(n)
        return n
    yield start
    for n in nodes:
        n.stop()


def test_receiver_plays_through_an_edge_and_survives_its_kill(cluster, redis_server):  # noqa: F811
    pa, pb = free_udp_ports(2)
    origin = cluster("origin-1", "origin", {"LOA_SEND_PORT": "0"})
    a = cluster("edge-a", "edge", {"LOA_SEND_PORT": str(pa)})
    b = cluster("edge-b", "edge", {"LOA_SEND_PORT": str(pb)})
    st, rx = origin.post("/api/v1/receivers", {"zone": "xa-nhon-ly", "name": "Loa chợ"})
    assert st == 201
    # the secret reaches both edges (sealed in Redis), not the database
    for e in (a, b):
        wait_for("secrets at the edge", lambda e=e: e.get("/health")[1]["secrets"] >= 1, 10)
    r = ThreadedReceiver(rx["id"], decode_secret(rx["secret"]), ("127.0.0.1", pa))
    r.session.servers.append(("127.0.0.1", pb))
    try:
        wait_for("registration at edge a", lambda: r.session.registered, 10)
        st, bc = origin.post("/api/v1/broadcasts", {
            "zones": ["xa-nhon-ly"], "level": "normal",
            "source": {"kind": "tone", "freq_hz": 1000, "seconds": 60}})
        assert st == 201
        wait_for("audio through edge a", lambda: r.decoded > 50, 10)
        assert r.session.server == ("127.0.0.1", pa) and r.session.srtp
        # the origin sent nothing to the receiver itself
        assert origin.get("/api/v1/health")[0] == 200
        ha = a.get("/health")[1]
        assert ha["zones"] == ["xa-nhon-ly"] and ha["fanout"]["sent"] > 0
        # the start reached the edges through the stream, with the origin's token
        wait_for("the start at edge b", lambda: any(
            x["kind"] == "broadcast.start" and x["id"] == bc["id"]
            for x in b.get("/health")[1]["recent"]), 5)
        # the receiver directory says which edge holds it
        red = sync_redis.Redis.from_url(redis_server.url)
        wait_for("directory", lambda: red.hget(f"loa:rx:{rx['id']}", "edge") == b"edge-a", 5)

        a.kill9()                                  # mid-programme
        t0 = time.monotonic()
        base = r.decoded
        wait_for("audio through edge b", lambda: r.session.server == ("127.0.0.1", pb)
                 and r.decoded >= base + 25, 10, interval=0.02)
        took = time.monotonic() - t0
        print(f"\nedge killed -> playing again through the other edge: {took:.2f} s, "
              f"session {r.session.counters}")
        assert took < 5.0, took
        assert b.get("/health")[1]["zones"] == ["xa-nhon-ly"]
        # the registry entry moved: edge-b holds it, edge-a's set no longer has it
        wait_for("directory moved", lambda: red.hget(f"loa:rx:{rx['id']}", "edge") == b"edge-b",
                 5)
        assert not red.sismember("loa:edge:edge-a:rx", rx["id"])
        # the dead edge leaves the registry by itself (TTL)
        wait_for("edge-a expired", lambda: not red.exists("loa:node:edge-a"), 10)
    finally:
        r.stop()


def test_edges_refuse_stale_commands_and_apply_zone_destinations(cluster, redis_server):  # noqa: F811
    origin = cluster("origin-1", "origin")
    edge = cluster("edge-a", "edge")
    red = sync_redis.Redis.from_url(redis_server.url)
    fence = int(red.get("loa:lease:leader:fence"))
    wait_for("the edge's group", lambda: any(
        g["name"] == b"edge:edge-a" for g in red.xinfo_groups("loa:commands")), 10)
    # a listening socket as the edge's own static destination for the zone
    sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sink.bind(("127.0.0.1", 0))
    sink.settimeout(5)
    try:
        red.xadd("loa:commands", {"fence": str(fence), "kind": "zone.set", "issuer": "test",
                                  "body": json.dumps({"zone": "xa-nhon-ly", "unicast": [
                                      f"127.0.0.1:{sink.getsockname()[1]}"]})})
        # an older token (a leader that was paused past its lease): refused, counted
        red.xadd("loa:commands", {"fence": str(fence - 1), "kind": "zone.drop", "issuer": "old",
                                  "body": json.dumps({"zone": "xa-nhon-ly"})})
        wait_for("refused", lambda: edge.get("/health")[1]["commands_refused"] == 1, 5)
        h = edge.get("/health")[1]
        assert h["zones"] == ["xa-nhon-ly"] and h["fence"] == fence
        origin.post("/api/v1/broadcasts", {"zones": ["xa-nhon-ly"], "level": "normal",
                                           "source": {"kind": "tone", "seconds": 10}})
        data, _ = sink.recvfrom(2048)                # the edge pulled the zone and sends to it
        assert data[0] >> 6 == 2                     # RTP
        # everything the edge read is acknowledged: nothing pending in its group
        wait_for("acknowledged", lambda: red.xpending("loa:commands", "edge:edge-a")["pending"]
                 == 0, 5)
        # a current-token drop is applied: the zone is no longer pulled
        red.xadd("loa:commands", {"fence": str(fence), "kind": "zone.drop", "issuer": "test",
                                  "body": json.dumps({"zone": "xa-nhon-ly"})})
        wait_for("dropped", lambda: edge.get("/health")[1]["zones"] == [], 5)
    finally:
        sink.close()
