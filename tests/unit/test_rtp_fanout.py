"""The batched fan-out sender without sockets: destination arrays as the kernel reads them, and
a scripted sendmmsg for the error paths the kernel will not produce on demand (partial counts,
EAGAIN, ECONNREFUSED). Real sockets: tests/integration/test_rtp_fanout.py."""
from __future__ import annotations

import ctypes
import errno
import socket

import pytest

from streamer.rtp import sendmmsg as sm
from streamer.rtp.sendmmsg import (BatchResult, BatchSender, DestinationArray, pack_addrs,
                                   union_packed, unpack_addrs)



def loop_addrs(n: int, port: int, base: int = 0) -> list[tuple[str, int]]:
    return [(f"127.0.{(base + i) // 250}.{(base + i) % 250 + 1}", port) for i in range(n)]


# -- packing and arrays ---------------------------------------------------------------------

def test_pack_roundtrip_and_union_keeps_first_order_without_duplicates():
    a = [("127.0.0.1", 5006), ("10.1.2.3", 1), ("239.1.2.3", 65535)]
    assert unpack_addrs(pack_addrs(a)) == a
    p1 = pack_addrs([("127.0.0.3", 1), ("127.0.0.1", 1)])
    p2 = pack_addrs([("127.0.0.1", 1), ("127.0.0.2", 1), ("127.0.0.3", 2)])
    assert unpack_addrs(union_packed([p1, p2])) == [
        ("127.0.0.3", 1), ("127.0.0.1", 1), ("127.0.0.2", 1), ("127.0.0.3", 2)]


def test_array_layout_is_what_the_kernel_reads():
    addrs = [("127.0.0.9", 5006), ("127.1.2.3", 40000)]
    arr = DestinationArray(addrs)
    for i, (host, port) in enumerate(addrs):
        m = sm.Mmsghdr.from_address(arr.msgs_addr + i * ctypes.sizeof(sm.Mmsghdr))
        name = sm.SockaddrIn.from_address(m.msg_hdr.msg_name)
        assert name.sin_family == socket.AF_INET
        assert socket.ntohs(name.sin_port) == port
        assert socket.inet_ntoa(name.sin_addr.to_bytes(4, "little")) == host
        assert m.msg_hdr.msg_iovlen == 1
        assert ctypes.addressof(m.msg_hdr.msg_iov.contents) == ctypes.addressof(arr.iov)


# -- a scripted sendmmsg: reads the real arrays, fails where the script says ---------------------

class ScriptedSyscall:
    """Replays sendmmsg semantics: sends in order, stops at the first failing message; returns
    the count if >0, else -1 with that message's errno. `max_per_call` forces short counts."""

    def __init__(self, arr: DestinationArray, fail: dict[int, list[int]] | None = None,
                 max_per_call: int | None = None) -> None:
        self.arr = arr
        self.fail = {k: list(v) for k, v in (fail or {}).items()}  # index -> errnos, consumed
        self.max_per_call = max_per_call
        self.delivered: list[tuple[str, int]] = []
        self.calls: list[tuple[int, int]] = []
        self.errno = 0

    def __call__(self, fd: int, addr: int, n: int, flags: int) -> int:
        assert flags & sm.MSG_DONTWAIT, "fan-out sends must never block"
        size = ctypes.sizeof(sm.Mmsghdr)
        first = (addr - self.arr.msgs_addr) // size
        assert (addr - self.arr.msgs_addr) % size == 0 and 0 <= first and first + n <= self.arr.n
        self.calls.append((first, n))
        count = 0
        for j in range(first, first + min(n, self.max_per_call or n)):
            errs = self.fail.get(j)
            if errs:
                if count:
                    return count  # the error is lost; the caller retries from j
                self.errno = errs.pop(0)
                return -1
            m = sm.Mmsghdr.from_address(self.arr.msgs_addr + j * size)
            name = sm.SockaddrIn.from_address(m.msg_hdr.msg_name)
            assert m.msg_hdr.msg_iov.contents.iov_len == self.arr.iov.iov_len
            self.delivered.append((socket.inet_ntoa(name.sin_addr.to_bytes(4, "little")),
                                   socket.ntohs(name.sin_port)))
            count += 1
        return count


