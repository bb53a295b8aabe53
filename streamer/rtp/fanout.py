"""Send one packet to many receivers.

Contract used by the engine (keep it stable):
- `Fanout.set_destinations(key, addrs)`: the unicast/multicast addresses behind a key (a zone id).
  Called only when membership changes, never per tick.
- `Fanout.send(packet, keys)`: send the same bytes to every address behind these keys. Never blocks
  the caller for long; a full socket buffer drops (counted), it never stalls other receivers.
  Returns how many destinations the packet was sent to (with workers: handed to the workers).
- `Fanout.stats()`: counters for metrics (all ints).
- `Fanout.close()`.

How it sends (see sendmmsg.py): per key, the addresses are kept packed (8 bytes each). For the
set of keys a program goes to, one `DestinationArray` (sockaddr_in + mmsghdr arrays over the
deduplicated union: a receiver in two zones that hear the same program gets the packet once) is
built on first use and cached until a member key's membership changes. Each tick is then one
packet copy and ceil(n / batch) sendmmsg calls. Non-Linux: a sendto loop with the same policy.

Workers (`workers=K > 0`): receivers are sharded by address over K sender processes that share
this Fanout's UDP socket (same source port, so NAT mappings opened by receivers still match).
The caller's process only packs membership changes and, per tick, writes one small message per
worker (key ids + packet) on a SOCK_SEQPACKET socketpair; it never waits for the sends. A worker
that cannot keep up loses that tick (counted in `worker_queue_drops`), it never blocks the tick.
Each tick's message carries the time it was handed over, and a worker that finds it older than
`max_lag_ms` (200; 0: never) drops it (`worker_stale_drops`): a packet that late is past a
receiver's jitter buffer, and sending it would only keep every later packet late too
(measured: a worker on a loaded core built a backlog of 0.1-4 s in its socket, so an
emergency's first packet reached the wire that long after the engine handed it over).
Workers run with real-time scheduling a notch below the tick thread where permitted
(`realtime`), as the tick does: they are the other half of the real-time path.
Counters come back through a shared memory page. A worker that dies is restarted and given its
shard again.
"""
from __future__ import annotations

import collections
import mmap
import os
import socket
import struct
import subprocess
import sys
import threading
import time
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from collections.abc import Set as AbstractSet
from itertools import compress
from typing import Any, Generic, TypeVar

import numpy as np

from streamer.rtp.sendmmsg import (AVAILABLE, BatchResult, BatchSender, DestinationArray,
                                   pack_addrs, sendto_all, union_packed, unpack_addrs)

_UNION_CACHE = 256          # distinct key sets kept (programs × their zone sets)
_CHUNK = 4096               # addresses per membership message to a worker
_PREPARED_KEPT = 16         # destination lists packed ahead (Fanout.prepare)
_PACK_MEMO_MAX = 200_000    # addresses whose packed form is remembered (~100 B each)
_STAT_FIELDS = ("sent", "dropped", "errors", "calls", "sends", "destinations", "pid", "alive",
                "stale", "max_lag_us")
_STAT = struct.Struct(f"<{len(_STAT_FIELDS)}q")
_IP_MTU_DISCOVER = 10       # Linux <netinet/in.h>; not exported by Python's socket module
_IP_PMTUDISC_PROBE = 3
_MSG_SEND = b"S"    # S, union id (u32), handed over at (monotonic ns, i64), packet
_STAMP = struct.Struct("<q")
_WORKER_FIFO_PRIORITY = 9   # one below the tick thread's (streamer.clock): the tick preempts
_MSG_UNION = b"U"   # U, union id (u32), count (u32), key ids (u32 each): defined once
_MSG_DEST = b"D"
_MSG_EXIT = b"X"
_MAX_UNIONS = 4096  # union ids defined to workers before they are all forgotten and reused

_Keys = tuple[object, ...]   # the keys (zone ids; key ids in a worker) a packet goes to
_Addr = tuple[str, int]
#: a sendable union: (destinations, their array when sending in-process with sendmmsg, else
#: their address list when sending with sendto, else None)
_Union = tuple[int, DestinationArray | None, list[_Addr] | None]
_V = TypeVar("_V")


_SO_ATTACH_REUSEPORT_CBPF = 51   # Linux <asm-generic/socket.h>
_BPF_RET_K = 0x06                # BPF_RET | BPF_K


