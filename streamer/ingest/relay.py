"""An upstream live stream (the national or provincial station's Icecast/HTTP MP3, AAC or Ogg
stream, or HLS) as a Source.

A worker thread opens the URL with PyAV (FFmpeg's demuxers, HLS included), decodes, resamples to
48 kHz, averages the channels to mono, cuts exact 960-sample frames and puts them with a
"silent" flag on a bounded queue. FFmpeg does no network I/O of its own here: every resource
it reads (the stream, an HLS playlist and its segments) comes through PyAV's `io_open` from
streamer/ingest/relay_http.py, which resolves each host once per connection, checks the
addresses (public, or in `allow_hosts`) and connects to the address it checked (no DNS
rebinding between the check and the connect; a playlist cannot point at a local file).
A full queue drops its oldest frame: a relay is live, so a paused (preempted) relay comes back
near the live point, never minutes behind.

The stream ending or breaking (or a read stalling past `read_timeout_s`) is a drop: the worker
reconnects with a bounded exponential back-off (0.5 s, 1 s, 2 s ... `reconnect_max_s`), reset
once audio flows again.

`read()` (the tick) never blocks and allocates nothing: it takes a queued frame or nothing.
Dead air (no frame, or a silent one, for `silence_s`) raises a notice once (the engine publishes
it as a `broadcast.notice` event) and switches to the fallback source (a recording or a tone,
opened and started ahead, looped by a helper thread) until live audio comes back, which raises
a second notice.
"""
from __future__ import annotations

import math
import queue
import threading
import time
from collections.abc import Callable, Iterable
from urllib.parse import urlsplit

import av
import numpy as np

from streamer.audio import DTYPE, FRAME_MS, FRAME_SAMPLES, SAMPLE_RATE
from streamer.ingest.base import MediaError, Source
from streamer.ingest.relay_http import AddressPolicy, PinnedOpener, Resolver, system_resolver

#: FFmpeg's HLS demuxer would reuse its own HTTP connection for the next segment, which a
#: custom `io_open` does not have (FFmpeg asserts on it): one request per resource instead
DEMUXER_OPTIONS = {"http_persistent": "0"}
#: a frame whose peak is below this counts as dead air
SILENCE_DBFS = -60.0
BACKOFF_START_S = 0.5
#: HLS arrives a whole segment at a time (and three at the start: FFmpeg joins a live playlist
#: three segments from its end): the queue holds that much, or a burst would drop the audio
#: that has to play until the next segment (segments of 2-10 s are usual)
HLS_QUEUE_S = 40.0


