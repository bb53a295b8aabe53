"""A sans-IO jitter buffer for one RTP audio stream.

No sockets, no asyncio, no clock of its own: the caller passes arrival times to `push` and the
current time to `pop` (float seconds from one monotonic clock).

Placement is by RTP timestamp, so packets of any duration (20/40/60 ms Opus) land in the right
place; sequence numbers are used only to count loss and to tell duplicates from late packets.

Playout timeline: when a talk spurt starts (first packet after idle, or a marker packet after the
previous spurt ran dry), its first timestamp is scheduled at `arrival + target_delay`; every later
timestamp is due `ts_diff(ts, first_ts) / clock_rate` seconds after that. `pop(now)` hands out one
playout slot each time the next slot is due:

- `Action.DECODE`: the packet that starts at this slot (its whole duration),
- `Action.FEC`: the packet for this slot is missing but the one right after it is buffered:
  decode this slot from that packet's in-band FEC data (`payload` is the *next* packet),
- `Action.PLC`: missing and no successor buffered: packet loss concealment,
- `None`: nothing is due (not primed yet, waiting for the due time, or idle between spurts).

The server sends nothing while a zone is idle, and when audio resumes it sets the marker bit and
the sequence number may jump (one sequence space is shared by all zones). So an empty buffer is
ambiguous: a loss/jitter spike or the end of a talk spurt. The buffer conceals up to `dry_slots`
frames and then goes idle; the concealment played after the last packet of a spurt that then
ended is not counted as concealment (it was the end of the spurt, not loss). A marker packet after
a hole, or any packet while idle, restarts playout at its own timestamp without counting the gap
as loss.

Counters (`JitterStats`) are disjoint: `received` (unique, in time), `lost` (never arrived),
`late` (arrived after its slot was played; discarded), `duplicate`. Within a spurt,
received + lost + late equals the span of sequence numbers played.

The target delay (`target_delay`, 60 ms by default) is read when a spurt starts; within a spurt
the caller moves the timeline with `shift` (see receivers/adaptive.py: 60-400 ms from measured
transit spread, and clock drift absorption).
"""
from __future__ import annotations

import enum
from dataclasses import asdict, dataclass
from typing import Protocol

from streamer.rtp.packet import seq_diff, ts_diff

_SEQ_WINDOW = 64
_SEQ_WINDOW_MASK = (1 << _SEQ_WINDOW) - 1


class PacketLike(Protocol):
    sequence_number: int
    timestamp: int
    ssrc: int
    marker: bool
    payload: bytes


class Action(enum.Enum):
    DECODE = "decode"
    FEC = "fec"
    PLC = "plc"


class Arrival(enum.Enum):
    """What `push` did with a packet."""
    ACCEPTED = "accepted"
    DUPLICATE = "duplicate"
    LATE = "late"
    PROBATION = "probation"   # first packet of a new SSRC while another stream is playing


@dataclass(slots=True)
class Playout:
    action: Action
    payload: bytes | None      # DECODE: this slot's packet; FEC: the next packet; PLC: None
    samples: int               # how much this slot covers (a whole packet for DECODE)
    timestamp: int
    sequence_number: int | None = None
    spurt_start: bool = False  # first slot of a talk spurt


@dataclass(slots=True)
class JitterStats:
    received: int = 0
    lost: int = 0
    late: int = 0
    duplicate: int = 0
    concealed_fec: int = 0
    concealed_plc: int = 0
    played: int = 0            # packets decoded
    spurts: int = 0            # talk spurts started (incl. the first)
    resets: int = 0            # SSRC changes and timestamp discontinuities
    discarded: int = 0         # buffered packets thrown away by a reset
    foreign: int = 0           # packets of another SSRC ignored while this stream plays

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


class _Entry:
    __slots__ = ("seq", "ts", "payload", "samples", "marker", "arrival")

    def __init__(self, seq: int, ts: int, payload: bytes, samples: int, marker: bool,
                 arrival: float) -> None:
        self.seq = seq
        self.ts = ts
        self.payload = payload
        self.samples = samples
        self.marker = marker
        self.arrival = arrival