def _steer_to_first(sock: socket.socket) -> None:
    """Attach to sock's reuseport group a one-instruction classic BPF program, `ret #0`: every
    datagram goes to the group's first socket (the one bound first)."""
    import ctypes
    insn = ctypes.create_string_buffer(struct.pack("=HBBI", _BPF_RET_K, 0, 0, 0))
    prog = struct.pack("HP", 1, ctypes.addressof(insn))   # struct sock_fprog {len; filter*}
    sock.setsockopt(socket.SOL_SOCKET, _SO_ATTACH_REUSEPORT_CBPF, prog)


class _ByIdentity(Generic[_V]):
    """Values for key tuples that the caller passes again as the same object. The engine
    passes the same key tuple every tick while its plan holds; hashing a tuple of 5,000 zone ids
    costs ~100 µs, so such a tuple is found by identity first. Holds each tuple, so its id
    cannot be reused while it is here."""

    def __init__(self) -> None:
        self._d: dict[int, tuple[_Keys, _V]] = {}

    def get(self, keys: _Keys) -> _V | None:
        hit = self._d.get(id(keys))
        return hit[1] if hit is not None and hit[0] is keys else None

    def put(self, keys: _Keys, value: _V) -> None:
        if len(self._d) >= _UNION_CACHE:
            self._d.clear()
        self._d[id(keys)] = (keys, value)

    def clear(self) -> None:
        self._d.clear()


class _Destinations:
    """Per-key packed addresses and a cache of sendable unions. No sockets here."""

    def __init__(self, build_arrays: bool, need_list: bool = True) -> None:
        self.keys: dict[object, np.ndarray] = {}
        self.build_arrays = build_arrays
        # With sender workers the parent only counts: unpacking 10,000 addresses back to
        # tuples (~6 ms) on every membership change would be work nobody reads.
        self.need_list = need_list
        self._cache: OrderedDict[_Keys, _Union] = OrderedDict()
        self._by_key: dict[object, set[_Keys]] = {}  # key -> cached unions that include it
        self._by_id: _ByIdentity[_Union] = _ByIdentity()

    def set(self, key: object, packed: np.ndarray) -> bool:
        """Replace a key's addresses; False (and nothing invalidated) if they did not change."""
        old = self.keys.get(key)
        if old is None and not len(packed):
            return False
        if old is not None and len(old) == len(packed) and np.array_equal(old, packed):
            return False
        if len(packed):
            self.keys[key] = packed
        else:
            self.keys.pop(key, None)
        # Drop every cached union this key belongs to (membership changes are rare).
        self._by_id.clear()
        for ck in self._by_key.pop(key, ()):
            entry = self._cache.pop(ck, None)
            if entry is not None:
                self._forget(ck)
        return True

    def _forget(self, ck: _Keys) -> None:
        for k in ck:
            s = self._by_key.get(k)
            if s is not None:
                s.discard(ck)
                if not s:
                    del self._by_key[k]

    def union(self, keys: _Keys) -> _Union:
        same = self._by_id.get(keys)
        if same is not None:
            return same
        hit = self._cache.get(keys)
        if hit is not None:
            self._by_id.put(keys, hit)
            return hit
        parts = [self.keys[k] for k in dict.fromkeys(keys) if k in self.keys]
        packed = union_packed(parts)
        entry: _Union
        if self.build_arrays:
            entry = (len(packed), DestinationArray(packed) if len(packed) else None, None)
        elif self.need_list:
            entry = (len(packed), None, unpack_addrs(packed))
        else:
            entry = (len(packed), None, None)
        self._cache[keys] = entry
        for k in keys:
            self._by_key.setdefault(k, set()).add(keys)
        if len(self._cache) > _UNION_CACHE:
            old, _ = self._cache.popitem(last=False)
            self._forget(old)
            self._by_id.clear()
        self._by_id.put(keys, entry)
        return entry

    def count(self) -> int:
        return sum(len(v) for v in self.keys.values())

    def nbytes(self) -> int:
        n = sum(v.nbytes for v in self.keys.values())
        for _, arr, _ in self._cache.values():
            if arr is not None:
                n += arr.nbytes()
        return n


