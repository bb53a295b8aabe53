"""Media files (wav, mp3, ogg/opus, ogg/vorbis, flac, m4a/aac, ...) as a Source.

PyAV decodes on the shared bounded decoder pool (streamer/ingest/decode_pool.py: a few worker
threads for every playing file, never a thread per file); each decoded frame is resampled to
48 kHz (all channels kept, planar float), downmixed to mono by averaging the channels, cut into
exact 960-sample frames and put on a bounded queue. Averaging (rather than FFmpeg's default mono
matrix, which sums correlated stereo to +3 dB and an unknown 6-channel layout to +4.6 dB) means
a dual-mono file plays exactly like its mono original and the downmix can never push a sample
past full scale.

A source whose queue is full is parked (it costs no worker) until it has been read down, so a
paused (preempted) item holds at most `queue_frames` decoded frames. `read()` never blocks. The
last `history_s` seconds of frames already read are kept in a preallocated ring so a preempted
item can resume a little before where it was cut (`rewind`) without seeking the decoder.
"""
from __future__ import annotations

import math
import os
import queue
import stat
import threading
import time
from dataclasses import dataclass
from collections.abc import Callable, Generator, Iterator

import av
import numpy as np
from av.audio.frame import AudioFrame
from av.audio.stream import AudioStream
from av.container import InputContainer

from streamer.audio import DTYPE, FRAME_MS, FRAME_SAMPLES, SAMPLE_RATE, db_to_gain
from streamer.ingest.base import MediaError, Source
from streamer.ingest.decode_pool import DONE, FULL, RUN, DecodePool, default_pool

#: loudness normalisation never changes the level by more than this
MAX_NORMALISE_DB = 20.0
#: gain above unity never pushes a sample over this (-1 dBFS); the downstream limiter does the rest
PEAK_CEILING = db_to_gain(-1.0)
#: consecutive packets that fail to decode before the file counts as broken at that point
MAX_DECODE_ERRORS = 3
#: how much audio probe() decodes to prove the file plays
PROBE_DECODE_S = 0.5
#: a file whose first this-many packets decode to nothing is not playable
PROBE_MAX_PACKETS = 200


@dataclass(frozen=True)
class MediaInfo:
    path: str
    duration_s: float | None  # None when neither the container nor the stream knows it
    format_name: str          # container, e.g. "mp3", "ogg", "wav", "mov,mp4,m4a,3gp,3g2,mj2"
    codec_name: str           # e.g. "mp3float", "opus", "vorbis", "aac", "flac", "pcm_s16le"
    sample_rate: int
    channels: int
    bit_rate: int | None = None


# ----------------------------------------------------------------------------- opening

def _check_path(path: str) -> None:
    """Turn the file-system reasons a file cannot be read into user-facing MediaErrors."""
    name = os.path.basename(path) or path
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise MediaError(f"file not found: {name}") from None
    except PermissionError:
        raise MediaError(f"permission denied: cannot read {name}") from None
    except OSError as e:
        raise MediaError(f"cannot read {name}: {e.strerror or e}") from None
    if stat.S_ISDIR(st.st_mode):
        raise MediaError(f"{name} is a directory, not an audio file")
    if not stat.S_ISREG(st.st_mode):
        raise MediaError(f"{name} is not a regular file")
    if st.st_size == 0:
        raise MediaError(f"{name} is empty (0 bytes)")
    try:
        fd = os.open(path, os.O_RDONLY)
    except PermissionError:
        raise MediaError(f"permission denied: cannot read {name}") from None
    except OSError as e:
        raise MediaError(f"cannot read {name}: {e.strerror or e}") from None
    os.close(fd)