class JitterBuffer:
    """One RTP audio stream's reorder/playout buffer (see the module docstring).

    target_delay: seconds from a spurt's first arrival to its first slot (read at spurt start).
    dry_slots: concealed frames with an empty buffer before the spurt is declared over.
    max_ahead: seconds; a timestamp jump beyond this (either way) is a new stream, same SSRC.
    forget_after: seconds idle after which the old stream's history no longer applies.
    fec: offer Action.FEC (else only PLC) for a hole right before a buffered packet.
    """

    def __init__(self, target_delay: float = 0.060, *, clock_rate: int = 48_000,
                 frame_samples: int = 960, dry_slots: int = 3, max_ahead: float = 1.0,
                 forget_after: float = 60.0, fec: bool = True) -> None:
        if target_delay < 0:
            raise ValueError("target_delay must be >= 0")
        if dry_slots < 0:
            raise ValueError("dry_slots must be >= 0")
        self.target_delay = float(target_delay)
        self.clock_rate = int(clock_rate)
        self.frame_samples = int(frame_samples)
        self.dry_slots = int(dry_slots)
        self.max_ahead = int(max_ahead * clock_rate)
        self.forget_after = float(forget_after)
        self.fec = fec
        self.stats = JitterStats()
        self.ssrc: int | None = None
        self._jitter = 0.0             # RFC 3550 J, in timestamp units
        self._candidate: tuple[PacketLike, float, int] | None = None
        self._forget()

    # -- state ----------------------------------------------------------------------------------

    def _forget(self) -> None:
        """Drop the stream's history (new SSRC, or idle for so long that it is meaningless)."""
        self._buf: dict[int, _Entry] = {}
        self._playing = False
        self._next_ts: int | None = None   # timestamp of the next slot
        self._anchor = 0.0                 # when the spurt's first slot is due
        self._played_samples = 0           # samples played since the anchor
        self._started = False              # a slot of this spurt has been played
        self._prepend_ok = False           # an earlier packet may still become the first slot
        self._floor_ts: int | None = None  # end of the previous spurt: nothing may go before it
        self._fresh = True                 # next decoded packet starts loss accounting anew
        self._last_seq: int | None = None  # highest sequence number played
        self._seq_bits = 0                 # bit i: last_seq - i was played or arrived late
        self._lost_bits = 0                # bit i: last_seq - i was counted as lost
        self._late_ahead: list[int] = []   # late packets not yet counted as lost
        self._tail = 0                     # PLC slots in a row with an empty buffer
        self._idle_since: float | None = None
        self._prev_arrival: float | None = None
        self._prev_ts = 0

    def reset(self) -> None:
        """Forget the stream entirely (counters are kept)."""
        self.stats.discarded += len(self._buf)
        self.ssrc = None
        self._candidate = None
        self._forget()

    @property
    def playing(self) -> bool:
        return self._playing

    @property
    def jitter(self) -> float:
        """RFC 3550 interarrival jitter estimate, seconds."""
        return self._jitter / self.clock_rate

    @property
    def depth(self) -> int:
        """Packets waiting in the buffer."""
        return len(self._buf)

    @property
    def buffered(self) -> float:
        """Seconds of media buffered ahead of the next slot (holes included)."""
        if not self._buf or self._next_ts is None:
            return 0.0
        nxt = self._next_ts
        end = max(ts_diff(e.ts, nxt) + e.samples for e in self._buf.values())
        return max(end, 0) / self.clock_rate

    @property
    def next_due(self) -> float | None:
        """When the next slot is due (None while idle): lets a caller sleep exactly that long."""
        if not self._playing:
            return None
        return self._anchor + self._played_samples / self.clock_rate

    @property
    def next_ts(self) -> int | None:
        """RTP timestamp of the next slot (None while idle)."""
        return self._next_ts if self._playing else None

    def shift(self, seconds: float) -> None:
        """Move the playout timeline later (+) or earlier (-) while playing: the adaptive delay
        and drift correction of the caller (which plays a concealment frame, or merges two
        frames, to match)."""
        if self._playing:
            self._anchor += seconds

    # -- arrivals -------------------------------------------------------------------------------

    def push(self, packet: PacketLike, arrival_time: float, samples: int | None = None) -> Arrival:
        """Offer one packet. `samples`: its duration at `clock_rate` (default one frame)."""
        if not samples or samples <= 0:
            samples = self.frame_samples
        ssrc = packet.ssrc
        if ssrc != self.ssrc:
            if self.ssrc is not None and self._playing:
                # A lone stray packet must not wreck playout: switch only after two in sequence
                # (RFC 3550 A.1 probation), or at once when the current stream is idle.
                cand = self._candidate
                if (cand is None or cand[0].ssrc != ssrc
                        or seq_diff(packet.sequence_number, cand[0].sequence_number) != 1):
                    self._candidate = (packet, arrival_time, samples)
                    self.stats.foreign += 1
                    return Arrival.PROBATION
            cand = self._candidate
            self._switch_ssrc(ssrc)
            if cand is not None and cand[0].ssrc == ssrc:
                self.stats.foreign -= 1
                self._push(*cand)
        elif self._candidate is not None:
            self._candidate = None
        return self._push(packet, arrival_time, samples)

    def _switch_ssrc(self, ssrc: int) -> None:
        if self.ssrc is not None:
            self.stats.resets += 1
            self.stats.discarded += len(self._buf)
        self.ssrc = ssrc
        self._candidate = None
        self._forget()

    def _push(self, packet: PacketLike, arrival: float, samples: int) -> Arrival:
        seq = packet.sequence_number
        ts = packet.timestamp
        self._update_jitter(ts, arrival, packet.marker)

        if not self._playing:
            if self._idle_since is not None and arrival - self._idle_since > self.forget_after:
                self._forget()
            if self._next_ts is not None:
                d = ts_diff(ts, self._next_ts)
                if d < -self.max_ahead:
                    self._jumped_back()          # far behind: the sender started over
                elif d < 0:
                    return self._old(seq)        # a straggler of a spurt already played
            self._floor_ts = self._next_ts
            self._begin_spurt(ts, arrival)
            return self._insert(seq, ts, packet.payload, samples, packet.marker, arrival)

        assert self._next_ts is not None     # set whenever a spurt plays
        d = ts_diff(ts, self._next_ts)
        if d < 0:
            if d < -self.max_ahead:
                self.stats.discarded += len(self._buf)
                self._reclassify_tail()
                self._jumped_back()
                self._begin_spurt(ts, arrival)
                return self._insert(seq, ts, packet.payload, samples, packet.marker, arrival)
            if self._can_prepend(ts, d, arrival):
                # Priming, and an earlier packet of this spurt overtook by reordering: start at
                # it, keeping the timeline (it is due earlier by its timestamp distance).
                self._next_ts = ts
                self._anchor += d / self.clock_rate
                return self._insert(seq, ts, packet.payload, samples, packet.marker, arrival)
            return self._old(seq)
        if ts in self._buf:
            self.stats.duplicate += 1
            return Arrival.DUPLICATE
        if d > self.max_ahead:
            # The timestamp jumped further than any buffer holds: a new stream in all but SSRC.
            self.stats.resets += 1
            self.stats.discarded += len(self._buf)
            self._buf = {}
            self._reclassify_tail()
            self._floor_ts = None
            self._begin_spurt(ts, arrival)
        return self._insert(seq, ts, packet.payload, samples, packet.marker, arrival)

    def _jumped_back(self) -> None:
        """The timestamp went back further than any straggler could: a new stream, same SSRC."""
        self.stats.resets += 1
        self._forget()

    def _can_prepend(self, ts: int, d: int, arrival: float) -> bool:
        if self._started or not self._prepend_ok or ts in self._buf:
            return False
        if self._anchor + d / self.clock_rate < arrival:
            return False   # on the spurt's timeline it would already be late
        return self._floor_ts is None or ts_diff(ts, self._floor_ts) >= 0

    def _insert(self, seq: int, ts: int, payload: bytes, samples: int, marker: bool,
                arrival: float) -> Arrival:
        self._buf[ts] = _Entry(seq, ts, payload, samples, marker, arrival)
        self.stats.received += 1
        return Arrival.ACCEPTED

    def _begin_spurt(self, ts: int, arrival: float, prepend_ok: bool = True) -> None:
        self._playing = True
        self._next_ts = ts
        self._anchor = arrival + self.target_delay
        self._played_samples = 0
        self._started = False
        self._prepend_ok = prepend_ok
        self._fresh = True
        self._tail = 0
        self._idle_since = None
        self.stats.spurts += 1

    def _old(self, seq: int) -> Arrival:
        """A packet whose slot has been played: a duplicate, or late."""
        last = self._last_seq
        if last is not None:
            back = seq_diff(last, seq)
            if 0 <= back < _SEQ_WINDOW:
                bit = 1 << back
                if self._seq_bits & bit:
                    self.stats.duplicate += 1
                    return Arrival.DUPLICATE
                self._seq_bits |= bit
                if self._lost_bits & bit:
                    self._lost_bits &= ~bit
                    self.stats.lost -= 1     # counted as lost when its successor played
            elif back < 0:
                # Its slot was concealed but its successor has not played, so it is not counted
                # as lost yet; remember it so that it never will be.
                if seq in self._late_ahead:
                    self.stats.duplicate += 1
                    return Arrival.DUPLICATE
                if len(self._late_ahead) >= _SEQ_WINDOW:
                    del self._late_ahead[0]
                self._late_ahead.append(seq)
        self.stats.late += 1
        return Arrival.LATE

    def _update_jitter(self, ts: int, arrival: float, marker: bool) -> None:
        prev = self._prev_arrival
        self._prev_arrival = arrival
        prev_ts = self._prev_ts
        self._prev_ts = ts
        if prev is None or marker:
            return
        d = abs((arrival - prev) * self.clock_rate - ts_diff(ts, prev_ts))
        if d < self.max_ahead:   # a discontinuity says nothing about network jitter
            self._jitter += (d - self._jitter) / 16.0

    # -- playout --------------------------------------------------------------------------------

    def pop(self, now: float) -> Playout | None:
        """The next playout slot if it is due at `now`; call again until None to catch up."""
        if not self._playing:
            return None
        if now < self._anchor + self._played_samples / self.clock_rate:
            return None
        ts = self._next_ts
        assert ts is not None                # set whenever a spurt plays
        e = self._buf.pop(ts, None)
        if e is not None:
            spurt_start = not self._started
            self._account(e.seq, e.marker)
            self._advance(e.samples)
            self._tail = 0
            self.stats.played += 1
            return Playout(Action.DECODE, e.payload, e.samples, ts, e.seq, spurt_start)
        if not self._buf:
            if self._tail >= self.dry_slots:
                self._go_idle(now)
                return None
            self._tail += 1
            self.stats.concealed_plc += 1
            self._advance(self.frame_samples)
            return Playout(Action.PLC, None, self.frame_samples, ts)
        # A hole with packets buffered after it.
        e = min(self._buf.values(), key=lambda x: ts_diff(x.ts, ts))
        gap = ts_diff(e.ts, ts)
        if gap < 0:
            # Overlapped by a longer packet already played (a misbehaving sender): drop it.
            del self._buf[e.ts]
            self.stats.discarded += 1
            return self.pop(now)
        if e.marker:
            # A new talk spurt: the previous one is over; the hole was idle time, not loss.
            # Everything else buffered comes after it (it is the earliest).
            self._reclassify_tail()
            self._begin_spurt(e.ts, e.arrival, prepend_ok=False)
            return self.pop(now)
        self._tail = 0
        n = gap if gap < self.frame_samples else self.frame_samples
        self._advance(n)
        if self.fec and gap <= self.frame_samples:
            self.stats.concealed_fec += 1
            return Playout(Action.FEC, e.payload, n, ts)
        self.stats.concealed_plc += 1
        return Playout(Action.PLC, None, n, ts)

    def _advance(self, samples: int) -> None:
        assert self._next_ts is not None
        self._next_ts = (self._next_ts + samples) & 0xFFFFFFFF
        self._played_samples += samples
        self._started = True

    def _go_idle(self, now: float) -> None:
        self._reclassify_tail()
        self._playing = False
        self._idle_since = now

    def _reclassify_tail(self) -> None:
        # Concealment played after the last packet of a spurt that then ended was the spurt's
        # end, not loss.
        self.stats.concealed_plc -= self._tail
        self._tail = 0

    def _account(self, seq: int, marker: bool) -> None:
        """Loss accounting by sequence number for a packet being played."""
        last = self._last_seq
        d = 0 if last is None else seq_diff(seq, last)
        if last is None or self._fresh or marker:
            # A talk spurt starts: the sequence number may jump (shared sequence space).
            self._fresh = False
            self._late_ahead.clear()
            if 0 < d < _SEQ_WINDOW:
                self._seq_bits = ((self._seq_bits << d) | 1) & _SEQ_WINDOW_MASK
                self._lost_bits = (self._lost_bits << d) & _SEQ_WINDOW_MASK
            else:
                self._seq_bits = 1
                self._lost_bits = 0
            self._last_seq = seq
            return
        if d <= 0:
            # Placed by timestamp after a packet with a higher sequence number: just remember it.
            if -d < _SEQ_WINDOW:
                self._seq_bits |= 1 << -d
                self._lost_bits &= ~(1 << -d)
            return
        missing = d - 1
        arrived_late: list[int] = []
        if missing and self._late_ahead:
            keep = []
            for s in self._late_ahead:
                k = seq_diff(s, last)
                if 0 < k < d:
                    arrived_late.append(s)
                elif k >= d:
                    keep.append(s)
            self._late_ahead = keep
            missing -= len(arrived_late)
        self.stats.lost += missing
        if d < _SEQ_WINDOW:
            self._seq_bits = ((self._seq_bits << d) | 1) & _SEQ_WINDOW_MASK
            gap = ((1 << d) - 1) & ~1          # bits 1..d-1: the sequence numbers skipped
            self._lost_bits = ((self._lost_bits << d) | gap) & _SEQ_WINDOW_MASK
        else:
            self._seq_bits = 1
            self._lost_bits = _SEQ_WINDOW_MASK & ~1
        for s in arrived_late:
            k = seq_diff(seq, s)
            if k < _SEQ_WINDOW:
                self._seq_bits |= 1 << k
                self._lost_bits &= ~(1 << k)
        self._last_seq = seq
