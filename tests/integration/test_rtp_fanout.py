"""The batched fan-out sender on real sockets on loopback: every receiver gets one copy,
membership changes, failing destinations, worker processes, DF, the receive socket. (The error
paths the kernel will not produce on demand are in tests/unit/test_rtp_fanout.py, with a
scripted sendmmsg.)"""
from __future__ import annotations

import errno
import os
import select
import signal
import socket
import time

import pytest

from streamer.rtp import sendmmsg as sm
from streamer.rtp.fanout import Fanout

IP_PKTINFO = getattr(socket, "IP_PKTINFO", 8)


def loop_addrs(n: int, port: int, base: int = 0) -> list[tuple[str, int]]:
    return [(f"127.0.{(base + i) // 250}.{(base + i) % 250 + 1}", port) for i in range(n)]


class Sink:
    """One socket on 0.0.0.0:PORT receives every 127.x.y.z:PORT; IP_PKTINFO says which."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16 << 20)
        self.sock.setsockopt(socket.IPPROTO_IP, IP_PKTINFO, 1)
        self.sock.bind(("0.0.0.0", 0))
        self.sock.setblocking(False)
        self.port = self.sock.getsockname()[1]

    def drain(self, expect: int | None = None, timeout: float = 3.0) -> list[tuple[str, bytes]]:
        got: list[tuple[str, bytes]] = []
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            r, _, _ = select.select([self.sock], [], [], 0.05 if expect is None else 0.2)
            if not r:
                if expect is None or len(got) >= expect:
                    break
                continue
            for _ in range(100_000):
                try:
                    data, anc, _, _ = self.sock.recvmsg(2048, 64)
                except BlockingIOError:
                    break
                dst = next(socket.inet_ntoa(d[8:12]) for lvl, typ, d in anc if typ == IP_PKTINFO)
                got.append((dst, data))
        return got

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def sink():
    s = Sink()
    yield s
    s.close()


def test_bad_address_is_refused_at_membership_time():
    f = Fanout()
    try:
        with pytest.raises(ValueError):
            f.set_destinations("z", [("no-such-host.invalid", 5006)])
        with pytest.raises(ValueError):
            f.set_destinations("z", [("127.0.0.1", 70000)])
    finally:
        f.close()


@pytest.mark.parametrize("use_sendmmsg", [True, False])
def test_large_n_every_receiver_gets_exactly_one_copy(sink, use_sendmmsg):
    n = 3000
    f = Fanout(batch=512, use_sendmmsg=use_sendmmsg)
    try:
        f.set_destinations("z1", loop_addrs(n, sink.port))
        assert f.send(b"\x80\x6f" + bytes(98), ["z1"]) == n
        got = sink.drain(expect=n)
    finally:
        f.close()
    dsts = [d for d, _ in got]
    assert len(dsts) == n and len(set(dsts)) == n
    assert {d for d, _ in got} == {h for h, _ in loop_addrs(n, sink.port)}
    assert all(data == b"\x80\x6f" + bytes(98) for _, data in got)
    st = f.stats()
    assert st["sent"] == n and st["dropped"] == 0 and st["errors"] == 0
    if use_sendmmsg and sm.AVAILABLE:
        assert st["syscalls"] == 6  # ceil(3000 / 512)


def test_address_in_two_keys_is_sent_once_and_union_spans_keys(sink):
    f = Fanout()
    try:
        a = loop_addrs(30, sink.port)
        f.set_destinations("z1", a[:20])
        f.set_destinations("z2", a[10:])
        f.set_destinations("empty", [])
        assert f.send(b"abc", ("z1", "z2", "empty", "unknown")) == 30
        got = sink.drain(expect=30)
        assert sorted(d for d, _ in got) == sorted(h for h, _ in a)
        assert f.send(b"one", ["z2"]) == 20
        assert sorted(d for d, _ in sink.drain(expect=20)) == sorted(h for h, _ in a[10:])
        assert f.send(b"none", ["unknown"]) == 0
    finally:
        f.close()


def test_membership_change_takes_effect_on_the_next_send(sink):
    f = Fanout()
    try:
        a = loop_addrs(10, sink.port)
        f.set_destinations("z1", a[:5])
        f.send(b"1", ("z1",))
        assert {d for d, _ in sink.drain(expect=5)} == {h for h, _ in a[:5]}
        f.set_destinations("z1", a[3:10])
        f.send(b"2", ("z1",))
        assert {d for d, _ in sink.drain(expect=7)} == {h for h, _ in a[3:10]}
        f.set_destinations("z1", [])
        assert f.send(b"3", ("z1",)) == 0
        assert sink.drain(timeout=0.3) == []
        assert f.destinations("z1") == [] and f.stats()["destinations"] == 0
    finally:
        f.close()


def test_real_failing_destinations_do_not_stall_the_others(sink):
    # Port 0 (EINVAL) and the limited broadcast address without SO_BROADCAST (EACCES) fail in
    # the kernel before anything is sent: nothing leaves the machine.
    good = loop_addrs(20, sink.port)
    addrs = good[:7] + [("127.0.0.1", 0)] + good[7:15] + [("255.255.255.255", sink.port)] + good[15:]
    f = Fanout(batch=4)
    try:
        f.set_destinations("z1", addrs)
        assert f.send(b"x", ("z1",)) == 20
        got = sink.drain(expect=20)
        assert sorted(d for d, _ in got) == sorted(h for h, _ in good)
        st = f.stats()
        assert st["sent"] == 20 and st["errors"] == 2
        assert f.error_counts() == {errno.EINVAL: 1, errno.EACCES: 1}
    finally:
        f.close()


def test_worker_shards_deliver_everything_and_follow_membership(sink):
    n = 2000
    a = loop_addrs(n, sink.port)
    f = Fanout(workers=2)
    try:
        pids = f.worker_pids()
        assert len(pids) == 2 and os.getpid() not in pids
        f.set_destinations("z1", a[:1500])
        f.set_destinations("z2", a[1000:])
        for i in range(3):
            assert f.send(bytes([i]) * 60, ("z1", "z2")) == n
        got = sink.drain(expect=3 * n, timeout=5)
        assert len(got) == 3 * n
        per = {}
        for d, data in got:
            per.setdefault(d, []).append(data[0])
        assert len(per) == n and all(sorted(v) == [0, 1, 2] for v in per.values())
        # The source port is the Fanout's own socket for every shard.
        f.set_destinations("z2", [])
        assert f.send(b"\x07" * 60, ("z1", "z2")) == 1500
        got = sink.drain(expect=1500, timeout=5)
        assert sorted(d for d, _ in got) == sorted(h for h, _ in a[:1500])
        deadline = time.monotonic() + 3
        while f.stats()["sent"] < 3 * n + 1500 and time.monotonic() < deadline:
            time.sleep(0.02)
        st = f.stats()
        assert st["sent"] == 3 * n + 1500 and st["dropped"] == 0 and st["workers_alive"] == 2
    finally:
        f.close()
    for pid in pids:  # closed: workers are gone
        with pytest.raises(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)


def test_workers_get_a_many_zone_union_once_then_4_bytes_per_tick(sink):
    """3,000 zones on one programme through 2 workers: the zones' key ids go to each worker
    once; a tick's message is the packet plus a union id, and every receiver gets it."""
    n = 3000
    a = loop_addrs(n, sink.port)
    f = Fanout(workers=2, max_lag_ms=0)   # 3,000 memberships first: no tick is too late here
    try:
        for i in range(n):
            f.set_destinations(f"z{i}", [a[i]])
        keys = tuple(f"z{i}" for i in range(n))
        sizes = []
        class Spy:
            def __init__(self, sock):
                self.sock = sock

            def send(self, m):
                sizes.append(len(m))
                return self.sock.send(m)

            def __getattr__(self, name):
                return getattr(self.sock, name)
        for w in f._pool.workers:
            w.ctl = Spy(w.ctl)
        for i in range(3):
            assert f.send(bytes([i]) * 60, keys) == n
        got = sink.drain(expect=3 * n, timeout=5)
        assert len(got) == 3 * n and len({d for d, _ in got}) == n
        union_msgs = [x for x in sizes if x > 1000]
        assert len(union_msgs) == 2                     # one definition per worker
        # "S" + id + hand-over time + 60 bytes
        assert sorted(x for x in sizes if x <= 1000) == [73] * 6
        # a new tuple object with the same zones is the same union: no new definition
        assert f.send(b"\x09" * 60, tuple(keys)) == n
        assert len([x for x in sizes if x > 1000]) == 2
        sink.drain(expect=n, timeout=5)
    finally:
        f.close()


