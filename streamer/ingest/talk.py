"""Press-to-talk on an already-connected microphone: the pure parts (no IO, no clock).

A phone's WebRTC connection is set up when the official opens the page, with the microphone
track disabled (the browser then sends digital silence). Pressing "talk" enables the track and
asks the server to *claim* the zones; the claim's audio must start at the press, not at the
moment the HTTP request reached the server. So the connection keeps a short `Preroll` of the
most recent decoded frames; a claim starts with the frames since the microphone was unmuted
(the run of non-silent frames at the live edge), then follows the live audio. Releasing ends the
claim after a short fade (`FadeOut`) instead of a click.
"""
from __future__ import annotations

import collections

import numpy as np

from streamer.audio import DTYPE, FRAME_SAMPLES

#: a muted WebRTC track sends digital zeros; a live microphone's noise floor is well above this
#: (-80 dBFS peak), and so is any speech
MUTED_PEAK = 1e-4


class Preroll:
    """The last `capacity` 20 ms frames received on a connection, with their peaks."""

    def __init__(self, capacity: int = 15) -> None:
        if capacity < 1:
            raise ValueError("capacity must be at least 1 frame")
        self.capacity = capacity
        self._frames: collections.deque[tuple[np.ndarray, float]] = collections.deque(
            maxlen=capacity)

    def __len__(self) -> int:
        return len(self._frames)

    def push(self, frame: np.ndarray) -> None:
        peak = float(np.max(np.abs(frame))) if len(frame) else 0.0
        self._frames.append((frame, peak))

    def since_unmute(self, max_frames: int | None = None) -> list[np.ndarray]:
        """The frames after the last muted (digitally silent) one, oldest first, at most
        `max_frames` (the newest ones). Empty when the live edge itself is muted: the claim then
        simply starts with the next frame that arrives."""
        out: list[np.ndarray] = []
        for frame, peak in reversed(self._frames):
            if peak < MUTED_PEAK:
                break
            out.append(frame)
        out.reverse()
        if max_frames is not None and len(out) > max_frames:
            out = out[len(out) - max_frames:]
        return out

    def clear(self) -> None:
        self._frames.clear()


class FadeOut:
    """A linear fade to silence over `frames` 20 ms frames, applied frame by frame as the audio
    after a release arrives; `done` once the last faded frame went out."""

    def __init__(self, frames: int = 3) -> None:
        if frames < 1:
            raise ValueError("a fade needs at least one frame")
        self.frames = frames
        self.k = 0
        n = frames * FRAME_SAMPLES
        self._ramp = (1.0 - np.arange(1, n + 1, dtype=np.float64) / n).astype(DTYPE)

    @property
    def done(self) -> bool:
        return self.k >= self.frames

    def apply(self, frame: np.ndarray) -> np.ndarray:
        """`frame` (FRAME_SAMPLES samples) with its part of the ramp; silence once done."""
        if self.done:
            return np.zeros(len(frame), dtype=DTYPE)
        i = self.k * FRAME_SAMPLES
        g = self._ramp[i:i + len(frame)]
        self.k += 1
        out = np.zeros(len(frame), dtype=DTYPE)
        out[:len(g)] = frame[:len(g)] * g
        return out


class ArrivalJitter:
    """How much packet arrival wanders against the sender's RTP clock, over the last `window`
    packets, as the receive queue depth (20 ms frames) that would have held 95 % of them: 1 on a
    clean link, more on a phone link with jitter. Time is a parameter (seconds)."""

    def __init__(self, window: int = 100, clock_rate: int = 48000, max_frames: int = 10) -> None:
        self.window = window
        self.clock_rate = clock_rate
        self.max_frames = max_frames
        self._transit: collections.deque[float] = collections.deque(maxlen=window)
        self._ts0: int | None = None
        self._ext = 0          # timestamp unwrapped past 32-bit wrap-arounds
        self._last_ts: int | None = None

    def add(self, rtp_timestamp: int, arrival_s: float) -> None:
        if self._last_ts is not None:
            d = (rtp_timestamp - self._last_ts) & 0xFFFFFFFF
            if d >= 0x80000000:
                d -= 1 << 32
            self._ext += d
        self._last_ts = rtp_timestamp
        self._transit.append(arrival_s - self._ext / self.clock_rate)

    @property
    def spread_ms(self) -> float:
        if len(self._transit) < 5:
            return 0.0
        a = np.fromiter(self._transit, dtype=np.float64)
        return float((np.percentile(a, 95) - a.min()) * 1000.0)

    def depth_frames(self) -> int:
        """1 + the frames the 95th percentile of late arrivals needs, capped."""
        return int(min(self.max_frames, 1 + np.ceil(max(0.0, self.spread_ms - 2.0) / 20.0)))


#: where a talker's frames reach the receive queue within the tick period is summed up by one
#: pair of edges, used both to place the tick (`ArrivalPhase.phase_ns`, AlignTick) and to decide
#: a claim's queue depth (`ArrivalPhase.queue_frames`) (issue 17): the arrivals' offsets around
#: their circular mean at these percentiles. A frame beyond the late edge misses its tick and
#: is concealed; p99 of the last 2 s keeps that rare without following a single outlier
EDGE_PCT = 99.0
#: the tick goes this long after the late edge; a tick closer to it than this (or amid the
#: arrivals) would find no frame now and then, so the queue then holds 2 frames
MARGIN_NS = 1_000_000