def check_url(url: str) -> None:
    """MediaError unless `url` is an http(s) URL with a host (the engine's own check; control
    also checks the host against its allowed list)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        raise MediaError(f"not a URL: {url!r}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise MediaError("a relay URL must be http:// or https:// with a host")


class RelaySource(Source):
    kind = "relay"

    def __init__(self, url: str, *, fallback: Callable[[float], Source] | None = None,
                 silence_s: float = 10.0, reconnect_max_s: float = 10.0,
                 seconds: float | None = None, start_s: float = 0.0, queue_frames: int = 50,
                 open_timeout_s: float = 5.0, read_timeout_s: float = 5.0,
                 silence_dbfs: float = SILENCE_DBFS, allow_hosts: Iterable[str] = (),
                 resolver: Resolver = system_resolver) -> None:
        super().__init__()
        check_url(url)
        self.url = url
        self._policy = AddressPolicy(allow_hosts)
        self._resolver = resolver
        self._fallback_factory = fallback
        self.silence_s = max(FRAME_MS / 1000.0, float(silence_s))
        self.reconnect_max_s = max(BACKOFF_START_S, float(reconnect_max_s))
        self._silence_ticks = int(math.ceil(self.silence_s * 1000 / FRAME_MS))
        self._start_ticks = int(round(max(0.0, start_s) * 1000 / FRAME_MS))
        self._limit: int | None = None
        if seconds is not None:
            self._limit = max(0, int(round(seconds * 1000 / FRAME_MS)) - self._start_ticks)
        self._timeouts = (open_timeout_s, read_timeout_s)
        self._threshold = float(10 ** (silence_dbfs / 20))
        self._q: queue.Queue[tuple[np.ndarray, bool]] = queue.Queue()
        #: frames kept before the oldest is dropped: `queue_frames` for a stream that trickles
        #: in real time, at least HLS_QUEUE_S for HLS, which arrives a segment at a time
        self._queue_frames = max(2, queue_frames)
        self._cap = self._queue_frames
        self._stop = threading.Event()
        self._refill = threading.Event()
        self._worker: threading.Thread | None = None
        self._keeper: threading.Thread | None = None
        self._fallback: Source | None = None
        self._started_at: float | None = None
        self._ticks = 0
        self._dead_ticks = 0
        self._finished = False
        # counters (read by tests and status; written by one thread each)
        self.connects = 0
        self.drops = 0
        self.dropped_frames = 0
        self.dead_air_events = 0
        self.restores = 0
        self.fallback_frames = 0
        self.blocked = 0          # connections refused by the address check
        self.last_error: str | None = None
        #: the address each session connected to for the relay's host (tests, status)
        self.addresses: list[str] = []

    # ------------------------------------------------------------------ worker side
    def start(self) -> None:
        if self._worker is not None:
            return
        self._started_at = time.monotonic()
        if self._fallback_factory is not None:
            self._fallback = self._open_fallback()
            self._keeper = threading.Thread(target=self._keep_fallback, daemon=True,
                                            name="loa-relay-fallback")
            self._keeper.start()
        self._worker = threading.Thread(target=self._work, daemon=True, name="loa-relay")
        self._worker.start()

    def _open_fallback(self) -> Source | None:
        assert self._fallback_factory is not None
        try:
            s = self._fallback_factory(0.0)
            s.start()
            return s
        except Exception as e:  # a broken fallback must not take the relay down
            self.last_error = f"fallback: {e}"
            return None

    def _keep_fallback(self) -> None:
        """Reopens the fallback when it has played out (it loops), off the tick."""
        while not self._stop.is_set():
            if not self._refill.wait(0.5):
                continue
            self._refill.clear()
            if self._stop.is_set():
                return
            old, self._fallback = self._fallback, self._open_fallback()
            if old is not None:
                old.close()

    def _push(self, frame: np.ndarray) -> None:
        frame.setflags(write=False)
        silent = bool(np.max(np.abs(frame)) < self._threshold)
        if self.ready_ns is None:
            self.ready_ns = time.monotonic_ns()
        while self._q.qsize() >= self._cap:
            try:
                self._q.get_nowait()
                self.dropped_frames += 1
            except queue.Empty:
                break
        self._q.put_nowait((frame, silent))

    def _work(self) -> None:
        backoff = BACKOFF_START_S
        while not self._stop.is_set():
            flowed = False
            try:
                flowed = self._session()
            except (av.FFmpegError, OSError, ValueError, EOFError) as e:
                self.last_error = str(e) or type(e).__name__
            except Exception as e:  # any other decoder failure: still only a drop
                self.last_error = f"{type(e).__name__}: {e}"
            if self._stop.is_set():
                return
            self.drops += 1
            if flowed:
                backoff = BACKOFF_START_S
            self._stop.wait(backoff)
            backoff = min(backoff * 2, self.reconnect_max_s)

    def _session(self) -> bool:
        """One connection: decode until the upstream ends or breaks. True if audio flowed."""
        opener = PinnedOpener(self._policy, resolver=self._resolver,
                              connect_timeout_s=self._timeouts[0],
                              read_timeout_s=self._timeouts[1])
        try:
            container = av.open(self.url, io_open=opener.io_open, timeout=self._timeouts,
                                container_options=DEMUXER_OPTIONS)
        except BaseException:
            self._opened(opener)
            opener.close()
            self.blocked += opener.blocked
            if opener.last_error:   # why it could not be opened, not FFmpeg's "invalid data"
                raise MediaError(opener.last_error) from None
            raise
        self._opened(opener)
        flowed = False
        try:
            if not container.streams.audio:
                raise MediaError("the upstream stream has no audio")
            stream = container.streams.audio[0]
            self._cap = self._queue_frames
            if container.format.name == "hls":
                self._cap = max(self._cap, int(HLS_QUEUE_S * 1000 / FRAME_MS))
            self.connects += 1
            resampler: av.AudioResampler | None = None
            key: tuple[object, ...] | None = None
            rest = np.zeros(0, dtype=DTYPE)
            for packet in container.demux(stream):
                if self._stop.is_set():
                    return flowed
                try:
                    frames = packet.decode()
                except av.FFmpegError:
                    continue  # a damaged packet of a live stream: skip it
                for frame in frames:
                    k = (frame.format.name, frame.layout.name, frame.sample_rate)
                    if k != key or resampler is None:
                        resampler = av.AudioResampler(format="fltp", layout=frame.layout,
                                                      rate=SAMPLE_RATE)
                        key = k
                    frame.pts = None
                    for out in resampler.resample(frame):
                        x = out.to_ndarray()
                        if x.shape[1] == 0:
                            continue
                        mono = x[0] if x.shape[0] == 1 else x.mean(axis=0, dtype=np.float32)
                        rest = np.concatenate((rest, mono.astype(DTYPE, copy=False)))
                        n = rest.shape[0] // FRAME_SAMPLES
                        for i in range(n):
                            self._push(rest[i * FRAME_SAMPLES:(i + 1) * FRAME_SAMPLES].copy())
                        rest = rest[n * FRAME_SAMPLES:]
                        flowed = flowed or n > 0
            self.last_error = opener.last_error or "the upstream ended the stream"
            return flowed
        finally:
            container.close()
            opener.close()
            self.blocked += opener.blocked

    def _opened(self, opener: PinnedOpener) -> None:
        if opener.requests:
            self.addresses.append(opener.requests[0][1])

    # ------------------------------------------------------------------ the tick's side
    def ready(self) -> bool:
        if not self._q.empty():
            return True
        # nothing yet: after silence_s it airs anyway (fallback, or dead air reported)
        return self._started_at is not None and \
            time.monotonic() - self._started_at >= self.silence_s

    def read(self) -> np.ndarray | None:
        if self._finished:
            return None
        self._ticks += 1
        if self._limit is not None and self._ticks >= self._limit:
            self._finished = True
        try:
            frame, silent = self._q.get_nowait()
        except queue.Empty:
            frame, silent = None, True
        if frame is not None and not silent:
            if self._dead_ticks >= self._silence_ticks:
                self.restores += 1
                self.notice = (f"relay restored after {self._dead_ticks * FRAME_MS / 1000:.0f} s"
                               " of dead air")
            self._dead_ticks = 0
            self.frames_read += 1
            return frame
        self._dead_ticks += 1
        if self._dead_ticks == self._silence_ticks:
            self.dead_air_events += 1
            self.notice = (f"dead air: nothing from the relay for {self.silence_s:.0f} s"
                           + ("; playing the fallback" if self._fallback_factory else ""))
        if self._dead_ticks >= self._silence_ticks:
            fb = self._fallback
            if fb is not None:
                f = fb.read()
                if f is not None:
                    self.fallback_frames += 1
                    self.frames_read += 1
                    return f
                if fb.finished:
                    self._refill.set()
        if frame is not None:
            self.frames_read += 1
            return frame
        self.underruns += 1
        return None

    @property
    def dead_air(self) -> bool:
        return self._dead_ticks >= self._silence_ticks

    @property
    def finished(self) -> bool:
        return self._finished

    @property
    def position_s(self) -> float:
        return (self._start_ticks + self._ticks) * FRAME_MS / 1000.0

    def rewind(self, seconds: float) -> None:
        """Live: nothing to step back into."""

    def close(self) -> None:
        self._finished = True
        self._stop.set()
        self._refill.set()
        for t in (self._worker, self._keeper):
            if t is not None and t is not threading.current_thread():
                t.join(timeout=0.2)   # a read blocked upstream ends by its own timeout
        fb, self._fallback = self._fallback, None
        if fb is not None:
            fb.close()
