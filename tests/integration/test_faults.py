"""Faults injected into a real `loa serve` (issue 13, finding 5): alerts and their records
survive crashes and faults.

- kill -9 during an emergency with repeats left → restart → it resumes from the start of the
  repeat it was in, attention signal first, and its record says "resumed after restart";
- the data directory on a small tmpfs, filled up → emergencies still air, writes answer 503
  (sign-in too: never 500), the as-run and audit records land once space returns (journal),
  and a restart on the full disk serves (read-only, alarm) or exits with a clear message;
- the database locked by another connection (BEGIN EXCLUSIVE for 10 s) → token-authenticated
  reads answer within ~1 s, writes 503, nothing lost;
- a second server on the same data directory exits at once, naming the first one's PID.

Each test prints what was injected and what was lost (`pytest -s`): the figures of the issue.
"""
from __future__ import annotations

import os
import signal
import socket
import sqlite3
import subprocess
import threading
import time
from pathlib import Path

import pytest

from tests.conftest import require_root, require_tool

from streamer.ingest.catalogue import attention_part
from tests.integration.conftest import LOA, ROOT, Server, free_port, free_udp_ports

pytestmark = pytest.mark.integration

TOKEN = "fault-test-admin-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
ENV = {"LOA_ADMIN_TOKEN": TOKEN, "LOA_JOURNAL_RESERVE_KB": "256"}


def toml(port: int) -> str:
    return f'[[zones]]\nid = "xa"\nname = "Xã Nhơn Lý"\nunicast = ["127.0.0.1:{port}"]\n'


def api(srv: Server, method: str, path: str, body=None, token: str = TOKEN,
        timeout: float = 15.0):
    return srv.request(method, "/api/v1" + path, body, timeout=timeout,
                       headers={"Authorization": f"Bearer {token}"})


