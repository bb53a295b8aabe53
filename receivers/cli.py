"""`loa receiver`: listen for a zone's Opus/RTP stream and play it.

    loa receiver (--listen HOST:PORT | --multicast GROUP:PORT [--interface IP])
                 [--out FILE.wav|null|default] [--duration SECONDS] [--stats-interval SECONDS]
                 [--jitter-ms 60] [--payload-type PT] [--stats-json FILE]

Statistics go to stdout as `key=value` lines (`stats ...` periodically, `final ...` on exit);
notices and errors go to stderr.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys

from receivers.output import open_sink
from receivers.receiver import Receiver, multicast_socket, udp_socket

_LIVE_KEYS = ("received", "lost", "late", "duplicate", "concealed_fec", "concealed_plc",
              "jitter_ms", "depth", "buffered_ms", "invalid", "bad_payload")
_FINAL_KEYS = ("received", "lost", "late", "duplicate", "concealed", "concealed_fec",
               "concealed_plc", "played", "spurts", "resets", "invalid", "wrong_payload_type",
               "bad_payload", "decode_errors", "foreign", "jitter_ms", "audio_seconds")


def host_port(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not host:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    try:
        p = int(port)
    except ValueError:
        raise argparse.ArgumentTypeError(f"bad port in {text!r}") from None
    if not 0 <= p < 65536:
        raise argparse.ArgumentTypeError(f"port out of range in {text!r}")
    return host, p


def _positive(text: str) -> float:
    v = float(text)
    if v < 0:
        raise argparse.ArgumentTypeError("must be >= 0")
    return v


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="loa receiver",
                                 description="Receive a Loa zone's Opus/RTP stream and play it.")
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--listen", type=host_port, metavar="HOST:PORT",
                     help="unicast: bind this UDP address")
    src.add_argument("--multicast", type=host_port, metavar="GROUP:PORT",
                     help="join this IPv4 multicast group")
    ap.add_argument("--interface", metavar="IP",
                    help="with --multicast: join on the interface that has this address")
    ap.add_argument("--out", default="default", metavar="FILE.wav|null|default",
                    help="a WAV file (48 kHz mono 16-bit), null, or the sound card (default; "
                         "null when there is none)")
    ap.add_argument("--duration", type=_positive, default=None, metavar="SECONDS",
                    help="stop after this long (default: until SIGINT/SIGTERM)")
    ap.add_argument("--stats-interval", type=_positive, default=0.0, metavar="SECONDS",
                    help="print live statistics this often (0: only at exit)")
    ap.add_argument("--jitter-ms", type=_positive, default=60.0,
                    help="jitter buffer target delay in ms (default 60)")
    ap.add_argument("--payload-type", type=int, default=None, metavar="PT",
                    help="accept only this RTP payload type (default: any)")
    ap.add_argument("--stats-json", metavar="FILE", help="write the final counters as JSON")
    return ap


def _line(tag: str, snap: dict, keys: tuple[str, ...]) -> str:
    return tag + " " + " ".join(f"{k}={snap[k]}" for k in keys)


def main(argv: list[str]) -> int:
    ap = build_parser()
    args = ap.parse_args(argv)
    if args.interface and not args.multicast:
        ap.error("--interface goes with --multicast")
    if args.payload_type is not None and not 0 <= args.payload_type <= 127:
        ap.error("--payload-type must be 0..127")
    try:
        if args.multicast:
            host, port = args.multicast
            sock = multicast_socket(host, port, args.interface)
            where = f"multicast {host}:{port} on {args.interface or 'any interface'}"
        else:
            host, port = args.listen
            sock = udp_socket(host, port)
            bound = sock.getsockname()
            where = f"udp {host}:{bound[1]}"
    except (OSError, ValueError) as exc:
        print(f"loa receiver: cannot listen: {exc}", file=sys.stderr)
        return 1
    try:
        sink = open_sink(args.out)
    except (OSError, ValueError) as exc:
        sock.close()
        print(f"loa receiver: cannot open output: {exc}", file=sys.stderr)
        return 1

    rx = Receiver(sink, jitter_ms=args.jitter_ms, payload_type=args.payload_type)
    print(f"loa receiver: listening on {where}, output {sink.description}, "
          f"jitter target {args.jitter_ms:g} ms", flush=True)
    try:
        snap = _run(rx, sock, args)
    finally:
        rx.close()
        sock.close()
    print(_line("final", snap, _FINAL_KEYS), flush=True)
    if args.stats_json:
        try:
            with open(args.stats_json, "w") as f:
                json.dump(dict(snap, spurts=rx.spurts), f, indent=2, sort_keys=True)
        except OSError as exc:
            print(f"loa receiver: cannot write {args.stats_json}: {exc}", file=sys.stderr)
            return 1
    return 0


def _run(rx: Receiver, sock, args) -> dict:  # noqa: ANN001
    async def go() -> dict:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        try:
            return await rx.run(sock, duration=args.duration, stop=stop,
                                stats_interval=args.stats_interval,
                                on_stats=lambda s: print(_line("stats", s, _LIVE_KEYS),
                                                         flush=True))
        finally:
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)

    try:
        import uvloop
    except ImportError:
        return asyncio.run(go())
    return uvloop.run(go())
