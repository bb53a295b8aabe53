"""`loa serve`, `loa play`, `loa demo`, `loa admin create-user`, `loa zones import`,
`loa receivers provision` (one, or many from a CSV/JSON file).

`loa play` and `loa demo` start broadcasts through the HTTP API (so through the one broadcast
use case, with the caller's credentials); the state commands open the database and go through
the service layer (control/service.py) like the API, and print its domain errors.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from control import textsafe
from control.settings import ConfigError, Settings, load_settings

log = logging.getLogger("loa")


def _settings_from_args(args: argparse.Namespace) -> Settings:
    return load_settings(args.config, http=args.http,
                         data_dir=Path(args.data_dir) if args.data_dir else None,
                         role=getattr(args, "role", None))


def _split_hostport(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host or "127.0.0.1", int(port)


async def serve_async(settings: Settings, ready: asyncio.Event | None = None,
                      stop: asyncio.Event | None = None) -> None:
    if settings.redis_url or settings.role != "all":   # several nodes (issue 19)
        from control import cluster
        cluster.check(settings)
        if settings.role == "edge":   # no database, no data directory, no control API
            await cluster.serve_edge(settings, ready, stop)
            return
    from control.datadir import DataDirLock
    # one server per data directory, decided before anything else touches it (issue 13)
    if settings.redis_url and settings.role == "origin":
        from control.datadir import DataDirBusy
        try:
            lock = DataDirLock(settings.data_dir).acquire()
        except DataDirBusy as e:   # the standby: on air from Redis before the lock is free
            from control.standby import serve_standby
            await serve_standby(settings, e, ready, stop)
            return
    else:
        lock = DataDirLock(settings.data_dir).acquire()
    try:
        await _serve_locked(settings, ready, stop)
    finally:
        lock.release()


async def _serve_locked(settings: Settings, ready: asyncio.Event | None,
                        stop: asyncio.Event | None, app: Any = None) -> None:
    from aiohttp import web

    from control.app import create_app
    app = app if app is not None else create_app(settings)
    # TTS synthesis worker processes, spawned with the server (in-process test apps render in
    # threads and spawn nothing); the server's close stops them
    app["loa"].engine.catalogue.tts.start_processes()
    from control.conn_guard import guarded_runner
    # header/body timeouts, connection caps, the open-files limit raised (issue 13)
    runner = guarded_runner(app, settings, access_log=None, handle_signals=False,
                            shutdown_timeout=5.0)
    try:
        await runner.setup()
    except BaseException:  # a start that failed half-way stops what it started (no hang)
        try:
            await runner.cleanup()
        except Exception:
            log.exception("cleanup after a failed start")
        raise
    host, port = _split_hostport(settings.http)
    ssl_ctx = None
    scheme = "http"
    if settings.tls_cert or settings.tls_key:
        import ssl
        if not (settings.tls_cert and settings.tls_key):
            raise ConfigError("tls_cert and tls_key go together")
        ssl_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        try:
            ssl_ctx.load_cert_chain(str(settings.tls_cert), str(settings.tls_key))
        except (OSError, ssl.SSLError) as e:
            raise ConfigError(f"cannot load the TLS certificate/key: {e}") from None
        scheme = "https"
    # the TTS workers warm (spawned above, in parallel with the start-up) before the server
    # answers: the first text after start is read as fast as any later one (issue 14); a worker
    # that is not up in time leaves its sentences to in-process synthesis meanwhile
    tts = app["loa"].engine.catalogue.tts
    if not await asyncio.get_running_loop().run_in_executor(None, tts.wait_ready, 10.0):
        log.warning("TTS worker processes not ready after 10 s: synthesising in-process "
                    "until they are")
    # a deep accept queue: during a connection flood a new client's SYN is not dropped (and
    # retried a second later) before the server has accepted and sorted the flood
    site = web.TCPSite(runner, host, port, reuse_address=True, ssl_context=ssl_ctx,
                       backlog=1024)
    await site.start()
    server = app["loa"]
    rport = server.engine.stats().receiver_port
    log.info("Loa serving on %s://%s:%d (data in %s)", scheme, host, port, settings.data_dir)
    print(f"loa: serving {scheme}://{host}:{port}/api/v1  pages: /live /dashboard  "
          f"receivers: udp {rport}  zones: " + ", ".join(server.tree().zones), flush=True)
    if ready is not None:
        ready.set()
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(sig, stop.set)
        except (NotImplementedError, RuntimeError):
            pass
    try:
        await stop.wait()
    finally:
        print("loa: shutting down", flush=True)
        await runner.cleanup()


def _run(coro) -> None:
    try:
        import uvloop
        uvloop.run(coro)
    except ImportError:  # pragma: no cover
        asyncio.run(coro)


def cmd_serve(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="loa serve", description="Run the Loa engine and HTTP API.")
    p.add_argument("--config", help="TOML settings file (zones, groups, audio settings)")
    p.add_argument("--http", help="HOST:PORT for the HTTP API (default 127.0.0.1:8080)")
    p.add_argument("--data-dir", help="where state and media live (default ./data)")
    p.add_argument("--role", choices=["origin", "edge", "all"],
                   help="several nodes through Redis (LOA_REDIS_URL): origin (control, "
                        "encoders), edge (receivers) or all (default; one node without Redis)")
    args = p.parse_args(argv)
    try:
        settings = _settings_from_args(args)
    except ConfigError as e:
        print(f"loa serve: {e}", file=sys.stderr)
        return 2
    logging.basicConfig(level=settings.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    textsafe.install_log_escaping()  # user text in a log line cannot forge another line
    # engine_cpus: this thread, and so every thread and process started from it, off the
    # real-time path's CPUs, decided before any is started (streamer.cpus)
    from streamer import cpus
    cpus.reserve(settings.engine_cpus)
    from control.datadir import DataDirBusy
    from control.errors import DomainError
    from control.journal import storage_fault
    try:
        _run(serve_async(settings))
    except DataDirBusy as e:
        print(f"loa serve: {e}", file=sys.stderr)
        return 1
    except DomainError as e:  # the TOML zones do not fit with the stored tree
        print(f"loa serve: invalid zone configuration: {e.message}", file=sys.stderr)
        return 2
    except (ConfigError, ValueError) as e:  # e.g. TLS files, an rtp_ingest entry
        print(f"loa serve: invalid settings: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        print(f"loa serve: cannot start: {e}", file=sys.stderr)
        return 1
    except Exception as e:  # the database unavailable at start (a full disk, a lock)
        why = storage_fault(e)
        if why is None:
            raise
        print(f"loa serve: cannot start: {why}; free space or release the database, then start "
              "again", file=sys.stderr)
        return 1
    return 0


def _api(server: str, method: str, path: str, body: dict | None = None,
         timeout: float = 30.0) -> tuple[int, dict]:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(server.rstrip("/") + path, data=data, method=method,
                                 headers={"Content-Type": "application/json"})
    token = os.environ.get("LOA_TOKEN")
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, json.loads(r.read() or b"{}")
    except urllib.error.HTTPError as e:
        try:
            return e.code, json.loads(e.read() or b"{}")
        except json.JSONDecodeError:
            return e.code, {"error": {"code": "http", "message": str(e)}}


def cmd_play(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="loa play", description="Play a file on zones.")
    p.add_argument("file")
    p.add_argument("--zone", action="append", required=True, help="zone or group id (repeatable)")
    p.add_argument("--server", default=os.environ.get("LOA_SERVER", "http://127.0.0.1:8080"))
    p.add_argument("--level", default="normal",
                   choices=["background", "normal", "priority", "emergency"])
    p.add_argument("--mode", default="preempt", choices=["preempt", "duck", "mix"])
    p.add_argument("--repeat", type=int, default=1)
    p.add_argument("--wait", action="store_true", help="wait until the broadcast ends")
    args = p.parse_args(argv)
    body = {"zones": args.zone, "level": args.level, "mode": args.mode, "repeat": args.repeat,
            "source": {"kind": "file", "path": os.path.abspath(args.file)}}
    return _start_broadcast("loa play", args.server, body, args.wait, fail_on_error=False)


def cmd_say(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="loa say",
                                description="Read a text aloud on zones (text to speech).")
    p.add_argument("text", help='the text ("-": read it from stdin)')
    p.add_argument("--zone", action="append", required=True, help="zone or group id (repeatable)")
    p.add_argument("--server", default=os.environ.get("LOA_SERVER", "http://127.0.0.1:8080"))
    p.add_argument("--voice", default=None, help="e.g. vi, vi-vn-x-central, vi-vn-x-south")
    p.add_argument("--engine", default=None, help="a configured TTS engine (default: espeak)")
    p.add_argument("--rate", type=float, default=1.0)
    p.add_argument("--level", default="normal",
                   choices=["background", "normal", "priority", "emergency"])
    p.add_argument("--mode", default="preempt", choices=["preempt", "duck", "mix"])
    p.add_argument("--wait", action="store_true", help="wait until the broadcast ends")
    args = p.parse_args(argv)
    text = sys.stdin.read() if args.text == "-" else args.text
    source = {"kind": "tts", "text": text, "rate": args.rate}
    if args.voice:
        source["voice"] = args.voice
    if args.engine:
        source["engine"] = args.engine
    body = {"zones": args.zone, "level": args.level, "mode": args.mode, "source": source}
    return _start_broadcast("loa say", args.server, body, args.wait, fail_on_error=True)


def _start_broadcast(prog: str, server: str, body: dict, wait: bool, *,
                     fail_on_error: bool) -> int:
    """POST a broadcast, print what the server answered, and with `wait` follow it to its end
    (`fail_on_error`: a broadcast that ended with an error exits 1)."""
    try:
        status, resp = _api(server, "POST", "/api/v1/broadcasts", body)
    except (urllib.error.URLError, OSError) as e:
        print(f"{prog}: cannot reach {server}: {e}", file=sys.stderr)
        return 1
    if status >= 400:
        err = resp.get("error", {})
        print(f"{prog}: refused ({status} {err.get('code')}): {err.get('message')}",
              file=sys.stderr)
        return 1
    print(f"broadcast {resp['id']} {resp['state']} on {', '.join(resp['reached_zones'])}")
    if wait:
        while True:
            time.sleep(0.5)
            _, b = _api(server, "GET", f"/api/v1/broadcasts/{resp['id']}")
            if b.get("state") in ("finished", "stopped", "interrupted"):
                print(f"broadcast {resp['id']} {b['state']}"
                      + (f" ({b['error']})" if b.get("error") else ""))
                return 1 if fail_on_error and b.get("error") else 0
    return 0


def make_demo_programme(path: Path) -> Path:
    """A short Vietnamese announcement (espeak-ng) between chimes, or a melody without it."""
    import numpy as np

    from streamer.audio import SAMPLE_RATE
    path.parent.mkdir(parents=True, exist_ok=True)
    speech = None
    if shutil.which("espeak-ng"):
        text = ("Xin chào bà con. Đây là hệ thống truyền thanh Loa. "
                "Chương trình phát thử nghiệm đang hoạt động bình thường.")
        tmp = path.with_suffix(".speech.wav")
        r = subprocess.run(["espeak-ng", "-v", "vi", "-s", "150", "-w", str(tmp), text],
                           capture_output=True, timeout=30)
        if r.returncode == 0 and tmp.exists():
            speech = tmp
    import av
    notes = [(784.0, 0.35), (659.3, 0.35), (523.3, 0.6)]
    t_parts = []
    for f, d in notes:
        t = np.arange(int(SAMPLE_RATE * d)) / SAMPLE_RATE
        env = np.exp(-t * 4.0) * np.minimum(1.0, t / 0.01)
        t_parts.append(0.4 * env * np.sin(2 * np.pi * f * t))
    chime = np.concatenate(t_parts).astype(np.float32)
    pieces = [chime, np.zeros(SAMPLE_RATE // 2, np.float32)]
    if speech is not None:
        with av.open(str(speech)) as c:
            res = av.AudioResampler(format="flt", layout="mono", rate=SAMPLE_RATE)
            for fr in c.decode(audio=0):
                for o in res.resample(fr):
                    pieces.append(o.to_ndarray().reshape(-1).astype(np.float32))
        speech.unlink(missing_ok=True)
    else:
        t = np.arange(SAMPLE_RATE * 4) / SAMPLE_RATE
        swell = 0.5 + 0.5 * np.sin(2 * np.pi * 0.5 * t)
        pieces.append((0.3 * np.sin(2 * np.pi * 440 * t) * swell).astype(np.float32))
    pieces += [np.zeros(SAMPLE_RATE // 2, np.float32), chime[::-1].copy()]
    audio = np.concatenate(pieces)
    pcm = (np.clip(audio, -1, 1) * 32767).astype("<i2").tobytes()
    import wave
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(SAMPLE_RATE)
        w.writeframes(pcm)
    return path


def cmd_demo(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="loa demo",
                                description="Serve on embedded defaults with a demo zone, a local "
                                            "reference receiver and a demo programme on repeat.")
    p.add_argument("--config")
    p.add_argument("--http")
    p.add_argument("--data-dir")
    p.add_argument("--every", type=float, default=30.0, help="seconds between programme starts")
    p.add_argument("--duration", type=float, default=0.0, help="stop after N seconds (0: run)")
    args = p.parse_args(argv)
    try:
        settings = _settings_from_args(args)
    except ConfigError as e:
        print(f"loa demo: {e}", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    zones = settings.effective_zones()
    zone = zones[0]
    if not zone.unicast:
        print("loa demo: the first zone needs a unicast destination for the local receiver",
              file=sys.stderr)
        return 2
    listen = zone.unicast[0]
    data = settings.data_dir
    data.mkdir(parents=True, exist_ok=True)
    programme = make_demo_programme(data / "demo-programme.wav")
    have_card = os.path.exists("/dev/snd") and any(Path("/dev/snd").glob("pcm*p"))
    out = "default" if have_card else str(data / "demo-receiver.wav")
    rx_cmd = [sys.executable, "-m", "loa.cli", "receiver", "--listen", listen, "--out", out,
              "--stats-interval", "2"]
    print(f"loa demo: zone {zone.id!r} → reference receiver on {listen} → "
          + ("sound card" if have_card else f"{out} (no sound card here; play that file later)"),
          flush=True)
    rx = subprocess.Popen(rx_cmd)

    async def main() -> None:
        ready, stop = asyncio.Event(), asyncio.Event()
        server = asyncio.create_task(serve_async(settings, ready, stop))
        await asyncio.wait_for(ready.wait(), 20)
        host, port = _split_hostport(settings.http)
        base = f"http://{host}:{port}"
        loop = asyncio.get_running_loop()
        t_end = time.monotonic() + args.duration if args.duration > 0 else None
        body = {"zones": [zone.id], "level": "normal",
                "source": {"kind": "file", "path": str(programme.resolve())}}
        try:
            while not stop.is_set():
                status, resp = await loop.run_in_executor(None, _api, base, "POST",
                                                          "/api/v1/broadcasts", body)
                if status < 400:
                    print(f"loa demo: playing {programme.name} as broadcast {resp['id']}", flush=True)
                else:
                    print(f"loa demo: could not start the programme: {resp}", flush=True)
                wait = args.every
                if t_end is not None:
                    wait = min(wait, max(0.0, t_end - time.monotonic()))
                try:
                    await asyncio.wait_for(stop.wait(), wait)
                except TimeoutError:
                    pass
                if t_end is not None and time.monotonic() >= t_end:
                    stop.set()
        finally:
            stop.set()
            await server

    try:
        _run(main())
    except KeyboardInterrupt:
        pass
    finally:
        if rx.poll() is None:
            rx.send_signal(signal.SIGINT)
            try:
                rx.wait(5)
            except subprocess.TimeoutExpired:
                rx.kill()
    return 0


# ----------------------------------------------------------------------------- state commands
# These open the same SQLite file as `loa serve` and go through the same service layer
# (control/service.py) as the API. A running server picks the change up within ~2 s
# (it watches the file's data_version).

def _state_parser(prog: str, desc: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description=desc)
    p.add_argument("--config", help="TOML settings file (to find data_dir / db_path)")
    p.add_argument("--data-dir", help="where state lives (default ./data)")
    return p


async def _with_state(args: argparse.Namespace, fn, apply_config: bool = False):
    from control.auth import SecretBox
    from control.db import Database
    from control.service import ControlState
    settings = load_settings(args.config, data_dir=Path(args.data_dir) if args.data_dir else None)
    db = await Database(settings.database_path).open()
    try:
        box = SecretBox.load(settings.secret_key.get_secret_value() if settings.secret_key else None,
                             settings.data_dir / "secret.key")
        state = ControlState(db, settings, box)
        if apply_config:
            # the settings file's zones/groups/receivers first, as `loa serve` does at start, so
            # offline provisioning works on a data directory no server has opened yet
            await state.apply_config()
        return await fn(state)
    finally:
        await db.close()


def _run_state(args, fn, prog: str, apply_config: bool = False) -> int:
    from control.errors import DomainError
    try:
        out = asyncio.run(_with_state(args, fn, apply_config))
    except DomainError as e:
        print(f"{prog}: {e.message} ({e.code})", file=sys.stderr)
        return 1
    except ConfigError as e:
        print(f"{prog}: {e}", file=sys.stderr)
        return 2
    print(json.dumps(out, ensure_ascii=False, indent=2))
    return 0


def cmd_admin(argv: list[str]) -> int:
    if not argv or argv[0] != "create-user":
        print("usage: loa admin create-user USERNAME [--role admin] [--scope ZONE ...] "
              "[--password-stdin] [--token NAME]", file=sys.stderr)
        return 2
    from control.policy import ROLES
    p = _state_parser("loa admin create-user", "Create an account (the way in when no admin "
                                                 "token is configured).")
    p.add_argument("username")
    p.add_argument("--role", default="admin", choices=ROLES)
    p.add_argument("--name", default="", help='the name others see, e.g. "Ông Nguyễn Văn An"')
    p.add_argument("--scope", action="append", default=[], help="zone id (repeatable)")
    p.add_argument("--password-stdin", action="store_true", help="read the password from stdin")
    p.add_argument("--token", metavar="NAME", help="also create an API token and print it once")
    args = p.parse_args(argv[1:])
    password = None
    if args.password_stdin:
        password = sys.stdin.readline().rstrip("\n")
    elif sys.stdin.isatty():
        import getpass
        password = getpass.getpass("password (empty: token-only account): ") or None
    if password is not None and len(password) < 8:
        print("loa admin create-user: the password must have at least 8 characters", file=sys.stderr)
        return 2
    from control.models import UserCreate
    from pydantic import ValidationError
    try:
        UserCreate(username=args.username, role=args.role, scope=args.scope, password=password,
                   display_name=args.name)
    except ValidationError as e:
        print(f"loa admin create-user: {e.errors()[0]['loc'][0]}: {e.errors()[0]['msg']}",
              file=sys.stderr)
        return 2

    async def go(state):
        u = await state.create_user(args.username, args.role, args.scope, password, args.name)
        if args.token:
            u["token"] = await state.create_token(u["id"], args.token)
        return u
    return _run_state(args, go, "loa admin create-user")


def cmd_zones(argv: list[str]) -> int:
    if not argv or argv[0] != "import":
        print("usage: loa zones import FILE.csv   (columns: code,name,parent_code,level)\n"
              "       loa zones import --province NAME   (communes after the 2025 merger)",
              file=sys.stderr)
        return 2
    p = _state_parser("loa zones import", "Import the administrative tree from a CSV file, or a "
                      "province and its communes with their official codes (vietnam-provinces).")
    p.add_argument("file", nargs="?")
    p.add_argument("--province", help="name or code, e.g. 'Gia Lai', gia_lai, 52")
    args = p.parse_args(argv[1:])
    if args.province:
        from control.alerts.provinces import UnknownProvince, province_csv
        try:
            rows_csv = province_csv(args.province)
        except UnknownProvince as e:
            print(f"loa zones import: {e}", file=sys.stderr)
            return 2
        return _run_state(args, lambda state: state.import_csv(rows_csv), "loa zones import")
    if not args.file:
        p.error("a CSV file or --province NAME")
    try:
        text = Path(args.file).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        print(f"loa zones import: cannot read {args.file}: {e}", file=sys.stderr)
        return 2
    return _run_state(args, lambda state: state.import_csv(text), "loa zones import")


RECEIVER_FIELDS = ("id", "zone", "name", "address", "lat", "lon", "link", "notes")


def read_receiver_file(path: str) -> list[dict]:
    """Receivers to provision from FILE.json (a list of objects, or {"receivers": [...]}) or
    FILE.csv (a header row naming some of: id,zone,name,address,lat,lon,link,notes; zone is
    required). Raises ValueError naming the problem."""
    text = Path(path).read_text(encoding="utf-8-sig")
    if path.lower().endswith(".json") or text.lstrip()[:1] in ("[", "{"):
        data = json.loads(text)
        rows = data.get("receivers") if isinstance(data, dict) else data
        if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
            raise ValueError('the JSON must be a list of objects or {"receivers": [...]}')
        return rows
    import csv
    import io
    reader = csv.DictReader(io.StringIO(text))
    header = [h.strip().lower() for h in reader.fieldnames or []]
    unknown = [h for h in header if h not in RECEIVER_FIELDS]
    if "zone" not in header or unknown:
        raise ValueError(f"the CSV header must name zone and only {','.join(RECEIVER_FIELDS)}"
                         + (f" (unknown: {','.join(unknown)})" if unknown else ""))
    reader.fieldnames = header
    rows = []
    for rec in reader:
        row = {k: v.strip() for k, v in rec.items() if k and v is not None and v.strip()}
        for k in ("lat", "lon"):
            if k in row:
                try:
                    row[k] = float(row[k])
                except ValueError:
                    raise ValueError(f"line {reader.line_num}: {k} is not a number") from None
        if row:
            rows.append(row)
    return rows


def cmd_receivers(argv: list[str]) -> int:
    if not argv or argv[0] != "provision":
        print("usage: loa receivers provision --zone ZONE [--id ID] [--address HOST:PORT] ...\n"
              "       loa receivers provision --file RECEIVERS.csv|.json",
              file=sys.stderr)
        return 2
    p = _state_parser("loa receivers provision",
                      "Provision a receiver, or many from a file (all or nothing); prints the "
                      "secrets once.")
    p.add_argument("--file", help="CSV (header: zone plus any of id,name,address,lat,lon,link,"
                                  "notes) or JSON list of receivers, provisioned all or nothing")
    p.add_argument("--zone")
    p.add_argument("--id")
    p.add_argument("--name", default="")
    p.add_argument("--address")
    p.add_argument("--lat", type=float)
    p.add_argument("--lon", type=float)
    p.add_argument("--link", default="ethernet", choices=["sim", "ethernet", "wifi"])
    p.add_argument("--notes", default="")
    args = p.parse_args(argv[1:])
    from pydantic import ValidationError

    from control.models import ReceiverProvision, validate_receivers
    prog = "loa receivers provision"
    if args.file:
        try:
            raw = read_receiver_file(args.file)
        except (OSError, UnicodeDecodeError, ValueError) as e:
            print(f"{prog}: cannot read {args.file}: {e}", file=sys.stderr)
            return 2
        rows, problems = validate_receivers(raw)
        if problems:
            i, loc, msg = problems[0]
            where = f"{'.'.join(map(str, loc))}: " if loc else ""
            print(f"{prog}: receiver {i + 1} ({raw[i].get('id') or 'no id'}): {where}{msg}",
                  file=sys.stderr)
            return 2
        if not rows:
            print(f"{prog}: {args.file} lists no receivers", file=sys.stderr)
            return 2

        async def bulk(state):
            return {"receivers": await state.provision_receivers(rows, origin="cli")}
        return _run_state(args, bulk, prog, apply_config=True)
    if not args.zone:
        print(f"{prog}: --zone is required (or --file)", file=sys.stderr)
        return 2
    try:
        body = ReceiverProvision(zone=args.zone, id=args.id, name=args.name, address=args.address,
                                 lat=args.lat, lon=args.lon, link=args.link, notes=args.notes)
    except ValidationError as e:
        print(f"{prog}: {e.errors()[0]['loc'][0]}: {e.errors()[0]['msg']}", file=sys.stderr)
        return 2
    return _run_state(args, lambda state: state.provision_receiver(body.model_dump(), origin="cli"),
                      prog, apply_config=True)


def cmd_tts(argv: list[str]) -> int:
    if not argv or argv[0] != "normalize":
        print('usage: loa tts normalize "TEXT" [--sentences]   (TEXT "-" or none: read stdin)',
              file=sys.stderr)
        return 2
    p = argparse.ArgumentParser(prog="loa tts normalize",
                                description="Print the words a Vietnamese text is read as (one line).")
    p.add_argument("text", nargs="?", default="-")
    p.add_argument("--sentences", action="store_true", help="one spoken sentence per line")
    args = p.parse_args(argv[1:])
    from streamer.tts.normalize import normalize, spoken_sentences
    text = sys.stdin.read() if args.text == "-" else args.text
    print("\n".join(spoken_sentences(text)) if args.sentences else normalize(text))
    return 0


def main(argv: list[str]) -> int:
    cmd, rest = argv[0], argv[1:]
    commands = {"serve": cmd_serve, "play": cmd_play, "demo": cmd_demo, "admin": cmd_admin,
                "zones": cmd_zones, "receivers": cmd_receivers,
                "tts": cmd_tts, "say": cmd_say}
    from control.schedule.cli import cmd_schedule
    commands["schedule"] = cmd_schedule
    if cmd not in commands:
        print(f"loa: unknown command {cmd!r}; try: serve, play, demo, receiver, bench, admin, "
              "zones, receivers, tts, say, schedule", file=sys.stderr)
        return 2
    return commands[cmd](rest)
