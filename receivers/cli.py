"""`loa receiver`: listen for a zone's Opus/RTP stream and play it.

    loa receiver (--listen HOST:PORT | --multicast GROUP:PORT [--interface IP])
                 [--out FILE.wav|null|default] [--duration SECONDS] [--stats-interval SECONDS]
                 [--jitter-ms 60] [--payload-type PT] [--stats-json FILE]

    loa receiver --server HOST:PORT [--server HOST2:PORT2 ...] --id ID --secret SECRET
                 [--listen HOST:PORT] [...]          (or --config FILE.toml)

With --server (a registered receiver in the field): registers with the first server, sends
signed heartbeats from its media socket (so NAT needs no port forwarding), plays the SRTP media
that server sends, reports link quality, and fails over to the next server in order when one
stops answering. The config file holds the same settings:

    id = "cum-loa-01"
    secret = "..."                       # or secret_file = "/etc/loa/secret"
    servers = ["loa1.example.vn:5004", "loa2.example.vn:5004"]
    listen = "0.0.0.0:0"                 # optional; default: the address routing to the servers

Statistics go to stdout as `key=value` lines (`stats ...` periodically, `final ...` on exit);
notices and errors go to stderr.

The playout timer runs at raised priority where permitted (SCHED_FIFO as root or with
CAP_SYS_NICE, else nice -10, else normal, silently; --normal-priority keeps it normal): a timer
that fires late on a busy machine adds its lateness to what the loudspeaker hears.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys

from receivers.output import open_sink
from receivers.priority import raise_playout_priority
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
    ap = argparse.ArgumentParser(
        prog="loa receiver", description="Receive a Loa zone's Opus/RTP stream and play it.",
        epilog="The playout timer runs at raised priority where permitted: SCHED_FIFO (root or "
               "CAP_SYS_NICE), else nice -10, else normal priority, without a warning; the "
               "priority it got is printed at start. --normal-priority keeps it normal.")
    src = ap.add_mutually_exclusive_group()
    src.add_argument("--listen", type=host_port, metavar="HOST:PORT",
                     help="unicast: bind this UDP address. With --server and no --listen: the "
                          "interface that routes to the server(s) (0.0.0.0:0 tied to that "
                          "interface, so an address change on it is followed; every interface, "
                          "0.0.0.0:0, when they route through different ones)")
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
    ap.add_argument("--normal-priority", action="store_true",
                    help="do not raise the playout timer's priority (SCHED_FIFO / nice -10)")
    fld = ap.add_argument_group("registered receiver (field)")
    fld.add_argument("--server", type=host_port, action="append", metavar="HOST:PORT",
                     help="a Loa server's receiver port; repeat for failover, in order")
    fld.add_argument("--id", help="this receiver's id (as provisioned on the server)")
    fld.add_argument("--secret", help="this receiver's secret (prefer --config: argv is public)")
    fld.add_argument("--config", metavar="FILE.toml", help="id, secret/secret_file, servers")
    fld.add_argument("--register-retry", type=_positive, default=2.0, metavar="SECONDS",
                     help=argparse.SUPPRESS)
    return ap


def _field_settings(args, ap) -> tuple[str, bytes, list[tuple[str, int]]] | None:
    conf: dict = {}
    if args.config:
        import tomllib
        try:
            with open(args.config, "rb") as f:
                conf = tomllib.load(f)
        except (OSError, tomllib.TOMLDecodeError) as exc:
            ap.error(f"cannot read --config: {exc}")
    servers = list(args.server or [])
    if not servers and conf.get("servers"):
        try:
            servers = [host_port(str(x)) for x in conf["servers"]]
        except argparse.ArgumentTypeError as exc:
            ap.error(f"config servers: {exc}")
    if not servers:
        if args.id or args.secret or args.config:
            ap.error("a registered receiver needs at least one --server (or servers in --config)")
        return None
    rid = args.id or conf.get("id")
    secret = args.secret or conf.get("secret")
    if secret is None and conf.get("secret_file"):
        try:
            secret = open(conf["secret_file"]).read().strip()
        except OSError as exc:
            ap.error(f"cannot read secret_file: {exc}")
    if not rid or not secret:
        ap.error("--server needs --id and --secret (or id and secret in --config)")
    if args.listen is None and conf.get("listen"):
        args.listen = host_port(str(conf["listen"]))
    return str(rid), decode_secret(str(secret)), servers


def decode_secret(text: str) -> bytes:
    """The secret as `loa receivers provision` prints it: URL-safe base64 of 32 random bytes
    (padding optional). Anything else is taken as the UTF-8 bytes of the text, for
    hand-written test secrets."""
    import base64
    import binascii
    t = text.strip()
    if len(t) in (43, 44):
        try:
            raw = base64.urlsafe_b64decode(t + "=" * (-len(t) % 4))
        except (binascii.Error, ValueError):
            raw = b""
        if len(raw) == 32:
            return raw
    return t.encode()


def route_address(servers: list[tuple[str, int]]) -> str:
    """The local address that routes to every server (a connected UDP socket's own address; no
    packet is sent), or 0.0.0.0 when they route through different interfaces or one cannot be
    resolved or reached."""
    import socket
    found = set()
    for host, port in servers:
        try:
            ip = socket.getaddrinfo(host, port, socket.AF_INET, socket.SOCK_DGRAM)[0][4][0]
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                s.connect((ip, port))
                found.add(s.getsockname()[0])
        except OSError:
            return "0.0.0.0"
    return found.pop() if len(found) == 1 else "0.0.0.0"


def interface_of(address: str) -> str | None:
    """The name of the network interface that has this IPv4 address (SIOCGIFADDR per
    interface), or None."""
    import fcntl
    import socket
    import struct
    if address in ("0.0.0.0", ""):
        return None
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        for _, name in socket.if_nameindex():
            try:
                raw = fcntl.ioctl(s.fileno(), 0x8915,  # SIOCGIFADDR
                                  struct.pack("256s", name.encode()[:15]))
            except OSError:
                continue                      # no IPv4 address on it
            if socket.inet_ntoa(raw[20:24]) == address:
                return name
    return None


def route_binding(servers: list[tuple[str, int]]) -> tuple[str, str | None]:
    """Where a receiver with --server and no --listen binds: (address, interface).

    The interface that routes to the servers, with address 0.0.0.0 and SO_BINDTODEVICE, so the
    socket follows that interface's address when it changes (a cellular reconnect hands out a
    new private address: a socket bound to the old address could send nothing any more). Where
    tying a socket to a device is not permitted, the routing address itself; 0.0.0.0 on every
    interface when the servers route through different interfaces."""
    import socket
    addr = route_address(servers)
    dev = interface_of(addr)
    if dev is None:
        return addr, None
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, dev.encode() + b"\0")
    except OSError:
        return addr, None                     # not permitted here: the address, as before
    return "0.0.0.0", dev


def _line(tag: str, snap: dict, keys: tuple[str, ...]) -> str:
    return tag + " " + " ".join(f"{k}={snap[k]}" for k in keys)


def main(argv: list[str]) -> int:
    ap = build_parser()
    args = ap.parse_args(argv)
    field = _field_settings(args, ap)
    device: str | None = None
    if field is not None:
        if args.multicast:
            ap.error("--server receives unicast; it does not go with --multicast")
        if args.listen is None:
            host, device = route_binding(field[2])
            args.listen = (host, 0)
    elif not (args.listen or args.multicast):
        ap.error("one of --listen, --multicast or --server is required")
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
            sock = udp_socket(host, port, device)
            bound = sock.getsockname()
            where = f"udp {host}:{bound[1]}" + (f" on {device}" if device else "")
    except (OSError, ValueError) as exc:
        print(f"loa receiver: cannot listen: {exc}", file=sys.stderr)
        return 1
    try:
        sink = open_sink(args.out)
    except (OSError, ValueError) as exc:
        sock.close()
        print(f"loa receiver: cannot open output: {exc}", file=sys.stderr)
        return 1

    rx = Receiver(sink, jitter_ms=args.jitter_ms, payload_type=args.payload_type,
                  adaptive=field is not None)
    # the event loop (and so the playout timer) runs on this thread
    prio = "normal" if args.normal_priority else raise_playout_priority()
    if field is not None:
        return _main_field(rx, sock, sink, field, args, where, prio)
    print(f"loa receiver: listening on {where}, output {sink.description}, "
          f"jitter target {args.jitter_ms:g} ms, playout priority {prio}", flush=True)
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


def _main_field(rx: Receiver, sock, sink, field, args, where: str,
                prio: str = "normal") -> int:
    from receivers.field import FieldReceiver, FieldSession, resolve_servers
    rid, secret, servers = field
    try:
        servers = resolve_servers(servers)
    except OSError as exc:
        print(f"loa receiver: cannot resolve a server: {exc}", file=sys.stderr)
        rx.close()
        sock.close()
        return 1
    session = FieldSession(rid, secret, servers, register_retry_s=args.register_retry)
    fr = FieldReceiver(session, rx)
    print(f"loa receiver: {rid} on {where}, servers "
          f"{', '.join(f'{h}:{p}' for h, p in servers)}, output {sink.description}, "
          f"playout priority {prio}", flush=True)
    keys = _LIVE_KEYS + ("registered", "server", "srtp", "auth_failed", "foreign_source")

    async def go() -> dict:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)

        async def stats() -> None:
            seen = 0
            while args.stats_interval:
                await asyncio.sleep(args.stats_interval)
                for ev in session.events[seen:]:
                    print(f"event {ev[1]} server={ev[2][0]}:{ev[2][1]}", flush=True)
                seen = len(session.events)
                print(_line("stats", fr.snapshot(), keys), flush=True)
        t = asyncio.ensure_future(stats())
        try:
            return await fr.run(sock, duration=args.duration, stop=stop)
        finally:
            t.cancel()
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)

    try:
        try:
            import uvloop
            snap = uvloop.run(go())
        except ImportError:
            snap = asyncio.run(go())
    finally:
        rx.close()
        sock.close()
    print(_line("final", snap, _FINAL_KEYS + keys[len(_LIVE_KEYS):]), flush=True)
    if args.stats_json:
        try:
            with open(args.stats_json, "w") as f:
                json.dump(snap, f, indent=2, sort_keys=True)
        except OSError as exc:
            print(f"loa receiver: cannot write {args.stats_json}: {exc}", file=sys.stderr)
            return 1
    return 0


def _run(rx: Receiver, sock, args) -> dict:
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