def _open(path: str) -> tuple[InputContainer, AudioStream]:
    """(container, audio stream) or MediaError. The caller closes the container."""
    path = os.fspath(path)
    _check_path(path)
    name = os.path.basename(path)
    try:
        container = av.open(path, mode="r")
    except PermissionError:
        raise MediaError(f"permission denied: cannot read {name}") from None
    except av.error.InvalidDataError:
        raise MediaError(
            f"{name} is not a playable audio file (corrupt, truncated, or an unsupported "
            "format)") from None
    except (av.error.EOFError, EOFError):
        raise MediaError(f"{name} is truncated: the file ends before any audio") from None
    except (av.FFmpegError, OSError) as e:
        raise MediaError(f"{name} cannot be opened: {_reason(e)}") from None
    if not container.streams.audio:
        kinds = sorted({s.type for s in container.streams})
        container.close()
        what = f" (it has only {', '.join(kinds)})" if kinds else ""
        raise MediaError(f"{name} contains no audio stream{what}")
    stream = container.streams.audio[0]
    if stream.codec_context is None or not stream.codec_context.name:
        container.close()
        raise MediaError(f"{name}: unsupported audio codec")
    return container, stream


def _reason(e: BaseException) -> str:
    return getattr(e, "strerror", None) or str(e) or type(e).__name__


def _duration(container: InputContainer, stream: AudioStream) -> float | None:
    """What the headers claim (a Xing frame, a WAV header...): never trusted for a duration,
    which `_measured_duration` takes from the packets actually in the file."""
    if stream.duration is not None and stream.time_base is not None and stream.duration > 0:
        return float(stream.duration * stream.time_base)
    if container.duration is not None and container.duration > 0:
        return container.duration / av.time_base
    return None


def _measured_duration(container: InputContainer, stream: AudioStream, decoded_s: float,
                       first_pts: float | None) -> float | None:
    """The end of the last audio packet present in the file, in seconds from the first
    (demuxed to the end, not decoded: ~1 s for an hour of MP3). A file cut short (a 10 KB
    piece of a 60 s MP3 whose header still says 60 s) measures as what it holds."""
    tb = stream.time_base
    end = None
    start = first_pts
    for packet in container.demux(stream):
        if packet.pts is None or tb is None:
            continue
        t = float(packet.pts * tb)
        if start is None:
            start = t
        dur = float(packet.duration * tb) if packet.duration else 0.0
        end = t + dur if end is None else max(end, t + dur)
    if end is None or start is None:
        return decoded_s if decoded_s > 0 else None
    return max(decoded_s, end - start)


def probe(path: str | os.PathLike[str]) -> MediaInfo:
    """What the file is, after proving its first audio actually decodes.

    Raises MediaError (message fit for the user) for a missing file, a directory, no read
    permission, an empty/corrupt/truncated file, a file without audio, or an unsupported codec.
    Costs a few milliseconds: it opens the container and decodes about half a second.
    """
    path = os.fspath(path)
    name = os.path.basename(path)
    container, stream = _open(path)
    try:
        rate = stream.codec_context.sample_rate or stream.sample_rate or 0
        channels = stream.codec_context.channels or stream.channels or 0
        decoded = 0
        packets = 0
        errors = 0
        last_error: BaseException | None = None
        first_pts: float | None = None
        try:
            for packet in container.demux(stream):
                packets += 1
                if first_pts is None and packet.pts is not None and stream.time_base is not None:
                    first_pts = float(packet.pts * stream.time_base)
                try:
                    for frame in packet.decode():
                        decoded += frame.samples
                        rate = frame.sample_rate or rate
                        channels = frame.layout.nb_channels or channels
                except av.FFmpegError as e:
                    errors += 1
                    last_error = e
                if rate and decoded >= PROBE_DECODE_S * rate:
                    break
                if packets >= PROBE_MAX_PACKETS:
                    break
        except av.FFmpegError as e:
            last_error = e
        if decoded == 0:
            if last_error is not None:
                raise MediaError(f"{name} is corrupt: its audio cannot be decoded "
                                 f"({_reason(last_error)})")
            raise MediaError(f"{name} contains no decodable audio (empty or truncated)")
        if rate <= 0 or channels <= 0:
            raise MediaError(f"{name}: unsupported audio (no sample rate or channel count)")
        claimed = _duration(container, stream)
        try:
            measured = _measured_duration(container, stream, decoded / rate, first_pts)
        except av.FFmpegError:  # damage after the probed start: what decoded so far
            measured = decoded / rate
        # the header may only shorten it (an edit list trims AAC priming and padding); a file
        # holding less than its header says is as long as what it holds
        if claimed is not None and measured is not None:
            measured = min(claimed, measured)
        return MediaInfo(
            path=path,
            duration_s=measured,
            format_name=container.format.name,
            codec_name=stream.codec_context.name,
            sample_rate=int(rate),
            channels=int(channels),
            bit_rate=(stream.codec_context.bit_rate or container.bit_rate or None),
        )
    finally:
        container.close()