def _shard_of(packed: np.ndarray, k: int) -> np.ndarray:
    # Spread 127.0.x.y-style consecutive addresses evenly: a multiplicative hash of the value.
    h = (packed * np.uint64(0x9E3779B97F4A7C15)) >> np.uint64(40)
    return (h % np.uint64(k)).astype(np.int64)


class Fanout:
    def __init__(self, bind: tuple[str, int] = ("0.0.0.0", 0), multicast_ttl: int = 1,
                 multicast_if: str | None = None, multicast_loop: bool = True, *,
                 workers: int = 0, batch: int = 512, sndbuf: int = 4 * 1024 * 1024,
                 use_sendmmsg: bool | None = None, realtime: bool = True,
                 max_lag_ms: float = 200.0, cpus: tuple[int, ...] = ()) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, sndbuf)
        self.sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, multicast_ttl)
        self.sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_LOOP, 1 if multicast_loop else 0)
        if multicast_if:
            self.sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF,
                                 socket.inet_aton(multicast_if))
        if sys.platform.startswith("linux"):
            # DF set, path MTU ignored (IP_PMTUDISC_PROBE): an RTP packet of a few hundred bytes
            # never needs fragmenting, and a DF packet gets IP ID 0 instead of the kernel's
            # hashed per-destination ID generator: measured 7 % less kernel time per packet.
            self.sock.setsockopt(socket.IPPROTO_IP, _IP_MTU_DISCOVER, _IP_PMTUDISC_PROBE)
        #: where datagrams to the media port arrive (receivers' control messages); see _bind
        self.listen_sock: socket.socket = self.sock
        self._bind(bind)
        self.sock.setblocking(False)
        self.batched = AVAILABLE if use_sendmmsg is None else (use_sendmmsg and AVAILABLE)
        self.batch = batch
        self.workers = max(0, int(workers))
        #: key -> (its addresses, cleaned, and their packed form, in the same order): one
        #: tuple, so another thread reads the two of the same list (see `prepare_split`)
        self._raw: dict[str, tuple[list[tuple[str, int]], np.ndarray]] = {}
        self._dests = _Destinations(build_arrays=self.batched and self.workers == 0,
                                    need_list=self.workers == 0)
        #: destination lists packed ahead of `set_destinations` (see `prepare`), by content
        self._prepared: OrderedDict[tuple[_Addr, ...], tuple[list[_Addr], np.ndarray]] = \
            OrderedDict()
        self._prepared_lock = threading.Lock()  # prepare() and the tick run on other threads
        self._pack_memo: dict[_Addr, tuple[_Addr, int]] = {}  # as given -> (canonical, packed)
        self._sender = BatchSender(self.sock.fileno(), batch=batch) if self.batched else None
        self._result = BatchResult()
        self.sends = 0
        self._closed = False
        self._pool: _WorkerPool | None = None
        if self.workers:
            self._pool = _WorkerPool(self.sock, self.workers, batch, self.batched,
                                     realtime=realtime, max_lag_ms=max_lag_ms, cpus=cpus)

    def _bind(self, bind: tuple[str, int]) -> None:
        """Bind the send socket, and beside it (Linux) a second socket on the same address
        that gets every datagram arriving there.

        Why two: whoever reads the media port (the receiver protocol, through the event loop)
        registers on the socket's wait queue, and then the kernel runs a wake-up (a locked
        wait-queue walk) for every packet sent, when it releases the packet's memory from the
        socket (sock_wfree: at transmit on loopback, at TX completion on a NIC): perf showed
        2.9 % of the sender core's time in it at 5,000 receivers. So the sends go out of a socket
        nobody waits on, and a reuseport group whose classic BPF program always answers
        "socket 0" steers every incoming datagram to the listening socket. Both share the
        port, so replies and media leave from the port receivers talk to (NAT) as before.

        A plain probe bind first: a port already in use (another Loa included, whose
        reuseport group we must not silently join) fails with EADDRINUSE here, as it did."""
        if not (sys.platform.startswith("linux") and hasattr(socket, "SO_REUSEPORT")):
            self.sock.bind(bind)
            return
        probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            probe.bind(bind)
            addr = probe.getsockname()
        finally:
            probe.close()
        listen = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            listen.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            listen.bind(addr)
            _steer_to_first(listen)
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            self.sock.bind(addr)
        except OSError:
            # no reuseport steering here (old kernel, seccomp): one socket, as before (the
            # send socket's bind is the last step above, so it is still unbound here)
            listen.close()
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 0)
            self.sock.bind(addr)
            return
        # room for a burst of registrations (every receiver after a server restart); the
        # kernel caps it at net.core.rmem_max
        listen.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        listen.setblocking(False)
        self.listen_sock = listen

    # -- membership -------------------------------------------------------------------------
    def _clean_and_pack(self, addrs: Sequence[_Addr]) -> tuple[list[_Addr], np.ndarray]:
        """(addresses in order without duplicates, their packed form). Each address is parsed
        once and remembered: a zone that grows one receiver at a time costs a dictionary
        look-up per address it already had (~0.1 µs), not a parse (~1 µs)."""
        if not addrs:
            return [], np.zeros(0, dtype=np.uint64)
        memo = self._pack_memo
        try:
            uniq = dict.fromkeys(addrs)
        except TypeError:  # [host, port] lists: not hashable
            uniq = dict.fromkeys((str(h), int(p)) for h, p in addrs)
        missing = [a for a in uniq if a not in memo]
        if missing:
            if len(memo) + len(missing) > _PACK_MEMO_MAX:
                # a new dict, not clear(): the other thread may be reading this one
                memo = self._pack_memo = {}
                missing = list(uniq)
            parsed = [(str(a[0]), int(a[1])) for a in missing]
            memo.update(zip(missing, zip(parsed, pack_addrs(parsed).tolist())))
        out: dict[tuple[str, int], int] = {}
        for a in uniq:  # ("1.2.3.4", "9") and ("1.2.3.4", 9) are one destination
            canon, value = memo[a]
            out.setdefault(canon, value)
        return list(out), np.fromiter(out.values(), dtype=np.uint64, count=len(out))

    def prepare(self, addrs: Sequence[tuple[str, int]]) -> None:
        """Pack a destination list now, for a `set_destinations` with the same list soon after.

        Packing is ~1 µs per address in Python: 10,000 receivers are ~10 ms, too long for the
        20 ms tick that calls `set_destinations`. The control plane calls this from its own
        thread, before handing the engine a zone with new receivers; the tick then finds the
        packed array by content and only swaps it in. A few lists are kept; the oldest go first."""
        key = tuple(addrs)
        if not key:
            return
        prepared = self._clean_and_pack(key)
        with self._prepared_lock:
            self._prepared[key] = prepared
            while len(self._prepared) > _PREPARED_KEPT:
                self._prepared.popitem(last=False)

    def prepare_split(self, key: str, addrs: list[tuple[str, int]], taken: AbstractSet[_Addr],
                      min_addrs: int = 1) -> tuple[list[_Addr], list[_Addr]] | None:
        """Pack ahead the two lists `addrs` splits into, those in `taken` and the others (in
        order), when `addrs` is what `key` holds now: their packed forms are cut out of the
        key's packed array (array indexing), not packed again address by address. For a
        carve (streamer.core.carve) of a big zone, whose lists the tick will hand to
        `set_destinations`: ~4x cheaper than `prepare` on both. Returns the two lists (those
        of at least `min_addrs` addresses are prepared), or None when `key` holds another list
        (the caller packs them the usual way)."""
        cur = self._raw.get(key)
        if cur is None or len(cur[0]) != len(addrs) or cur[0] != addrs:
            return None
        clean, packed = cur
        inside = list(map(taken.__contains__, clean))
        mask = np.array(inside, dtype=bool)
        outside = (~mask).tolist()
        lists = (list(compress(clean, inside)), list(compress(clean, outside)))
        for lst, arr in zip(lists, (packed[mask], packed[~mask])):
            if len(lst) < min_addrs:
                continue
            key_t = tuple(lst)
            with self._prepared_lock:
                self._prepared[key_t] = (lst, arr)
                while len(self._prepared) > _PREPARED_KEPT:
                    self._prepared.popitem(last=False)
        return lists

    def set_destinations(self, key: str, addrs: Sequence[tuple[str, int]]) -> None:
        hit = None
        if self._prepared and addrs:
            with self._prepared_lock:
                hit = self._prepared.pop(tuple(addrs), None)
        clean, packed = hit if hit is not None else self._clean_and_pack(addrs)
        if clean:
            self._raw[key] = (clean, packed)
        else:
            self._raw.pop(key, None)
        if self._dests.set(key, packed) and self._pool is not None:
            self._pool.set_destinations(key, packed)

    def destinations(self, key: str) -> list[tuple[str, int]]:
        cur = self._raw.get(key)
        return list(cur[0]) if cur is not None else []

    # -- the hot path -----------------------------------------------------------------------
    def send(self, packet: bytes | bytearray | memoryview, keys: Iterable[str]) -> int:
        kt = keys if type(keys) is tuple else tuple(keys)
        n, arr, addrs = self._dests.union(kt)
        if n == 0:
            return 0
        self.sends += 1
        if self._pool is not None:
            self._pool.send(packet, kt)
            return n
        res = self._result
        before = res.sent
        if arr is not None:
            arr.load(packet)
            self._sender.send(arr, res)  # type: ignore[union-attr]
        else:
            sendto_all(self.sock, packet, addrs or (), res)
        return res.sent - before

    # -- observability ----------------------------------------------------------------------
    def stats(self) -> dict[str, int]:
        r = self._result
        out = {"sent": r.sent, "dropped": r.dropped, "errors": r.errors, "syscalls": r.calls,
               "sends": self.sends, "destinations": self._dests.count(),
               "workers": self.workers, "worker_queue_drops": 0, "worker_restarts": 0,
               "memory_bytes": self._dests.nbytes()}
        if self._pool is not None:
            w = self._pool.totals()
            out["sent"] += w["sent"]
            out["dropped"] += w["dropped"] + self._pool.queue_drops_destinations
            out["errors"] += w["errors"]
            out["syscalls"] += w["calls"]
            out["worker_queue_drops"] = self._pool.queue_drops
            out["worker_stale_drops"] = w["stale"]
            out["worker_max_lag_us"] = w["max_lag_us"]
            out["worker_restarts"] = self._pool.restarts
            out["workers_alive"] = w["alive"]
        return out

    def error_counts(self) -> dict[int, int]:
        """errno -> count of per-destination send failures (in-process sender only)."""
        return dict(self._sender.error_counts) if self._sender else {}

    def worker_pids(self) -> list[int]:
        return self._pool.pids() if self._pool else []

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._pool is not None:
            self._pool.close()
        if self.listen_sock is not self.sock:
            self.listen_sock.close()
        self.sock.close()

    def __enter__(self) -> Fanout:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# -- sender worker processes ----------------------------------------------------------------