def test_a_dead_worker_is_restarted_with_its_shard(sink):
    a = loop_addrs(200, sink.port)
    f = Fanout(workers=2)
    try:
        f.set_destinations("z1", a)
        victim = f.worker_pids()[0]
        os.kill(victim, signal.SIGKILL)
        deadline = time.monotonic() + 3
        while f._pool.workers[0].proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        # Sends while the worker is dead are counted as dropped, then it is restarted.
        for _ in range(3):
            f.send(b"lost?", ("z1",))
        assert f.stats()["worker_restarts"] >= 1
        sink.drain(timeout=0.5)
        time.sleep(1.1)  # restarts are rate-limited to one a second
        f.send(b"after", ("z1",))
        got = [d for d, data in sink.drain(expect=200, timeout=5) if data == b"after"]
        assert sorted(got) == sorted(h for h, _ in a)
        assert victim not in f.worker_pids()
    finally:
        f.close()


def test_membership_changes_never_wait_for_a_busy_worker(sink):
    """A worker that does not read (stopped here; in life: busy sending to 10,000 receivers)
    must not make set_destinations block the tick or the API: the change is queued (only the
    latest per zone kept), ticks for that worker are dropped and counted meanwhile, and once it
    reads again it gets the newest membership before any later packet."""
    a = loop_addrs(4000, sink.port)
    f = Fanout(workers=1)
    pid = f.worker_pids()[0]
    try:
        f.set_destinations("z1", a[:10])
        assert f.send(b"first", ("z1",)) == 10
        sink.drain(expect=10, timeout=5)
        os.kill(pid, signal.SIGSTOP)
        for _ in range(20000):                   # fill its control socket
            f.send(b"x" * 1000, ("z1",))
            if f.stats()["worker_queue_drops"]:
                break
        assert f.stats()["worker_queue_drops"] >= 1
        t0 = time.monotonic()
        for n in (1000, 2000, 3000, 4000):       # four changes; only the last matters
            f.set_destinations("z1", a[:n])
        assert time.monotonic() - t0 < 0.5
        drops = f.stats()["worker_queue_drops"]
        f.send(b"while-stopped", ("z1",))
        assert f.stats()["worker_queue_drops"] == drops + 1
        os.kill(pid, signal.SIGCONT)
        sink.drain(timeout=1.0)                  # what was queued before the stop
        deadline = time.monotonic() + 5
        while f._pool.workers[0].outbox and time.monotonic() < deadline:
            f._pool._flush(f._pool.workers[0])
            time.sleep(0.01)
        assert not f._pool.workers[0].outbox
        f.send(b"after", ("z1",))
        got = [d for d, data in sink.drain(expect=4000, timeout=5) if data == b"after"]
        assert sorted(got) == sorted(h for h, _ in a)
    finally:
        try:
            os.kill(pid, signal.SIGCONT)
        except ProcessLookupError:
            pass
        f.close()