# ----------------------------------------------------------------------------- decoding

class DecodeError(MediaError):
    """The file broke part-way: `position_s` is how much audio decoded before it did."""

    def __init__(self, message: str, position_s: float) -> None:
        super().__init__(message)
        self.position_s = position_s


def decode_mono48(path: str | os.PathLike[str], max_decode_errors: int = MAX_DECODE_ERRORS,
                  stop: Callable[[], bool] | None = None,
                  start_s: float = 0.0) -> Generator[np.ndarray, None, None]:
    """Yield the file as 48 kHz mono float32 chunks of varying length (decoder-sized).

    Isolated bad packets are skipped, as FFmpeg does; `max_decode_errors` consecutive failures
    raise DecodeError (the chunks yielded before it are good audio). Opening failures raise
    MediaError. Closing the generator closes the file. Used by FileSource and by
    streamer.mixer.loudness.measure_file, so loudness is measured on exactly what is played.

    `start_s` > 0 seeks there (to the keyframe before it, then drops samples up to it); a
    container that cannot seek is decoded from the start and the head dropped.
    """
    path = os.fspath(path)
    name = os.path.basename(path)
    container, stream = _open(path)
    resampler: av.AudioResampler | None = None  # None until the first frame
    current: av.AudioResampler  # = resampler once set (the first frame always sets it)
    layout_key = None
    produced = 0
    consecutive = 0
    skip = 0  # samples still to drop before `start_s`
    seeking = start_s > 0
    t0 = 0.0  # the stream's first timestamp (not always 0: encoder delay, cut files)
    if seeking:
        skip = int(round(start_s * SAMPLE_RATE))
        try:
            time_base = stream.time_base
            if time_base is not None:  # without one there is nothing to seek by
                if stream.start_time is not None:
                    t0 = float(stream.start_time * time_base)
                container.seek(int((start_s + t0) / time_base), stream=stream, backward=True)
        except (av.FFmpegError, ValueError, TypeError):
            pass  # not seekable: decode from the start and drop the head

    def emit(frames: list[AudioFrame]) -> Iterator[np.ndarray]:
        nonlocal produced, skip
        for out in frames:
            x = out.to_ndarray()  # (channels, n) planar float32
            if x.shape[1] == 0:
                continue
            mono = x[0] if x.shape[0] == 1 else x.mean(axis=0, dtype=np.float32)
            if skip:
                if mono.shape[0] <= skip:
                    skip -= mono.shape[0]
                    continue
                mono = mono[skip:]
                skip = 0
            produced += mono.shape[0]
            yield mono

    try:
        try:
            for packet in container.demux(stream):
                if stop is not None and stop():
                    return
                try:
                    frames = packet.decode()
                except av.FFmpegError as e:
                    consecutive += 1
                    if consecutive >= max_decode_errors:
                        raise DecodeError(
                            f"{name} is corrupt at {produced / SAMPLE_RATE:.2f} s "
                            f"({_reason(e)})", produced / SAMPLE_RATE) from None
                    continue
                consecutive = 0
                for frame in frames:
                    if seeking:
                        # where the seek landed: only the rest up to start_s is dropped
                        seeking = False
                        if frame.pts is not None and frame.time_base is not None:
                            landed = float(frame.pts * frame.time_base) - t0
                            skip = max(0, int(round((start_s - max(0.0, landed)) * SAMPLE_RATE)))
                    key = (frame.format.name, frame.layout.name, frame.layout.nb_channels,
                           frame.sample_rate)
                    if key != layout_key:
                        # a stream may change rate/layout mid-file: drain and rebuild
                        if resampler is not None:
                            yield from emit(resampler.resample(None))
                        resampler = current = av.AudioResampler(
                            format="fltp", layout=frame.layout, rate=SAMPLE_RATE)
                        layout_key = key
                    frame.pts = None  # we play samples back to back; gaps in pts are ignored
                    yield from emit(current.resample(frame))
        except av.FFmpegError as e:
            # the demuxer itself gave up (truncated or garbled container)
            raise DecodeError(f"{name} is corrupt at {produced / SAMPLE_RATE:.2f} s "
                              f"({_reason(e)})", produced / SAMPLE_RATE) from None
        if resampler is not None:
            yield from emit(resampler.resample(None))
    finally:
        container.close()


