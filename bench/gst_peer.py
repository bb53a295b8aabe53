"""The GStreamer peer: the same stream through multiudpsink, for a side-by-side number.

Runs under the SYSTEM python (python3-gi lives there, not in the venv); standard library + gi
only. `clients` is set through the property, not gst-launch: thousands of clients are longer
than one command-line argument may be.

audiotestsrc (live, 1 kHz) ! opusenc bitrate=B frame-size=F complexity=C inband-fec=…
  ! rtpopuspay ! multiudpsink   (the encoder settings are the ones Loa is run with)

Protocol on stdio (driven by bench.fanout): prints `ready`, waits for `go`, plays exactly
ceil(seconds/frame) buffers to EOS, prints one JSON line, waits for `quit` (bounded), exits.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time

import gi

gi.require_version("Gst", "1.0")
from gi.repository import Gst  # noqa: E402


def host(i: int) -> str:  # same addressing as bench.common.receiver_host
    return f"127.0.{i // 250}.{i % 250 + 1}"


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--receivers", type=int, required=True)
    p.add_argument("--seconds", type=float, default=10)
    p.add_argument("--frame-ms", type=int, default=20)
    p.add_argument("--bitrate", type=int, default=32000)
    p.add_argument("--complexity", type=int, default=10)  # opusenc's own default
    p.add_argument("--fec", action="store_true")
    a = p.parse_args()
    Gst.init(None)
    samples = 48000 * a.frame_ms // 1000
    buffers = int(math.ceil(a.seconds * 1000 / a.frame_ms))
    pipe = Gst.parse_launch(
        f"audiotestsrc is-live=true wave=sine freq=1000 volume=0.3 samplesperbuffer={samples} "
        f"num-buffers={buffers} ! audio/x-raw,rate=48000,channels=1 ! "
        f"opusenc bitrate={a.bitrate} frame-size={a.frame_ms} complexity={a.complexity} "
        f"inband-fec={'true' if a.fec else 'false'} packet-loss-percentage={10 if a.fec else 0} "
        f"! rtpopuspay pt=111 ! "
        f"multiudpsink name=out")
    sink = pipe.get_by_name("out")
    t0 = time.perf_counter()
    sink.set_property("clients", ",".join(f"{host(i)}:{a.port}" for i in range(a.receivers)))
    provision = time.perf_counter() - t0
    pipe.set_state(Gst.State.PAUSED)
    pipe.get_state(5 * Gst.SECOND)
    print("ready", flush=True)
    if sys.stdin.readline().strip() != "go":
        pipe.set_state(Gst.State.NULL)
        return 1
    start = time.monotonic()
    pipe.set_state(Gst.State.PLAYING)
    bus = pipe.get_bus()
    msg = bus.timed_pop_filtered(int((a.seconds + 20) * Gst.SECOND),
                                 Gst.MessageType.EOS | Gst.MessageType.ERROR)
    elapsed = time.monotonic() - start
    ok = msg is not None and msg.type == Gst.MessageType.EOS
    err = None
    if msg is not None and msg.type == Gst.MessageType.ERROR:
        err = str(msg.parse_error()[0])
    out = {"ticks": buffers, "eos": ok, "error": err, "elapsed_s": round(elapsed, 3),
           "provision_s": round(provision, 4), "gstreamer": Gst.version_string()}
    print(json.dumps(out), flush=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        line = sys.stdin.readline()
        if not line or line.strip() == "quit":
            break
    pipe.set_state(Gst.State.NULL)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
