"""The benchmark's receiver side: one socket drains every 127.0.x.y:PORT receiver.

Run as its own process (`python -m bench.sink --receivers N`), pinned to a core the sender does
not use. recvmmsg(2) in batches through ctypes, with IP_PKTINFO (which receiver address the
datagram was sent to: the source is the same for all) and SO_TIMESTAMPNS (kernel receive time,
so Python's own scheduling does not blur inter-arrival times). Per batch only numpy work; the
per-receiver analysis runs once at the end.

Protocol on stdio: prints `ready PORT`, then on a `stop` line (or at --max-seconds) drains until
0.3 s of quiet (bounded), prints one JSON line of results, and exits. Overflow of the socket's
receive queue (from /proc/net/udp `drops`) is reported: a run with sink drops is invalid.
"""
from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import json
import os
import socket
import sys
import threading
import time

import numpy as np

from bench.common import receiver_index, receivers

IP_PKTINFO = getattr(socket, "IP_PKTINFO", 8)
SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)
SO_RCVBUFFORCE = getattr(socket, "SO_RCVBUFFORCE", 33)
MSG_WAITFORONE = 0x10000
SLOT = 64          # bytes kept per datagram: the RTP header is all we need
CTRL = 64          # control buffer per datagram: timestamp + pktinfo


class Iovec(ctypes.Structure):
    _fields_ = [("iov_base", ctypes.c_void_p), ("iov_len", ctypes.c_size_t)]


class Msghdr(ctypes.Structure):
    _fields_ = [("msg_name", ctypes.c_void_p), ("msg_namelen", ctypes.c_uint32),
                ("msg_iov", ctypes.c_void_p), ("msg_iovlen", ctypes.c_size_t),
                ("msg_control", ctypes.c_void_p), ("msg_controllen", ctypes.c_size_t),
                ("msg_flags", ctypes.c_int)]


class Mmsghdr(ctypes.Structure):
    _fields_ = [("msg_hdr", Msghdr), ("msg_len", ctypes.c_uint)]


class Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


def udp_drops(sock: socket.socket) -> int:
    """The kernel's drop counter for this socket (receive queue overflow), -1 if unknown."""
    inode = os.fstat(sock.fileno()).st_ino
    try:
        with open("/proc/net/udp") as f:
            next(f)
            for line in f:
                parts = line.split()
                if len(parts) >= 13 and parts[9] == str(inode):
                    return int(parts[12])
    except OSError:
        pass
    return -1