def test_many_zones_on_one_program_cost_one_union_and_resync_is_cheap(sink):
    # 5,000 zones × 2 receivers all hearing one program: one cached union, one batched sequence.
    n_zones = 5000
    addrs = loop_addrs(2 * n_zones, sink.port)
    keys = [f"z{i}" for i in range(n_zones)]
    f = Fanout(batch=1024)
    try:
        t0 = time.perf_counter()
        for i, k in enumerate(keys):
            f.set_destinations(k, addrs[2 * i:2 * i + 2])
        assert f.send(b"a", keys) == 2 * n_zones
        assert len({d for d, _ in sink.drain(expect=2 * n_zones, timeout=5)}) == 2 * n_zones
        # The engine re-announces every zone when the tree changes: unchanged ones cost no
        # rebuild, and the cached union survives.
        for i, k in enumerate(keys):
            f.set_destinations(k, addrs[2 * i:2 * i + 2])
        elapsed = time.perf_counter() - t0
        assert elapsed < 2.0, elapsed
        syscalls = f.stats()["syscalls"]
        assert f.send(b"b", keys) == 2 * n_zones
        assert f.stats()["syscalls"] - syscalls == 10  # ceil(10,000 / 1,024)
        got = sink.drain(expect=2 * n_zones, timeout=5)
        assert len(got) == 2 * n_zones and len({d for d, _ in got}) == 2 * n_zones
    finally:
        f.close()


def test_packets_go_out_with_df_set_and_path_mtu_ignored():
    """IP_PMTUDISC_PROBE: DF set (IP ID 0, no hashed ID generator per packet), and a learnt
    path MTU never turns a small RTP packet into an EMSGSIZE."""
    with Fanout(("127.0.0.1", 0)) as f:
        assert f.sock.getsockopt(socket.IPPROTO_IP, 10) == 3


def test_incoming_datagrams_go_to_the_listening_socket_never_the_send_socket():
    """The send socket has nobody waiting on it (no wake-up per sent packet): every datagram
    to the media port lands on listen_sock, and media leaves from that same port."""
    with Fanout(("127.0.0.1", 0)) as f:
        assert f.listen_sock is not f.sock
        port = f.sock.getsockname()[1]
        assert f.listen_sock.getsockname() == ("127.0.0.1", port)
        peers = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(8)]
        try:
            for i, p in enumerate(peers):   # different source ports: different reuseport hashes
                p.bind(("127.0.0.1", 0))
                for k in range(5):
                    p.sendto(b"hb%d-%d" % (i, k), ("127.0.0.1", port))
            got = []
            deadline = time.monotonic() + 2
            while len(got) < 40 and time.monotonic() < deadline:
                if select.select([f.listen_sock], [], [], 0.1)[0]:
                    got.append(f.listen_sock.recvfrom(100)[0])
            assert len(got) == 40
            with pytest.raises(BlockingIOError):
                f.sock.recv(100)
            f.sock.sendto(b"media", peers[3].getsockname())
            data, src = peers[3].recvfrom(100)
            assert (data, src) == (b"media", ("127.0.0.1", port))
        finally:
            for p in peers:
                p.close()


def test_a_taken_media_port_is_refused_even_by_another_loa():
    """The reuseport pair must not let a second server join the first one's port silently."""
    with Fanout(("127.0.0.1", 0)) as f:
        port = f.sock.getsockname()[1]
        with pytest.raises(OSError) as e:
            Fanout(("127.0.0.1", port))
        assert e.value.errno == errno.EADDRINUSE
        plain = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        with pytest.raises(OSError):
            plain.bind(("127.0.0.1", port))
        plain.close()
    again = Fanout(("127.0.0.1", port))   # closed: the port is free again
    again.close()
