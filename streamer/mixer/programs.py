"""One encoder per distinct programme: mix its layers into the encoder's input, limit, encode.

A programme key is a tuple of layers `(playhead id, gain at tick start, gain at tick end)`;
zones with the same key hear byte-identical audio, so it is mixed and encoded once. Channels
(encoder + limiter + packet buffer) are reused across ticks; a programme whose zones heard
another programme last tick takes over that programme's encoder, so their decoders see one
continuous Opus stream where possible."""
from __future__ import annotations

from collections.abc import Callable, Hashable, Mapping

import numpy as np

from streamer.audio import DTYPE, FRAME_SAMPLES
from streamer.mixer.mix import SoftLimiter, add_scaled
from streamer.rtp.opus import OpusEncoder, OpusSettings
from streamer.rtp.packet import HEADER_SIZE

#: a programme: its layers (playhead id, gain at tick start, gain at tick end), first wins
ProgramKey = tuple[tuple[int, float, float], ...]


class ProgramChannel:
    """Encoder + limiter + packet buffer for one distinct program. Reused across ticks. After
    `mix_encode`, `bus` holds the programme's PCM and `buf[HEADER_SIZE:n]` its Opus payload
    (see `streamer.rtp.output.ProgramFrame`)."""

    def __init__(self, opus: OpusSettings, ceiling_db: float) -> None:
        self.encoder = OpusEncoder(opus)
        self.limiter = SoftLimiter(ceiling_db)
        self.bus = self.encoder.input   # mixed in place: the encoder reads it without a copy
        assert self.bus.dtype == DTYPE and len(self.bus) == FRAME_SAMPLES
        self.scratch = np.zeros(FRAME_SAMPLES, dtype=DTYPE)
        self.buf = bytearray(HEADER_SIZE + 1500)
        self.view = memoryview(self.buf)
        self.n = HEADER_SIZE
        self.last_used = 0.0

    def mix_encode(self, key: ProgramKey, frames: Mapping[int, np.ndarray]) -> None:
        bus = self.bus
        if len(key) == 1 and key[0][1] == 1.0 and key[0][2] == 1.0:
            np.copyto(bus, frames[key[0][0]])    # one source at unity: the common case
        else:
            bus.fill(0.0)
            for pid, g0, g1 in key:
                add_scaled(bus, frames[pid], g0, g1, self.scratch)
        self.limiter.process(bus)
        payload = self.encoder.encode_input()
        n = self.n = HEADER_SIZE + len(payload)
        self.buf[HEADER_SIZE:n] = payload

    def close(self) -> None:
        self.encoder.close()


class ProgramBank:
    def __init__(self, opus: OpusSettings, ceiling_db: float, idle_ttl_s: float = 10.0,
                 on_close: Callable[[int], None] | None = None) -> None:
        self.opus = opus
        #: told the id (as in `loss()`) of each encoder closed after idling
        self.on_close = on_close
        self.ceiling_db = ceiling_db
        self.idle_ttl_s = idle_ttl_s
        self.channels: dict[ProgramKey, ProgramChannel] = {}
        self._free: list[ProgramChannel] = []

    def assign(self, programs: Mapping[ProgramKey, tuple[str, ...]],
               previous: Mapping[str, ProgramKey], now: float) -> dict[ProgramKey, ProgramChannel]:
        """A channel for every programme (`previous`: the key each zone heard last tick)."""
        used: dict[ProgramKey, ProgramChannel] = {}
        for key in programs:
            ch = self.channels.get(key)
            if ch is not None:
                used[key] = ch
        released = [ch for kk, ch in self.channels.items() if kk not in programs]
        for key, zones in programs.items():
            if key in used:
                continue
            # hand over the encoder of the program these zones heard before (a gain ramp or a
            # switch), so their decoders see one continuous Opus stream where possible
            before = previous.get(zones[0])
            prev = self.channels.get(before) if before is not None else None
            if prev is not None and prev in released:
                released.remove(prev)
                ch = prev
            elif released:
                ch = released.pop()
            elif self._free:
                ch = self._free.pop()
            else:
                ch = ProgramChannel(self.opus, self.ceiling_db)
            used[key] = ch
        self._free.extend(released)
        if self._free:
            keep = []
            for ch in self._free:
                if now - ch.last_used > self.idle_ttl_s:
                    ch.close()
                    if self.on_close is not None:
                        self.on_close(id(ch))
                else:
                    keep.append(ch)
            self._free = keep
        self.channels = used
        return used

    def mix_encode(self, frames: Mapping[int, np.ndarray], now: float) -> None:
        for key, ch in self.channels.items():
            ch.last_used = now
            ch.mix_encode(key, frames)

    def loss(self) -> dict[ProgramKey, tuple[Hashable, int]]:
        """key -> (encoder id, the loss it plans for): for the loss policy."""
        return {key: (id(ch), ch.encoder.loss_perc) for key, ch in self.channels.items()}

    def close(self) -> None:
        for ch in list(self.channels.values()) + self._free:
            ch.close()
        self.channels = {}
        self._free = []