class Sink:
    def __init__(self, n_receivers: int, port: int = 0, batch: int = 1024,
                 sample: int = 50, rcvbuf: int = 256 << 20) -> None:
        self.n = n_receivers
        self.batch = batch
        #: receiver index -> which sequence space it is in (None: one for all); see analyze
        self.groups: np.ndarray | None = None
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            self.sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, rcvbuf)
        except OSError:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.rcvbuf = self.sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
        self.sock.setsockopt(socket.IPPROTO_IP, IP_PKTINFO, 1)
        self.sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO,
                             (ctypes.c_long * 2)(0, 100_000))  # 100 ms: loops stay responsive
        self.sock.bind(("0.0.0.0", port))
        self.port = self.sock.getsockname()[1]
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        self._recvmmsg = libc.recvmmsg
        self._recvmmsg.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_uint, ctypes.c_int,
                                   ctypes.c_void_p]
        self._recvmmsg.restype = ctypes.c_int
        self.data = (ctypes.c_ubyte * (batch * SLOT))()
        self.ctrl = (ctypes.c_ubyte * (batch * CTRL))()
        self.iovs = (Iovec * batch)()
        self.msgs = (Mmsghdr * batch)()
        for i in range(batch):
            self.iovs[i].iov_base = ctypes.addressof(self.data) + i * SLOT
            self.iovs[i].iov_len = SLOT
            h = self.msgs[i].msg_hdr
            h.msg_iov = ctypes.addressof(self.iovs[i])
            h.msg_iovlen = 1
            h.msg_control = ctypes.addressof(self.ctrl) + i * CTRL
            h.msg_controllen = CTRL
        self.np_data = np.frombuffer(self.data, dtype=np.uint8).reshape(batch, SLOT)  # type: ignore[call-overload]
        self.np_ctrl = np.frombuffer(self.ctrl, dtype=np.uint8).reshape(batch, CTRL)  # type: ignore[call-overload]
        msz = ctypes.sizeof(Mmsghdr)
        self.np_msgs = np.frombuffer(self.msgs, dtype=np.uint8).reshape(batch, msz)  # type: ignore[call-overload]
        off = Msghdr.msg_controllen.offset
        self._ctl_len_cols = slice(off, off + 8)
        self._ctl_len_init = np.frombuffer(np.array(CTRL, dtype="<u8").tobytes(), dtype=np.uint8)
        self._len_off = Mmsghdr.msg_len.offset
        # 127.0.x.y -> receiver index
        lut = np.full(65536, -1, dtype=np.int32)
        for x in range(256):
            for y in range(256):
                lut[x * 256 + y] = receiver_index(x, y)
        lut[lut >= n_receivers] = -1
        self.lut = lut
        k = max(1, min(sample, n_receivers))
        self.sample_ids = np.unique(np.linspace(0, n_receivers - 1, k).astype(np.int64))
        self.sample_mask = np.zeros(max(1, n_receivers), dtype=bool)
        self.sample_mask[self.sample_ids] = True
        self.idx_parts: list[np.ndarray] = []
        self.seq_parts: list[np.ndarray] = []
        self.s_idx: list[np.ndarray] = []
        self.s_seq: list[np.ndarray] = []
        self.s_t: list[np.ndarray] = []
        self.total = 0
        self.unknown = 0
        self.not_rtp = 0
        self.unparsed = 0
        self.calls = 0
        self.first_ns = 0
        self.last_ns = 0

    def recv_batch(self) -> int:
        self.np_msgs[:, self._ctl_len_cols] = self._ctl_len_init
        n = self._recvmmsg(self.sock.fileno(), ctypes.addressof(self.msgs), self.batch,
                           MSG_WAITFORONE, None)
        self.calls += 1
        if n <= 0:
            return 0
        self._account(n)
        return n

    def _account(self, n: int) -> None:
        ctrl = self.np_ctrl[:n]
        data = self.np_data[:n]
        lens = self.np_msgs[:n, self._len_off:self._len_off + 4].copy().view("<u4").ravel()
        t0 = ctrl[:, 12:16].copy().view("<i4").ravel()
        if np.all(t0 == SO_TIMESTAMPNS):   # timestamp first (udp_recvmsg order), pktinfo second
            ts, pk_type, addr = ctrl[:, 16:32], ctrl[:, 44:48], ctrl[:, 56:60]
        elif np.all(t0 == IP_PKTINFO):
            addr, pk_type, ts = ctrl[:, 24:28], ctrl[:, 12:16], ctrl[:, 48:64]
            t0 = ctrl[:, 44:48].copy().view("<i4").ravel()
            if not np.all(t0 == SO_TIMESTAMPNS):
                self.unparsed += n
                return
        else:
            self.unparsed += n
            return
        if not np.all(pk_type.copy().view("<i4").ravel() == IP_PKTINFO):
            self.unparsed += n
            return
        tsv = ts.copy().view("<i8").reshape(n, 2)
        t_ns = tsv[:, 0] * 1_000_000_000 + tsv[:, 1]
        rtp = (lens >= 12) & ((data[:, 0] & 0xC0) == 0x80)
        self.not_rtp += int(n - rtp.sum())
        local = (addr[:, 0] == 127) & (addr[:, 1] == 0)
        idx = np.where(local, self.lut[(addr[:, 2].astype(np.int64) << 8) | addr[:, 3]], -1)
        good = rtp & (idx >= 0)
        self.unknown += int((rtp & (idx < 0)).sum())
        idx = idx[good].astype(np.int32)
        seq = ((data[good, 2].astype(np.uint16) << 8) | data[good, 3]).astype(np.uint16)
        self.total += len(idx)
        if len(idx):
            self.idx_parts.append(idx)
            self.seq_parts.append(seq)
            tg = t_ns[good]
            if not self.first_ns:
                self.first_ns = int(tg[0])
            self.last_ns = int(tg[-1])
            m = self.sample_mask[idx]
            if m.any():
                self.s_idx.append(idx[m])
                self.s_seq.append(seq[m])
                self.s_t.append(tg[m])

    def run(self, stop: threading.Event, max_seconds: float, quiet: float = 0.3,
            drain_max: float = 5.0) -> None:
        deadline = time.monotonic() + max_seconds
        stop_at = None
        last_rx = time.monotonic()
        while True:
            now = time.monotonic()
            if stop_at is None and (stop.is_set() or now >= deadline):
                stop_at = now
            if stop_at is not None and (now - last_rx >= quiet or now - stop_at >= drain_max):
                return
            if self.recv_batch():
                last_rx = time.monotonic()

    def analyze(self, frame_ms: float, expected: int | None = None, trim_tail: int = 0) -> dict:
        n = self.n
        res: dict = {"receivers": n, "datagrams": self.total, "unknown_destination": self.unknown,
                     "not_rtp": self.not_rtp, "unparsed": self.unparsed,
                     "sink_drops": udp_drops(self.sock), "sink_rcvbuf": self.rcvbuf,
                     "sink_recvmmsg_calls": self.calls, "sample_receivers": len(self.sample_ids)}
        if not self.idx_parts:
            res.update(expected_per_receiver=expected or 0, packets_expected=(expected or 0) * n,
                       packets_delivered=0, loss_pct=100.0, receivers_complete=0,
                       min_delivered=0, max_delivered=0, max_seq_gap=0, duplicates=0,
                       ipi_ms_p50=None, ipi_ms_p99=None, ipi_ms_max=None,
                       realtime_ratio=None, window_seconds=0.0)
            return res
        idx = np.concatenate(self.idx_parts)
        seq = np.concatenate(self.seq_parts).astype(np.int64)
        s0 = int(seq[0])
        # Unwrap relative to the first datagram, tolerating reordering of up to 1000 packets
        # backwards.
        ext = ((seq - s0 + 1000) & 0xFFFF) - 1000
        # The window [lo, hi] is taken per sequence space: with 40/60 ms packets each phase
        # of receivers has its own numbering (see streamer.rtp.output.RtpOutput._send_long_packets), and a
        # phase's last window or a split window can make its span one longer than another's.
        grp = self.groups if self.groups is not None else np.zeros(n, dtype=np.int64)
        ng = int(grp.max()) + 1 if n else 1
        gid = grp[idx]
        glo = np.full(ng, np.iinfo(np.int64).max)
        ghi = np.full(ng, np.iinfo(np.int64).min)
        np.minimum.at(glo, gid, ext)
        np.maximum.at(ghi, gid, ext)
        heard = glo <= ghi
        glo = np.where(heard, glo, 0)
        ghi = np.where(heard, ghi - trim_tail, -1)
        lo_r, hi_r = glo[grp], ghi[grp]               # per receiver
        win = (ext >= glo[gid]) & (ext <= ghi[gid])
        span = np.maximum(0, ghi - glo + 1)
        seen_seqs = int(span[heard].max()) if heard.any() else 0
        span = np.where(heard, span, seen_seqs)   # a phase that got nothing lost everything
        exp_r = span[grp] if expected is None else np.full(n, int(expected), dtype=np.int64)
        exp = int(exp_r.max()) if n else 0
        counts = np.bincount(idx[win], minlength=n)[:n]
        # sequence gaps per receiver, in arrival order
        order = np.argsort(idx, kind="stable")
        si, se = idx[order], ext[order]
        same = si[1:] == si[:-1]
        d = se[1:] - se[:-1]
        gaps = np.where(same & (d > 1), d - 1, 0)
        max_gap = np.zeros(n, dtype=np.int64)
        if len(gaps):
            np.maximum.at(max_gap, si[1:], gaps)
        # leading/trailing losses are gaps too
        firsts = np.full(n, np.iinfo(np.int64).max)
        lasts = np.full(n, np.iinfo(np.int64).min)
        np.minimum.at(firsts, idx, ext)
        np.maximum.at(lasts, idx, ext)
        got_any = counts > 0
        edge = np.where(got_any, np.maximum(firsts - lo_r, hi_r - np.minimum(lasts, hi_r)),
                        exp_r)
        max_gap = np.maximum(max_gap, edge)
        dups = int((same & (d == 0)).sum())
        delivered = int(counts.sum())
        total_exp = int(exp_r.sum())
        res.update(expected_per_receiver=exp, seqs_seen=seen_seqs, sequence_spaces=ng,
                   packets_expected=total_exp, packets_delivered=delivered,
                   loss_pct=round(100.0 * (1 - delivered / max(1, total_exp)), 4),
                   receivers_complete=int((counts >= exp_r).sum()),
                   min_delivered=int(counts.min()), max_delivered=int(counts.max()),
                   max_seq_gap=int(max_gap.max()), duplicates=dups,
                   window_seconds=round((self.last_ns - self.first_ns) / 1e9, 3))
        # inter-packet intervals and real-time ratio over the sample
        ipis, ratios = [], []
        if self.s_idx:
            sidx = np.concatenate(self.s_idx)
            sseq = ((np.concatenate(self.s_seq).astype(np.int64) - s0 + 1000) & 0xFFFF) - 1000
            st = np.concatenate(self.s_t)
            for r in self.sample_ids:
                m = sidx == r
                if m.sum() < 2:
                    continue
                t = np.sort(st[m])
                ipis.append(np.diff(t) / 1e6)
                e = sseq[m]
                wall = (t[-1] - t[0]) / 1e9
                if wall > 0:
                    ratios.append((e.max() - e.min()) * frame_ms / 1000.0 / wall)
        if ipis:
            allv = np.concatenate(ipis)
            res.update(ipi_ms_p50=round(float(np.percentile(allv, 50)), 3),
                       ipi_ms_p99=round(float(np.percentile(allv, 99)), 3),
                       ipi_ms_max=round(float(allv.max()), 3))
        else:
            res.update(ipi_ms_p50=None, ipi_ms_p99=None, ipi_ms_max=None)
        res["realtime_ratio"] = round(float(np.median(ratios)), 4) if ratios else None
        return res


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.sink")
    p.add_argument("--receivers", type=int, required=True)
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--cpu", type=int, default=None, help="pin to this core")
    p.add_argument("--sample", type=int, default=50)
    p.add_argument("--frame-ms", type=float, default=20.0)
    p.add_argument("--max-seconds", type=float, default=900.0)
    p.add_argument("--nice", type=int, default=0)
    a = p.parse_args(argv)
    if a.cpu is not None and hasattr(os, "sched_setaffinity"):
        try:
            os.sched_setaffinity(0, {a.cpu})
        except OSError:
            pass
    if a.nice:
        try:
            os.setpriority(os.PRIO_PROCESS, 0, a.nice)
        except OSError:
            pass
    sink = Sink(a.receivers, port=a.port, sample=a.sample)
    per = int(a.frame_ms) // 20
    if per > 1:
        # 40/60 ms receivers are spread over the ticks by address, one sequence space per phase
        from streamer.rtp.output import addr_phase as _addr_phase
        sink.groups = np.array([_addr_phase(addr, per) for addr in receivers(a.receivers,
                                                                               sink.port)],
                               dtype=np.int64)
    stop = threading.Event()
    params: dict = {}

    def control() -> None:
        for line in sys.stdin:
            words = line.split()
            if words and words[0] == "stop":
                for w in words[1:]:
                    k, _, v = w.partition("=")
                    params[k] = int(v)
                stop.set()
                return
        stop.set()  # stdin closed: the harness is gone

    threading.Thread(target=control, daemon=True).start()
    print(f"ready {sink.port} rcvbuf={sink.rcvbuf}", flush=True)
    sink.run(stop, a.max_seconds)
    res = sink.analyze(a.frame_ms, expected=params.get("expected"),
                       trim_tail=params.get("trim", 0))
    print(json.dumps(res), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