class _Worker:
    def __init__(self, index: int) -> None:
        self.index = index
        self.proc: subprocess.Popen[bytes] | None = None
        self.ctl: socket.socket | None = None
        self.shard: dict[int, np.ndarray] = {}   # key id -> this worker's packed addresses
        # Control messages not yet taken by the worker, in order: [key id or None, messages,
        # how many of them went]. Never waited for: a worker busy sending must not stall the
        # tick (or an API call) that changed membership.
        self.outbox: collections.deque[list[Any]] = collections.deque()
        self.unsent: dict[int, list[Any]] = {}  # key id -> its queued membership, not started


class _WorkerPool:
    def __init__(self, udp: socket.socket, k: int, batch: int, batched: bool, *,
                 realtime: bool = True, max_lag_ms: float = 200.0,
                 cpus: tuple[int, ...] = ()) -> None:
        self.udp = udp
        self.realtime = realtime
        #: the CPUs the senders pin themselves to (streamer.cpus: engine_cpus); () not pinned
        self.cpus = tuple(cpus)
        self.max_lag_ns = int(max_lag_ms * 1e6)
        self.k = k
        self.batch = batch
        self.batched = batched
        fd = os.memfd_create("loa-fanout-stats", os.MFD_CLOEXEC) if hasattr(os, "memfd_create") else None
        if fd is None:  # pragma: no cover - non-Linux: workers need memfd
            raise RuntimeError("Fanout workers need Linux (memfd_create)")
        self.stats_fd = fd
        os.ftruncate(fd, max(mmap.PAGESIZE, k * _STAT.size))
        self.stats = mmap.mmap(fd, max(mmap.PAGESIZE, k * _STAT.size))
        self.key_ids: dict[object, int] = {}
        self.queue_drops = 0
        self.queue_drops_destinations = 0
        self.restarts = 0
        self._last_restart = 0.0
        # key tuple -> (union id, destinations per worker); the union's key ids go to the
        # workers once, so a tick's message is the packet and 4 bytes, however many zones
        self._unions: dict[_Keys, tuple[int, list[int]]] = {}
        self._union_msgs: dict[int, bytes] = {}     # union id -> its definition, for restarts
        self._by_id: _ByIdentity[tuple[bytes, list[int]]] = _ByIdentity()
        self.workers = [_Worker(i) for i in range(k)]
        for w in self.workers:
            self._spawn(w)

    def _spawn(self, w: _Worker) -> None:
        a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        for s in (a, b):
            s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)
        env = dict(os.environ)
        root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        env.pop(_PIN_ENV, None)
        if self.cpus:
            env[_PIN_ENV] = ",".join(str(c) for c in self.cpus)
        w.proc = subprocess.Popen(
            [sys.executable, "-m", "streamer.rtp.fanout", "--worker", str(self.udp.fileno()),
             str(b.fileno()), str(self.stats_fd), str(w.index), str(self.batch),
             "1" if self.batched else "0", "1" if self.realtime else "0", str(self.max_lag_ns)],
            pass_fds=(self.udp.fileno(), b.fileno(), self.stats_fd), env=env,
            stdin=subprocess.DEVNULL)
        b.close()
        a.setblocking(False)
        w.ctl = a
        w.outbox.clear()      # the new worker gets the whole state instead
        w.unsent.clear()
        for kid, packed in w.shard.items():
            self._send_dest(w, kid, packed)
        for msg in self._union_msgs.values():
            self._queue(w, None, [msg])

    def pids(self) -> list[int]:
        return [w.proc.pid for w in self.workers if w.proc and w.proc.poll() is None]

    def _key_id(self, key: object) -> int:
        kid = self.key_ids.get(key)
        if kid is None:
            kid = self.key_ids[key] = len(self.key_ids)
        return kid

    def set_destinations(self, key: object, packed: np.ndarray) -> None:
        kid = self._key_id(key)
        shards = _shard_of(packed, self.k) if len(packed) else np.zeros(0, dtype=np.int64)
        for w in self.workers:
            part = packed[shards == w.index]
            if len(part) == 0 and kid not in w.shard:
                continue
            if len(part):
                w.shard[kid] = part
            else:
                w.shard.pop(kid, None)
            self._send_dest(w, kid, part)
        # destination counts changed; union definitions (key ids) stay valid
        self._unions = {k: (uid, []) for k, (uid, _) in self._unions.items()}
        self._by_id.clear()

    def _send_dest(self, w: _Worker, kid: int, part: np.ndarray) -> None:
        chunks = [part[i:i + _CHUNK] for i in range(0, len(part), _CHUNK)] or [part]
        msgs = [_MSG_DEST + struct.pack("<IB", kid, 1 if i == len(chunks) - 1 else 0)
                + c.astype("<u8").tobytes() for i, c in enumerate(chunks)]
        self._queue(w, kid, msgs)

    def _queue(self, w: _Worker, kid: int | None, msgs: list[bytes]) -> None:
        """Queue control messages for a worker and send what its socket takes now. A key's
        membership still waiting in the queue is replaced by the newer one (only the latest
        matters), so a worker that is behind gets each changed key once, not every step."""
        entry = w.unsent.get(kid) if kid is not None else None
        if entry is not None:
            entry[1] = msgs
        else:
            entry = [kid, msgs, 0]
            w.outbox.append(entry)
            if kid is not None:
                w.unsent[kid] = entry
        self._flush(w)

    def _flush(self, w: _Worker) -> bool:
        """Send the worker's queued control messages without blocking; True when none is
        left. A dead worker is restarted (and given its whole state again)."""
        box = w.outbox
        while box:
            e = box[0]
            if e[2] == 0 and e[0] is not None:
                w.unsent.pop(e[0], None)      # starting: no longer replaceable
            msgs = e[1]
            while e[2] < len(msgs):
                try:
                    w.ctl.send(msgs[e[2]])  # type: ignore[union-attr]
                except BlockingIOError:
                    if e[2] == 0 and e[0] is not None:
                        w.unsent[e[0]] = e
                    return False
                except OSError:
                    self._restart(w, force=True)
                    return not w.outbox
                e[2] += 1
            box.popleft()
        return True

    def _restart(self, w: _Worker, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last_restart < 1.0:
            return
        self._last_restart = now
        self.restarts += 1
        if w.ctl is not None:
            w.ctl.close()
        if w.proc is not None and w.proc.poll() is None:
            w.proc.kill()
            try:
                w.proc.wait(timeout=2)
            except subprocess.TimeoutExpired:  # pragma: no cover
                pass
        self._spawn(w)

    def send(self, packet: bytes | bytearray | memoryview, keys: _Keys) -> None:
        entry = self._by_id.get(keys)
        if entry is None:
            entry = self._union(keys)
            self._by_id.put(keys, entry)
        head, per_worker = entry
        # the hand-over time, so a worker that is behind drops what is too late (not a decision
        # of the engine's: the one clock read of this IO layer)
        msg = b"".join((head, _STAMP.pack(time.monotonic_ns()), packet))
        for w, n in zip(self.workers, per_worker):
            if w.outbox and not self._flush(w) and n:
                # still taking membership changes: this tick cannot go before them
                self.queue_drops += 1
                self.queue_drops_destinations += n
                continue
            if n == 0:
                continue
            try:
                w.ctl.send(msg)  # type: ignore[union-attr]
            except BlockingIOError:
                self.queue_drops += 1
                self.queue_drops_destinations += n
            except OSError:
                self.queue_drops += 1
                self.queue_drops_destinations += n
                self._restart(w)

    def _union(self, keys: _Keys) -> tuple[bytes, list[int]]:
        """The union id of these keys (defined to the workers on first use) and how many
        destinations each worker has behind it."""
        known = self._unions.get(keys)
        if known is not None and known[1]:
            return _MSG_SEND + struct.pack("<I", known[0]), known[1]
        ids = [self.key_ids[k] for k in dict.fromkeys(keys) if k in self.key_ids]
        if known is not None:
            uid = known[0]
        else:
            if len(self._unions) >= _MAX_UNIONS:
                self._unions.clear()   # ids are reused: every definition is sent again
                self._union_msgs.clear()
                self._by_id.clear()
            uid = len(self._unions)
            msg = _MSG_UNION + struct.pack(f"<II{len(ids)}I", uid, len(ids), *ids)
            self._union_msgs[uid] = msg
            for w in self.workers:
                self._queue(w, None, [msg])
        per_worker = [sum(len(w.shard.get(i, ())) for i in ids) for w in self.workers]
        self._unions[keys] = (uid, per_worker)
        return _MSG_SEND + struct.pack("<I", uid), per_worker

    def totals(self) -> dict[str, int]:
        t = dict.fromkeys(_STAT_FIELDS, 0)
        for w in self.workers:
            vals = _STAT.unpack_from(self.stats, w.index * _STAT.size)
            for f, v in zip(_STAT_FIELDS, vals):
                t[f] = max(t[f], v) if f == "max_lag_us" else t[f] + v
        t["alive"] = sum(1 for w in self.workers if w.proc and w.proc.poll() is None)
        return t

    def close(self) -> None:
        for w in self.workers:
            try:
                if w.ctl is not None:
                    w.ctl.setblocking(True)
                    w.ctl.settimeout(0.5)
                    w.ctl.send(_MSG_EXIT)
            except OSError:
                pass
        for w in self.workers:
            if w.proc is None:
                continue
            try:
                w.proc.wait(timeout=2)
            except subprocess.TimeoutExpired:
                w.proc.kill()
                w.proc.wait(timeout=2)
            if w.ctl is not None:
                w.ctl.close()
        self.stats.close()
        os.close(self.stats_fd)


#: environment variable a sender process reads the CPUs it pins itself to from
_PIN_ENV = "LOA_FANOUT_CPUS"


def _worker_priority(realtime: bool) -> None:
    """Real-time scheduling one notch below the tick thread where permitted, else nice -10."""
    if not realtime:
        return
    try:
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(_WORKER_FIFO_PRIORITY))
        return
    except (AttributeError, PermissionError, OSError):
        pass
    try:
        os.setpriority(os.PRIO_PROCESS, 0, -10)
    except (AttributeError, PermissionError, OSError):
        pass


