"""`loa schedule add|list|rm`: schedules through a running server's API (LOA_SERVER, LOA_TOKEN)."""
from __future__ import annotations

import argparse
import os
import sys
import urllib.error


def cmd_schedule(argv: list[str]) -> int:
    from control.cli import _api
    p = argparse.ArgumentParser(prog="loa schedule", description="Scheduled playout.")
    p.add_argument("--server", default=os.environ.get("LOA_SERVER", "http://127.0.0.1:8080"))
    sub = p.add_subparsers(dest="action", required=True)
    a = sub.add_parser("add", help="add a schedule")
    a.add_argument("--zone", action="append", required=True, help="zone or group id (repeatable)")
    src = a.add_mutually_exclusive_group(required=True)
    src.add_argument("--media", help="a media library id")
    src.add_argument("--say", help="a text read aloud (TTS)")
    src.add_argument("--tone", type=float, help="a test tone of this many seconds")
    a.add_argument("--start", required=True,
                   help="ISO 8601 with an offset, e.g. 2026-03-01T06:00:00+07:00")
    a.add_argument("--rrule", help="RFC 5545 RRULE, e.g. FREQ=DAILY;BYHOUR=6,17;BYMINUTE=0")
    a.add_argument("--until")
    a.add_argument("--exdate", action="append", default=[], help="YYYY-MM-DD or an instant")
    a.add_argument("--title", default="")
    a.add_argument("--level", default="normal",
                   choices=["background", "normal", "priority", "emergency"])
    a.add_argument("--mode", default="preempt", choices=["preempt", "duck", "mix"])
    a.add_argument("--on-busy", default="wait", choices=["wait", "cut", "skip"])
    a.add_argument("--missed", default="skip", choices=["skip", "late", "join"])
    a.add_argument("--missed-window", type=float, default=600.0)
    a.add_argument("--duration", type=float, default=None)
    sub.add_parser("list", help="list schedules")
    r = sub.add_parser("rm", help="delete a schedule")
    r.add_argument("id")
    args = p.parse_args(argv)
    try:
        if args.action == "add":
            source: dict = ({"kind": "media", "id": args.media} if args.media else
                            {"kind": "tts", "text": args.say} if args.say else
                            {"kind": "tone", "seconds": args.tone})
            body = {"zones": args.zone, "level": args.level, "mode": args.mode,
                    "source": source, "start": args.start, "rrule": args.rrule,
                    "until": args.until, "exdates": args.exdate, "title": args.title,
                    "on_busy": args.on_busy, "missed": args.missed,
                    "missed_window_s": args.missed_window, "duration_s": args.duration}
            status, resp = _api(args.server, "POST", "/api/v1/schedules",
                                {k: v for k, v in body.items() if v is not None})
        elif args.action == "list":
            status, resp = _api(args.server, "GET", "/api/v1/schedules")
        else:
            status, resp = _api(args.server, "DELETE", f"/api/v1/schedules/{args.id}")
    except (urllib.error.URLError, OSError) as e:
        print(f"loa schedule: cannot reach {args.server}: {e}", file=sys.stderr)
        return 1
    if status >= 400:
        err = resp.get("error", {})
        print(f"loa schedule: refused ({status} {err.get('code')}): {err.get('message')}",
              file=sys.stderr)
        return 1
    if args.action == "add":
        print(f"schedule {resp['id']} added: {resp['title']} from {resp['start']}"
              + (f" ({resp['rrule']})" if resp.get("rrule") else ""))
        for c in resp.get("conflicts", [])[:20]:
            print(f"  conflict at {c['at']} with {c['schedule']} on {', '.join(c['zones'])}: "
                  f"{c['winner']} wins ({c['why']})")
    elif args.action == "list":
        for s in resp["schedules"]:
            state = "on" if s["enabled"] else f"off ({s.get('disabled_reason')})"
            print(f"{s['id']}  {s['level']:<10} {s['start']}  {s.get('rrule') or 'once':<36} "
                  f"{','.join(s['zones'])[:30]:<30} {state}  {s['title']}")
    else:
        print(f"schedule {args.id} deleted")
    return 0