def wait_for(fn, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = fn()
        if v:
            return v
        time.sleep(0.1)
    raise AssertionError(f"{what}: not within {timeout} s")


def emergency(srv: Server, seconds: float = 1.5, **kw) -> str:
    st, b = api(srv, "POST", "/broadcasts", {
        "zones": ["xa"], "level": "emergency",
        "source": {"kind": "tone", "freq_hz": 880, "seconds": seconds}, **kw})
    assert st == 201, b
    return b["id"]


def wait_done(srv: Server, bid: str, timeout: float) -> dict:
    return wait_for(lambda: (lambda b: b if b.get("state") in ("finished", "stopped") else None)(
        api(srv, "GET", f"/broadcasts/{bid}")[1]), timeout, f"broadcast {bid} ended")


def asrun_types(srv: Server, bid: str) -> list[str]:
    st, r = api(srv, "GET", f"/asrun?broadcast={bid}")
    assert st == 200, r
    return [e["type"] for e in r["events"]]


def audit(srv: Server) -> list[dict]:
    st, r = api(srv, "GET", "/audit?limit=10000")
    assert st == 200, r
    return r["entries"]


def storage(srv: Server) -> dict:
    st, h = srv.request("GET", "/api/v1/health", headers=AUTH)
    assert st == 200, h
    return h["storage"]


class Listener:
    """Counts RTP packets arriving at a zone's unicast destination."""

    def __init__(self, port: int) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", port))
        self.sock.settimeout(0.2)
        self.packets = 0
        self._stop = False
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self._stop:
            try:
                self.sock.recv(2048)
                self.packets += 1
            except OSError:
                continue

    def close(self) -> None:
        self._stop = True
        self.thread.join(2)
        self.sock.close()


def kill9(srv: Server) -> None:
    os.killpg(srv.proc.pid, signal.SIGKILL)
    srv.proc.wait(10)


# ------------------------------------------------------------------ crash
def test_kill9_during_an_emergency_resumes_it_from_its_current_repeat(tmp_path):
    port, = free_udp_ports(1)
    rx = Listener(port)
    chime = attention_part("chime").duration_s
    msg, pause, repeats = 4.0, 1.0, 3
    srv = Server(tmp_path, toml(port), ENV)
    srv2 = None
    try:
        bid = emergency(srv, msg, repeat=repeats, repeat_pause_s=pause)
        second = chime + (msg + pause)  # where the second repeat starts
        wait_for(lambda: (api(srv, "GET", f"/broadcasts/{bid}")[1].get("position_s") or 0)
                 >= second + 0.5, 20, "the second repeat")
        time.sleep(1.5)  # a position checkpoint (every second) inside the second repeat
        at_kill = api(srv, "GET", f"/broadcasts/{bid}")[1]["position_s"]
        assert at_kill < second + msg, at_kill  # still in the second repeat
        kill9(srv)
        t0 = time.monotonic()
        srv2 = Server(tmp_path, toml(port), ENV)
        b = wait_for(lambda: (lambda r: r if r.get("source", {}).get("recovered") else None)(
            api(srv2, "GET", f"/broadcasts/{bid}")[1]), 10, "the resumed broadcast")
        back_s = time.monotonic() - t0
        rec = b["source"]["recovered"]
        assert rec["note"] == "resumed after restart", rec
        assert (rec["repeat"], rec["repeats"]) == (2, 3), rec
        assert b["state"] in ("playing", "queued"), b
        # attention signal first, then the two repeats left (the first does not air again)
        assert b["duration_s"] == pytest.approx(chime + 2 * msg + pause, abs=0.05), b
        before = rx.packets
        wait_for(lambda: rx.packets > before + 25, 5, "packets of the resumed emergency")
        done = wait_done(srv2, bid, timeout=chime + 2 * msg + pause + 10)
        assert done["state"] == "finished", done
        types = asrun_types(srv2, bid)
        assert "broadcast.interrupted" in types and "broadcast.recovered" in types, types
        assert types.index("broadcast.interrupted") < types.index("broadcast.recovered")
        assert types[-1] == "broadcast.finished", types
        st, r = api(srv2, "GET", f"/asrun?broadcast={bid}&type=broadcast.recovered")
        assert r["events"][0]["reason"] == "resumed after restart"
        print(f"\nFAULT kill -9 at {at_kill:.1f} s of an emergency (3 repeats, in the 2nd): "
              f"resumed from repeat {rec['repeat']}/{rec['repeats']} with the chime, "
              f"{back_s:.1f} s after the kill; records lost: 0")
    finally:
        for s in (srv2, srv):
            if s is not None:
                s.stop()
        rx.close()


def test_a_normal_broadcast_is_not_resumed_and_says_interrupted(tmp_path):
    port, = free_udp_ports(1)
    srv = Server(tmp_path, toml(port), ENV)
    srv2 = None
    try:
        st, b = api(srv, "POST", "/broadcasts", {
            "zones": ["xa"], "level": "normal",
            "source": {"kind": "tone", "freq_hz": 440, "seconds": 30}})
        assert st == 201, b
        time.sleep(1.5)
        kill9(srv)
        srv2 = Server(tmp_path, toml(port), ENV)
        got = wait_for(lambda: (lambda r: r if r.get("state") == "interrupted" else None)(
            api(srv2, "GET", f"/broadcasts/{b['id']}")[1]), 5, "interrupted")
        assert "recovered" not in got["source"]
        assert "broadcast.recovered" not in asrun_types(srv2, b["id"])
    finally:
        for s in (srv2, srv):
            if s is not None:
                s.stop()


# ------------------------------------------------------------------ a full disk
def _mount_tmpfs(path: Path, size: str) -> None:
    path.mkdir(parents=True, exist_ok=True)
    require_root("a full disk is a small tmpfs mounted for the test")
    mount = require_tool("mount", "a full disk is a small tmpfs mounted for the test")
    r = subprocess.run([mount, "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                       capture_output=True, text=True, timeout=10)
    if r.returncode != 0:
        pytest.fail(f"cannot mount a tmpfs at {path}: {r.stderr.strip()}", pytrace=False)


def _fill(path: Path) -> int:
    """Fill the file system holding `path` (returns the bytes written)."""
    n = 0
    with open(path / "fill", "ab", buffering=0) as f:
        chunk = b"\xa5" * 4096
        while True:
            try:
                n += f.write(chunk)
            except OSError:
                break
    return n


@pytest.fixture
def small_disk(tmp_path):
    data = tmp_path / "data"
    _mount_tmpfs(data, "2m")
    yield data
    subprocess.run(["umount", "-l", str(data)], capture_output=True, timeout=10)


def test_a_full_disk_keeps_airing_answers_503_and_loses_no_record(tmp_path, small_disk):
    port, = free_udp_ports(1)
    rx = Listener(port)
    srv = Server(tmp_path, toml(port), ENV)
    srv2 = None
    try:
        st, u = api(srv, "POST", "/users", {"username": "an.nv", "role": "official",
                                            "scope": ["xa"], "password": "mật-khẩu-dài-1"})
        assert st == 201, u
        filled = _fill(small_disk)
        # writes: 503, never 500 (and the sign-in: the session row cannot be stored)
        codes = []
        for i in range(3):
            st, r = api(srv, "POST", "/users", {"username": f"u{i}", "role": "viewer",
                                                "password": "mật-khẩu-dài-2"})
            codes.append(st)
            assert st == 503 and r["error"]["code"] == "storage_unavailable", (st, r)
        st, r = srv.request("POST", "/api/v1/session",
                            {"username": "an.nv", "password": "mật-khẩu-dài-1"})
        codes.append(st)
        assert st in (200, 201, 503), (st, r)
        # emergencies air all the same
        before = rx.packets
        ids = [emergency(srv, 1.0), emergency(srv, 1.0)]
        for bid in ids:
            assert wait_done(srv, bid, timeout=15)["state"] == "finished"
        aired = rx.packets - before
        assert aired > 80, aired
        s = wait_for(lambda: (lambda s: s if not s["writable"] else None)(storage(srv)), 10,
                     "the storage alarm")
        assert s["backlog"] > 0 and s["alarm"] and "full" in s["alarm"], s
        st, h = srv.request("GET", "/api/v1/health", headers=AUTH)
        assert h["status"] == "degraded"
        st, m = srv.request("GET", "/metrics", headers=AUTH)
        assert "loa_storage_writable 0.0" in m and "loa_records_backlog" in m
        backlog = s["backlog"]
        # space returns: everything lands, in order, nothing twice
        (small_disk / "fill").unlink()
        wait_for(lambda: (lambda s: s["writable"] and s["backlog"] == 0)(storage(srv)), 15,
                 "the backlog written")
        for bid in ids:
            types = asrun_types(srv, bid)
            assert types.count("broadcast.started") == 1, types
            assert types[-1] == "broadcast.finished", types
            st, b = api(srv, "GET", f"/broadcasts/{bid}")
            assert b["state"] == "finished"
        entries = audit(srv)
        posts = [e for e in entries if e["action"] == "broadcasts.start" and e["status"] == 201]
        assert len(posts) == 2, posts
        assert sum(1 for e in entries if e["status"] == 503) >= 3
        assert storage(srv)["dropped"] == 0
        print(f"\nFAULT disk full ({filled} bytes filled on a 2 MiB tmpfs): writes answered "
              f"{codes}, 2 emergencies aired ({aired} packets), backlog {backlog} records "
              "journaled, all written after space returned; records lost: 0")

        # a restart on a full disk: serves read-only with an alarm, or exits with a message
        st, b = api(srv, "POST", "/broadcasts", {"zones": ["xa"], "level": "normal",
                                                  "source": {"kind": "tone", "seconds": 60}})
        assert st == 201
        _fill(small_disk)
        kill9(srv)
        t0 = time.monotonic()
        try:
            srv2 = Server(tmp_path, toml(port), ENV)
        except RuntimeError as e:  # it exited: a clear message, no traceback, in time
            took = time.monotonic() - t0
            out = str(e)
            assert "Traceback" not in out and "full" in out, out
            print(f"FAULT restart on a full disk: exited in {took:.1f} s: "
                  f"{out.strip().splitlines()[-1]}")
        else:
            took = time.monotonic() - t0
            # SQLite may still write into the space its WAL file already owns: then the
            # server is simply writable; otherwise it says read-only with the alarm
            bid = emergency(srv2, 1.0)
            assert wait_done(srv2, bid, timeout=15)["state"] == "finished"
            s = storage(srv2)
            assert s["writable"] or s["alarm"], s
            (small_disk / "fill").unlink()
            wait_for(lambda: (lambda s: s["writable"] and s["backlog"] == 0)(storage(srv2)), 15,
                     "the backlog written after the restart")
            assert asrun_types(srv2, bid)[-1] == "broadcast.finished"
            assert "broadcast.interrupted" in asrun_types(srv2, b["id"])
            print(f"FAULT restart on a full disk: served in {took:.1f} s "
                  f"({'writable: the WAL had room' if s['writable'] else 'alarm: ' + s['alarm']})"
                  ", an emergency aired, its records landed")
    finally:
        for x in (srv2, srv):
            if x is not None:
                x.stop()
        rx.close()


# ------------------------------------------------------------------ a locked database
def test_a_locked_database_keeps_tokens_fast_answers_503_and_loses_nothing(tmp_path):
    port, = free_udp_ports(1)
    srv = Server(tmp_path, toml(port), ENV)
    try:
        st, u = api(srv, "POST", "/users", {"username": "op", "role": "operator",
                                            "scope": ["xa"]})
        assert st == 201, u
        st, t = api(srv, "POST", f"/users/{u['id']}/tokens", {"name": "script"})
        assert st == 201, t
        user_token = t["token"]
        locked = threading.Event()
        release = threading.Event()
        hold_s = 10.0

        def hold() -> None:
            c = sqlite3.connect(tmp_path / "data" / "loa.db", isolation_level=None)
            c.execute("BEGIN EXCLUSIVE")
            locked.set()
            release.wait(hold_s)
            c.execute("COMMIT")
            c.close()
        th = threading.Thread(target=hold, daemon=True)
        th.start()
        assert locked.wait(5)
        t_lock = time.monotonic()
        # writes waiting for the lock meanwhile (the same database connection, before the fix)
        writes: list[tuple[int, float]] = []

        def write(i: int) -> None:
            t0 = time.monotonic()
            st = api(srv, "POST", "/users", {"username": f"w{i}", "role": "viewer"},
                     timeout=20)[0]
            writes.append((st, time.monotonic() - t0))
        writers = [threading.Thread(target=write, args=(i,), daemon=True) for i in range(4)]
        for w in writers:
            w.start()
        time.sleep(0.3)
        reads = []
        for _ in range(5):
            t0 = time.monotonic()
            st, r = api(srv, "GET", "/zones", token=user_token, timeout=5)
            reads.append(time.monotonic() - t0)
            assert st == 200, r
            assert reads[-1] < 1.0, reads
        for w in writers:
            w.join(10)
        # queued writes share one connection: each waits out its busy timeout (1 s) in turn
        assert [w[0] for w in writes] == [503] * 4, writes
        queued_s = max(w[1] for w in writes)
        assert queued_s < 4 * 1.0 + 2.0, writes
        # once the database is known to be locked, a write waits 100 ms, not the full second
        wait_for(lambda: not storage(srv)["writable"], 5, "the storage alarm")
        t0 = time.monotonic()
        st, r = api(srv, "POST", "/users", {"username": "late", "role": "viewer"}, timeout=10)
        write_s = time.monotonic() - t0
        assert st == 503 and r["error"]["code"] == "storage_unavailable", (st, r)
        assert write_s < 0.6, write_s
        t0 = time.monotonic()
        bid = emergency(srv, 1.0)
        start_s = time.monotonic() - t0
        assert wait_done(srv, bid, timeout=10)["state"] == "finished"
        s = storage(srv)
        assert not s["writable"] and s["backlog"] > 0, s
        backlog = s["backlog"]
        assert time.monotonic() - t_lock < hold_s, "the checks took longer than the lock"
        th.join(hold_s + 5)
        wait_for(lambda: (lambda s: s["writable"] and s["backlog"] == 0)(storage(srv)), 15,
                 "the backlog written")
        types = asrun_types(srv, bid)
        assert types[:1] == ["broadcast.created"] and types[-1] == "broadcast.finished", types
        entries = audit(srv)
        assert [e["status"] for e in entries if e["action"] == "broadcasts.start"] == [201]
        assert any(e["status"] == 503 and e["action"] == "users.write" for e in entries)
        assert storage(srv)["dropped"] == 0
        print(f"\nFAULT database locked {hold_s:.0f} s (BEGIN EXCLUSIVE): token reads "
              f"{max(reads) * 1000:.0f} ms at most (4 writes queued meanwhile, 503 after "
              f"{queued_s:.1f} s at most), POST /users 503 in {write_s:.2f} s, an "
              f"emergency started in {start_s * 1000:.0f} ms and aired, backlog {backlog} "
              "records written after; records lost: 0")
    finally:
        srv.stop()


# ------------------------------------------------------------------ one server per directory
@pytest.mark.parametrize("same_http_port", [False, True])
def test_a_second_server_on_the_same_data_dir_exits_naming_the_first(tmp_path, same_http_port):
    port, = free_udp_ports(1)
    srv = Server(tmp_path, toml(port), ENV)
    try:
        st, b = api(srv, "POST", "/broadcasts", {"zones": ["xa"], "level": "normal",
                                                  "source": {"kind": "tone", "seconds": 60}})
        assert st == 201, b
        http = srv.port if same_http_port else free_port()
        t0 = time.monotonic()
        r = subprocess.run(
            LOA + ["serve", "--config", str(srv.cfg), "--http", f"127.0.0.1:{http}",
                   "--data-dir", str(tmp_path / "data")],
            capture_output=True, text=True, timeout=30, cwd=ROOT,
            env={**os.environ, **ENV, "LOA_SEND_PORT": "0"})
        took = time.monotonic() - t0
        assert r.returncode != 0
        assert f"PID {srv.proc.pid}" in r.stderr and "in use" in r.stderr, r.stderr
        assert "Traceback" not in r.stderr
        # the first one is untouched: still serving, its broadcast still on air
        st, again = api(srv, "GET", f"/broadcasts/{b['id']}")
        assert again["state"] == "playing", again
        assert "broadcast.interrupted" not in asrun_types(srv, b["id"])
        print(f"\nFAULT second server ({'same' if same_http_port else 'other'} HTTP port): "
              f"exited in {took:.1f} s: {r.stderr.strip().splitlines()[-1]}")
    finally:
        srv.stop()