def scripted(n: int, **kw) -> tuple[DestinationArray, ScriptedSyscall, BatchSender, list]:
    addrs = loop_addrs(n, 5006)
    arr = DestinationArray(addrs)
    arr.load(b"\x80" * 40)
    fake = ScriptedSyscall(arr, **{k: v for k, v in kw.items() if k in ("fail", "max_per_call")})
    sender = BatchSender(-1, batch=kw.get("batch", 8), eagain_limit=kw.get("eagain_limit", 4),
                         syscall=fake, errno_fn=lambda: fake.errno)
    return arr, fake, sender, addrs


def test_partial_sends_resume_where_the_kernel_stopped():
    arr, fake, sender, addrs = scripted(50, batch=16, max_per_call=5)
    res = BatchResult()
    sender.send(arr, res)
    assert fake.delivered == addrs
    assert (res.sent, res.dropped, res.errors) == (50, 0, 0)
    assert all(n <= 16 for _, n in fake.calls) and len(fake.calls) == 10


@pytest.mark.parametrize("err", [errno.ECONNREFUSED, errno.ENETUNREACH, errno.EHOSTUNREACH,
                                 errno.EACCES, errno.EINVAL])
def test_a_failing_destination_is_skipped_and_counted_the_rest_still_get_it(err):
    arr, fake, sender, addrs = scripted(40, batch=16, fail={3: [err], 17: [err], 39: [err]})
    res = BatchResult()
    sender.send(arr, res)
    assert fake.delivered == [a for i, a in enumerate(addrs) if i not in (3, 17, 39)]
    assert (res.sent, res.errors, res.dropped) == (37, 3, 0)
    assert sender.error_counts == {err: 3}


def test_eagain_drops_only_that_destination_and_continues():
    arr, fake, sender, addrs = scripted(30, batch=8, fail={5: [errno.EAGAIN], 20: [errno.EAGAIN]})
    res = BatchResult()
    sender.send(arr, res)
    assert fake.delivered == [a for i, a in enumerate(addrs) if i not in (5, 20)]
    assert (res.sent, res.dropped, res.errors) == (28, 2, 0)


def test_eintr_is_retried_not_dropped():
    arr, fake, sender, addrs = scripted(10, batch=4, fail={2: [errno.EINTR, errno.EINTR]})
    res = BatchResult()
    sender.send(arr, res)
    assert fake.delivered == addrs and res.dropped == 0 and res.errors == 0


def test_persistent_eagain_drops_the_rest_of_the_tick_then_rotates_for_fairness():
    fail = {i: [errno.EAGAIN] for i in range(10, 14)}
    arr, fake, sender, addrs = scripted(30, batch=8, eagain_limit=4, fail=fail)
    res = BatchResult()
    sender.send(arr, res)
    # 0..9 sent; 10,11,12 dropped one by one; the 4th EAGAIN in a row gives up on 13..29.
    assert fake.delivered == addrs[:10]
    assert (res.sent, res.dropped) == (10, 20)
    calls_before = len(fake.calls)
    assert calls_before < 10  # it gave up instead of spinning over the whole list
    # Next tick: those who lost out go first.
    res2 = BatchResult()
    fake.delivered.clear()
    sender.send(arr, res2)
    assert fake.delivered == addrs[13:] + addrs[:13]
    assert (res2.sent, res2.dropped) == (30, 0)


def test_every_loop_is_bounded_even_if_the_kernel_misbehaves():
    arr = DestinationArray(loop_addrs(5, 5006))
    calls = []

    def zero(fd, addr, n, flags):  # returns 0 forever: must not hang
        calls.append(n)
        return 0

    res = BatchResult()
    BatchSender(-1, batch=2, syscall=zero, errno_fn=lambda: errno.EIO).send(arr, res)
    assert res.sent == 0 and res.errors + res.dropped == 5 and len(calls) <= 40


# -- real sockets on loopback -----------------------------------------------------------------


def test_sendmmsg_is_there():
    """Loa serves from Linux: the batched sender's tests run, never skip."""
    assert sm.AVAILABLE