# ----------------------------------------------------------------------------- the Source

#: the first frames of recently played files, decoded and gained, so the same recording (an
#: alert played again, a jingle) is ready the moment it is asked for, before its decoder is up
PREFIX_FRAMES = 25  # 0.5 s
_PREFIX_MAX = 64
_PrefixKey = tuple[str, int, int, float]  # path, size, mtime_ns, gain_db
_PREFIX: dict[_PrefixKey, list[np.ndarray]] = {}
_PREFIX_LOCK = threading.Lock()


def _prefix_key(path: str, gain_db: float) -> _PrefixKey | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (path, st.st_size, st.st_mtime_ns, round(gain_db, 3))


#: how much shorter than measured a file may end before that is an error (decoder padding,
#: priming samples, a last partial frame)
SHORT_END_TOLERANCE_S = 1.0


class FileSource(Source):
    kind = "file"

    def __init__(self, path: str | os.PathLike[str], gain_db: float = 0.0,
                 loudness_target_lufs: float | None = None, measured_lufs: float | None = None,
                 history_s: float = 10.0, queue_frames: int = 50, start_s: float = 0.0,
                 max_decode_errors: int = MAX_DECODE_ERRORS, priority: int = 0,
                 pool: DecodePool | None = None, expected_s: float | None = None) -> None:
        super().__init__()
        self.path = os.fspath(path)
        #: the measured length (probe): ending well before it is an error, not a finish
        self.expected_s = expected_s
        self.ended_at_s: float | None = None
        #: the decoder pool serves higher priorities first (the runtime gives the broadcast level)
        self.decode_priority = int(priority)
        self._pool = pool
        self._pool_parked = False
        self._pool_running = False
        self._frames_gen: Generator[np.ndarray, None, None] | None = None
        self._pending: np.ndarray | None = None  # decoded, waiting for queue space
        self.max_decode_errors = max_decode_errors
        norm_db = 0.0
        if (loudness_target_lufs is not None and measured_lufs is not None
                and math.isfinite(measured_lufs)):
            norm_db = max(-MAX_NORMALISE_DB,
                          min(MAX_NORMALISE_DB, loudness_target_lufs - measured_lufs))
        #: the gain asked for (normalisation + gain_db), in dB
        self.gain_db = float(norm_db + gain_db)
        self._gain = db_to_gain(self.gain_db)  # only ever lowered, by peak protection
        self.queue_frames = max(1, int(queue_frames))
        self._queue: queue.Queue[np.ndarray] = queue.Queue(maxsize=self.queue_frames)
        #: a parked decoder is woken once the queue has been read down to this
        self._low_water = self.queue_frames - max(1, self.queue_frames // 4)
        self._stop = threading.Event()
        self._done = threading.Event()      # worker has put its last frame
        self._has_data = threading.Event()  # first frame queued, or worker done
        self._closed = False
        self.decoded_frames = 0
        # history ring: frames already read, in media order (slot i = frame number i mod cap)
        self._hist_cap = max(1, int(round(history_s * 1000 / FRAME_MS)))
        self._hist = np.zeros((self._hist_cap, FRAME_SAMPLES), dtype=DTYPE)
        self._hist_count = 0   # frames written to the ring so far (total)
        self._replay = 0       # frames of history still to replay before new ones
        self._position = 0     # frame index in the media of the next frame read() returns
        #: where playback starts in the media (a resumed item re-opened before its cut point)
        self.start_s = max(0.0, float(start_s))
        self._position = int(round(self.start_s * 1000 / FRAME_MS))
        self._prefix_key = _prefix_key(self.path, self.gain_db) if self.start_s == 0 else None
        self._skip = 0         # frames the worker decodes but does not queue (prefilled)

    # -- gain -------------------------------------------------------------------------
    @property
    def applied_gain_db(self) -> float:
        """The gain in force now: the asked gain, lowered if peaks would have clipped."""
        return 20.0 * math.log10(self._gain) if self._gain > 0 else -math.inf

    def _apply_gain(self, frame: np.ndarray) -> None:
        g = self._gain
        if g == 1.0:
            return
        if g > 1.0:
            peak = float(np.max(np.abs(frame)))
            if peak * g > PEAK_CEILING:
                # lower the gain for the rest of the item (never raise it again: no pumping);
                # never below unity: content that is already hot is the limiter's job
                g = self._gain = max(1.0, PEAK_CEILING / peak)
        frame *= g

    # -- decoding (on the shared pool) --------------------------------------------------
    def start(self) -> None:
        if self._frames_gen is not None or self._closed:
            return
        prefix = None
        if self._prefix_key is not None:
            with _PREFIX_LOCK:
                prefix = _PREFIX.get(self._prefix_key)
        if prefix:
            for f in prefix[: self.queue_frames]:
                self._queue.put_nowait(f)
                self._skip += 1
            self.decoded_frames = self._skip
            self.ready_ns = time.monotonic_ns()
            self._has_data.set()
        self._frames_gen = self._produce()
        if self._pool is None:
            self._pool = default_pool()
        self._pool.submit(self)

    def _produce(self) -> Generator[np.ndarray, None, None]:
        """The file as gained 960-sample frames (those already queued from the prefix cache
        are decoded but not yielded). Runs a turn at a time on a pool worker."""
        extra = {"start_s": self.start_s} if self.start_s else {}
        gen = decode_mono48(self.path, self.max_decode_errors, stop=self._stop.is_set, **extra)
        try:
            acc = np.zeros(FRAME_SAMPLES, dtype=DTYPE)
            fill = 0
            produced = 0
            prefilled = self._skip > 0
            learn: list[np.ndarray] = []
            for chunk in gen:
                i, n = 0, chunk.shape[0]
                while i < n:
                    take = min(FRAME_SAMPLES - fill, n - i)
                    acc[fill:fill + take] = chunk[i:i + take]
                    fill += take
                    i += take
                    if fill == FRAME_SAMPLES:
                        self._apply_gain(acc)
                        produced += 1
                        if produced <= PREFIX_FRAMES and not prefilled:
                            learn.append(acc.copy())
                            if produced == PREFIX_FRAMES:
                                self._remember(learn)
                        if produced > self._skip:  # else already queued from the prefix cache
                            yield acc
                        acc = np.zeros(FRAME_SAMPLES, dtype=DTYPE)
                        fill = 0
            if not self._stop.is_set():
                self.ended_at_s = self.start_s + (produced * FRAME_SAMPLES + fill) / SAMPLE_RATE
            if fill and not self._stop.is_set():
                acc[fill:] = 0.0  # the last frame is padded with silence
                self._apply_gain(acc)
                yield acc
        finally:
            gen.close()

    def _queued(self) -> int:
        return self._queue.qsize()

    def _room(self) -> bool:
        return self._stop.is_set() or self._queue.qsize() <= self._low_water

    def _pump(self, budget: int) -> int:
        """One turn on a pool worker: up to `budget` frames onto the queue. RUN: more to do,
        FULL: the queue is full (park until read down), DONE: ended, failed or closed."""
        gen = self._frames_gen
        try:
            while gen is not None and not self._stop.is_set():
                if budget <= 0:
                    return RUN
                if self._pending is None:
                    self._pending = next(gen)
                try:
                    self._queue.put_nowait(self._pending)
                except queue.Full:
                    return FULL
                self._pending = None
                budget -= 1
                self.decoded_frames += 1
                if self.ready_ns is None:
                    self.ready_ns = time.monotonic_ns()
                self._has_data.set()
        except StopIteration:
            self.error = self._short_end()
        except MediaError as e:
            self.error = str(e)
        except Exception as e:  # a bug or an FFmpeg surprise must not kill silently
            self.error = f"{os.path.basename(self.path)}: decoding failed ({e!r})"
        self._pending = None
        if gen is not None:
            gen.close()  # closes the file (a no-op when it ended by itself)
        self._done.set()
        self._has_data.set()
        return DONE

    def _short_end(self) -> str | None:
        """An error when the file ended well before its measured length (truncated or
        replaced while playing): the broadcast then finishes with this error."""
        end, want = self.ended_at_s, self.expected_s
        if end is None or want is None or self._stop.is_set():
            return None
        if end >= want - max(SHORT_END_TOLERANCE_S, want * 0.02):
            return None
        return (f"{os.path.basename(self.path)} ended at {end:.1f} s of {want:.1f} s "
                "(truncated or changed while playing)")

    def _remember(self, frames: list[np.ndarray]) -> None:
        if self._prefix_key is None or self.error:
            return
        for f in frames:
            f.setflags(write=False)
        with _PREFIX_LOCK:
            _PREFIX[self._prefix_key] = frames
            while len(_PREFIX) > _PREFIX_MAX:
                _PREFIX.pop(next(iter(_PREFIX)))

    # -- Source interface ------------------------------------------------------------------
    def ready(self) -> bool:
        return not self._closed and (self._replay > 0 or not self._queue.empty())

    def wait_ready(self, timeout: float) -> bool:
        """Block (off the tick!) until a frame is available or the file has ended."""
        self._has_data.wait(timeout)
        return self.ready()

    def read(self) -> np.ndarray | None:
        if self._closed:
            return None
        if self._replay > 0:
            slot = (self._hist_count - self._replay) % self._hist_cap
            self._replay -= 1
            self._position += 1
            self.frames_read += 1
            replayed: np.ndarray = self._hist[slot]
            replayed.flags.writeable = False
            return replayed
        try:
            frame = self._queue.get_nowait()
        except queue.Empty:
            if self._frames_gen is not None and not self._done.is_set() and not self._closed:
                self.underruns += 1
            frame = None
        if self._pool_parked and self._pool is not None \
                and self._queue.qsize() <= self._low_water:
            self._pool.wake(self)
        if frame is None:
            return None
        slot = self._hist_count % self._hist_cap
        out: np.ndarray = self._hist[slot]
        out[:] = frame
        self._hist_count += 1
        self._position += 1
        self.frames_read += 1
        out = out.view()
        out.flags.writeable = False
        return out

    @property
    def finished(self) -> bool:
        if self._closed:
            return True
        return self._done.is_set() and self._replay == 0 and self._queue.empty()

    def rewind(self, seconds: float) -> None:
        want = int(round(max(0.0, seconds) * 1000 / FRAME_MS))
        available = min(self._hist_count, self._hist_cap) - self._replay
        step = min(want, max(0, available))
        self._replay += step
        self._position -= step

    @property
    def position_s(self) -> float:
        return self._position * FRAME_MS / 1000.0

    @property
    def queued_frames(self) -> int:
        return self._queue.qsize()

    @property
    def worker_alive(self) -> bool:
        """The decoder still holds the file (started, neither ended nor closed)."""
        return self._frames_gen is not None and not self._done.is_set()

    def close(self, timeout: float = 2.0) -> None:
        self._closed = True
        self._replay = 0
        self._stop.set()
        # free queue space (a turn may still slip one frame in before it sees the stop flag:
        # drained again after), and hand a parked decoder back to the pool so a worker closes
        # the file (only the thread running a generator may close it)
        self._drain()
        pool = self._pool
        if pool is not None and self._frames_gen is not None:
            pool.wake(self)
            self._done.wait(timeout)
        self._drain()

    def _drain(self) -> None:
        try:
            while True:
                self._queue.get_nowait()
        except queue.Empty:
            pass

    def __repr__(self) -> str:
        return (f"FileSource({os.path.basename(self.path)!r}, pos={self.position_s:.2f}s, "
                f"gain={self.gain_db:+.1f}dB, error={self.error!r})")