def _worker_main(udp_fd: int, ctl_fd: int, stats_fd: int, index: int, batch: int,
                 batched: bool, realtime: bool = False, max_lag_ns: int = 0) -> int:
    from streamer.clock import name_os_thread
    name_os_thread(f"loa-fanout-{index}")
    _worker_priority(realtime)
    pin = os.environ.get(_PIN_ENV, "")
    if pin:   # the real-time path's own CPUs (streamer.cpus), not the rest of the server's
        from streamer import cpus
        cpus.pin(int(c) for c in pin.split(",") if c.strip().isdigit())
    udp = socket.socket(fileno=udp_fd)
    ctl = socket.socket(fileno=ctl_fd)
    stats = mmap.mmap(stats_fd, 0)
    off = index * _STAT.size
    pending: dict[int, list[np.ndarray]] = {}
    unions: dict[int, tuple[int, ...]] = {}   # union id -> key ids (one tuple object each)
    dests = _Destinations(build_arrays=batched)
    sender = BatchSender(udp_fd, batch=batch) if batched else None
    res = BatchResult()
    sends = stale = max_lag = 0
    clock = time.monotonic_ns
    unstamp = _STAMP.unpack_from
    # what was queued while this process started is not "behind": the caller sends at once
    # after starting (or restarting) it, and a worker that just booted has no backlog of its own
    born = clock()

    def publish() -> None:
        _STAT.pack_into(stats, off, res.sent, res.dropped, res.errors, res.calls, sends,
                        dests.count(), os.getpid(), 1, stale, max_lag // 1000)

    publish()
    while True:
        try:
            msg = ctl.recv(1 << 20)
        except InterruptedError:  # pragma: no cover
            continue
        except OSError:
            break
        if not msg or msg[:1] == _MSG_EXIT:
            break
        kind = msg[:1]
        if kind == _MSG_SEND:
            (uid,) = struct.unpack_from("<I", msg, 1)
            ids = unions.get(uid)
            if ids is None:
                continue                 # never defined (cannot happen): nothing to send to
            lag = clock() - max(unstamp(msg, 5)[0], born)
            if lag > max_lag:
                max_lag = lag
            if max_lag_ns and lag > max_lag_ns:
                stale += 1               # too late to be of use: the next one is on time
                publish()
                continue
            packet = msg[13:]
            n, arr, addrs = dests.union(ids)
            if n:
                sends += 1
                if arr is not None:
                    arr.load(packet)
                    sender.send(arr, res)  # type: ignore[union-attr]
                else:
                    sendto_all(udp, packet, addrs or (), res)
            publish()
        elif kind == _MSG_UNION:
            uid, nk = struct.unpack_from("<II", msg, 1)
            unions[uid] = struct.unpack_from(f"<{nk}I", msg, 9)
        elif kind == _MSG_DEST:
            kid, final = struct.unpack_from("<IB", msg, 1)
            pending.setdefault(kid, []).append(np.frombuffer(msg, dtype="<u8", offset=6)
                                               .astype(np.uint64))
            if final:
                parts = pending.pop(kid)
                packed = np.concatenate(parts) if len(parts) > 1 else parts[0]
                dests.set(kid, packed)
                publish()
    _STAT.pack_into(stats, off, res.sent, res.dropped, res.errors, res.calls, sends,
                    dests.count(), os.getpid(), 0, stale, max_lag // 1000)
    return 0


if __name__ == "__main__":
    if len(sys.argv) in (8, 10) and sys.argv[1] == "--worker":
        a = sys.argv[2:]
        try:
            sys.exit(_worker_main(int(a[0]), int(a[1]), int(a[2]), int(a[3]), int(a[4]),
                                  a[5] == "1", *((a[6] == "1", int(a[7])) if len(a) == 8
                                                 else ())))
        except KeyboardInterrupt:  # pragma: no cover
            sys.exit(0)
    print("usage: python -m streamer.rtp.fanout --worker UDP_FD CTL_FD STATS_FD INDEX BATCH 0|1 "
          "[REALTIME 0|1 MAX_LAG_NS]",
          file=sys.stderr)
    sys.exit(2)
