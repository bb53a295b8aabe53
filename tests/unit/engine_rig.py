"""A Runtime driven tick by tick with explicit times, no thread and no socket: a fan-out that
records what it is asked to send, and a catalogue that can also play test-made sources."""
from __future__ import annotations

import numpy as np

from streamer.audio import SAMPLE_RATE
from streamer.ingest.catalogue import Catalogue
from streamer.ingest.live import LiveSource
from streamer.mixer.arbitration import Level
from streamer.port import (Destination, FileAudio, LiveAudio, ReplaceZones, SetDestinations,
                           SetZoneLoss, StartBroadcast, ToneAudio)
from streamer.rtp.opus import OpusDecoder
from streamer.rtp.output import addr_phase
from streamer.rtp.packet import RtpPacket
from streamer.runtime import EngineSettings, Runtime
from streamer.zones import ZoneTree


class RecordingFanout:
    def __init__(self):
        self.sent = []  # (tick, bytes, keys)
        self.tick = 0
        self.dests = {}

    def set_destinations(self, key, addrs):
        self.dests[key] = list(addrs)

    def send(self, packet, keys):
        self.sent.append((self.tick, bytes(packet), list(keys)))
        return len(keys)

    def stats(self):
        return {"sent": len(self.sent)}

    def by_zone(self, zone):
        return [(t, RtpPacket.parse(p)) for t, p, keys in self.sent if zone in keys]


class RigCatalogue(Catalogue):
    """Plays `FileAudio("test:<name>")` from a factory the test registered."""

    def __init__(self):
        super().__init__()
        self.made = {}

    def factory(self, desc, priority=0):
        if isinstance(desc, FileAudio) and desc.path in self.made:
            return self.made[desc.path]
        return super().factory(desc, priority)


class Rig:
    """The runtime, its recording fan-out, the events, and a clock the test moves."""

    def __init__(self, tree: ZoneTree, keyring=None, **settings):
        self.fan = RecordingFanout()
        self.catalogue = RigCatalogue()
        self.rt = Runtime(self.fan, EngineSettings(**settings), keyring=keyring,
                          catalogue=self.catalogue)
        self.events = []
        self.rt.subscribe(self.events.append)
        self.rt.submit(ReplaceZones(tuple(tree.zones.values()),
                                    {g: tuple(m) for g, m in tree.groups.items()}))
        self.k = 0
        self.now_ns = 1_000 * 10**9
        self.wall = 1_700_000_000.0

    # time
    def run(self, ticks: int) -> int:
        for _ in range(ticks):
            self.fan.tick = self.k
            self.rt.run_tick(self.k, self.now_ns, self.wall)
            self.k += 1
            self.now_ns += 20_000_000
            self.wall += 0.02
        return self.k

    def wait(self, seconds: float) -> None:
        """Time passes without ticks (the tick index jumps too, as after a stall)."""
        self.now_ns += int(seconds * 1e9)
        self.wall += seconds

    # commands
    def start(self, zones, level="normal", freq=1000, seconds=3.0, mode="preempt", live=False,
              owner="", source=None):
        if source is None:
            if live:
                source = LiveAudio(self.rt.add_live_input(LiveSource(kind="webrtc")))
            else:
                source = ToneAudio(freq_hz=freq, seconds=seconds)
        return self.rt.submit(StartBroadcast(id="", targets=tuple(zones),
                                             level=Level.parse(level), source=source,
                                             mode=mode, owner=owner))

    def play(self, name: str, factory, **kw):
        """Start a broadcast of a test-made source (`factory(start_s) -> Source`)."""
        self.catalogue.made[f"test:{name}"] = factory
        return self.start(source=FileAudio(f"test:{name}"), **kw)

    def set_destinations(self, zone, addrs):
        self.rt.submit(SetDestinations(zone, tuple(Destination(*a) for a in addrs)))

    def set_zone_loss(self, zone, perc):
        self.rt.submit(SetZoneLoss(zone, perc))

    @property
    def types(self):
        return [e.type for e in self.events]


def long_key(zone, ptime, addr):
    return f"{zone}|{ptime}~{addr_phase(addr, ptime // 20)}"


def dominant_freq(pcm):
    spec_ = np.abs(np.fft.rfft(pcm * np.hanning(len(pcm))))
    return np.fft.rfftfreq(len(pcm), 1 / SAMPLE_RATE)[np.argmax(spec_)]


def decode_zone(fan, zone):
    dec = OpusDecoder()
    out = [dec.decode(p.payload) for _, p in fan.by_zone(zone)]
    return np.concatenate(out) if out else np.zeros(0, np.float32)