class ArrivalPhase:
    """Where within the 20 ms tick period a talker's frames reach the receive queue, from the
    last `window` of them (monotonic ns, a parameter): the tick phase that lines the tick up
    with them, and the queue depth a tick at a given phase needs (issue 17). A frame queued
    just after a tick waits almost a whole period for the next; a tick `margin_ns` after the
    late edge of the arrivals (`edges`) reads each frame as soon as it is there."""

    def __init__(self, window: int = 100, period_ns: int = 20_000_000) -> None:
        if window < 5:
            raise ValueError("window must be at least 5 frames")
        self.period_ns = period_ns
        self._t = np.zeros(window, dtype=np.int64)
        self._n = 0

    def add(self, t_ns: int) -> None:
        self._t[self._n % len(self._t)] = t_ns
        self._n += 1

    @property
    def count(self) -> int:
        return min(self._n, len(self._t))

    def _around_mean(self) -> tuple[float, np.ndarray]:
        """The arrivals' circular mean phase (ns) and each arrival's offset from it (ns, within
        half a period either side)."""
        p = self.period_ns
        ph = (self._t[:self.count] % p).astype(np.float64)
        ang = ph * (2 * np.pi / p)
        mean = float(np.angle(np.mean(np.exp(1j * ang)))) * p / (2 * np.pi)
        return mean, (ph - mean + p / 2) % p - p / 2

    def edges(self, edge_pct: float = EDGE_PCT) -> tuple[float, float, float]:
        """(mean phase, early edge, late edge): the early and late edges are the arrivals'
        `100 - edge_pct` and `edge_pct` percentiles as offsets (ns) from the mean phase."""
        mean, dev = self._around_mean()
        lo, hi = np.percentile(dev, [100.0 - edge_pct, edge_pct])
        return mean, float(lo), float(hi)

    def phase_ns(self, margin_ns: int = MARGIN_NS, min_frames: int = 25,
                 max_spread_ns: int = 12_000_000, edge_pct: float = EDGE_PCT) -> int | None:
        """The tick phase (0 <= phase < period, on the same clock as the arrivals): `margin_ns`
        after the late edge. None with too few arrivals or when the edges are more than
        `max_spread_ns` apart: then no phase serves them all and the receive queue's depth has
        to absorb it."""
        if self.count < min_frames:
            return None
        mean, lo, hi = self.edges(edge_pct)
        if hi - lo > max_spread_ns:
            return None
        return int(np.ceil(mean + hi + margin_ns)) % self.period_ns

    def queue_frames(self, tick_phase_ns: int, margin_ns: int = MARGIN_NS,
                     edge_pct: float = EDGE_PCT, min_frames: int = 25) -> int | None:
        """The receive queue depth (20 ms frames) for ticks at `tick_phase_ns` (mod the period,
        on the arrivals' clock): 1 when the tick falls at least `margin_ns` after the late edge
        and before the next period's early edge (the same edges and margin `phase_ns` places
        the tick with, so an aligned tick always gets 1), so each tick finds the one frame that
        arrived since the last; 2 otherwise (the tick amid the arrivals, or just after them: it
        would find 0 or 2). None with fewer than `min_frames` arrivals (then the arrival jitter
        decides)."""
        if self.count < min_frames:
            return None
        p = self.period_ns
        mean, lo, hi = self.edges(edge_pct)
        after_late = (tick_phase_ns - mean - hi) % p   # how long after the late edge
        return 1 if margin_ns - 1 <= after_late < p - (hi - lo) else 2   # 1 ns: float error

    def describe(self, tick_phase_ns: int | None = None,
                 pcts: tuple[float, ...] = (1, 5, 50, 95, 99)) -> dict[str, float | None]:
        """The arrivals' offsets around their mean (ms, at `pcts` and the extremes) and where a
        tick at `tick_phase_ns` falls among them (ms after the mean): for the stats and the
        bench, so a run shows how wide the arrivals were against the tick."""
        if self.count < 5:
            return {}
        p = self.period_ns
        mean, dev = self._around_mean()
        out: dict[str, float | None] = {
            f"p{q:g}_ms": round(float(np.percentile(dev, q)) / 1e6, 3) for q in pcts}
        out["min_ms"] = round(float(dev.min()) / 1e6, 3)
        out["max_ms"] = round(float(dev.max()) / 1e6, 3)
        out["frames"] = self.count
        out["tick_after_mean_ms"] = (None if tick_phase_ns is None else
                                     round(((tick_phase_ns - mean + p / 2) % p - p / 2) / 1e6, 3))
        return out


def claim_queue_frames(jitter_frames: int, phase: ArrivalPhase, tick_phase_ns: int | None) -> int:
    """A claim's receive queue depth: what the arrival jitter asks for (`ArrivalJitter`); where
    that is at most 2 frames (a link with little jitter) and the tick's phase is known, the
    arrivals against that phase decide between 1 and 2 (`ArrivalPhase.queue_frames`)."""
    depth = max(1, jitter_frames)
    if tick_phase_ns is not None and depth <= 2:
        by_phase = phase.queue_frames(tick_phase_ns)
        if by_phase is not None:
            return by_phase
    return depth


#: a claim whose queue the jitter asks to be deeper starts with at most this many frames when
#: the pre-roll holds fewer (issue 17)
START_FRAMES = 2


def claim_start_frames(depth: int, preroll_frames: int, can_conceal: bool) -> int:
    """How many frames a claim's first read waits for. A press comes with little pre-roll (the
    audio since the microphone was unmuted, ~one claim round trip): waiting there for a queue
    as deep as the jitter asks (up to 10 frames after a stall of the phone's sender) put 200 ms
    between the press and the first packet. With a decoder to conceal late frames the claim
    starts with what it has (at least `START_FRAMES` where the depth asks for more) and the
    queue grows a frame per late arrival, as far as the arrivals really ask; without one (an
    empty queue is then a re-prime and a gap) it waits for the full depth as before."""
    if not can_conceal or depth <= START_FRAMES:
        return depth
    return min(depth, max(START_FRAMES, preroll_frames))
