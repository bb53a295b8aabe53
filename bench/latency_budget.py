"""Where each millisecond of mouth → speaker goes: the budget table of `loa bench latency`.

Inputs are wall-clock times on this machine: the sender's onsets (captured), the receiver's
played onsets, and the server's latency trace (streamer/trace.py: marked frames and stamped
ticks, monotonic ns plus the wall-minus-monotonic offset). For every paired onset the chain

    captured → at the server's tap → decoded and queued → [tick grid point after queued]
    → start of the tick that read it → read → mixed + encoded → sent → played

is cut into stages that add up exactly to that onset's end-to-end latency:

- sender → server: capture, encode and network (and waiting for the rest of the 20 ms packet);
  for Chromium the sender's getStats splits off the pacer delay and half the round trip;
- server receive: the tap's reorder buffer and Opus decode (worker thread);
- tick alignment: queued → the next 20 ms tick (the grid is the reading tick's start − n·20 ms);
- server queue: further whole ticks the frame waited (the receive queue's depth);
- tick read: the reading tick's start → the frame read (plan, earlier reads);
- mix + encode, fan-out: the tick's own stamps;
- server → played: loopback, the receiver's jitter buffer (target reported), decode, output.

Pure functions (tested in tests/unit/test_latency_budget.py).
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np

TICK_S = 0.020
STAGES = ("sender → server (capture, encode, network)", "server receive (reorder, decode)",
          "tick alignment", "server queue (whole ticks)", "tick read (plan, reads)",
          "mix + encode", "fan-out (send)", "server → played (loopback, receiver buffer, "
          "decode, output)")
SERVER_STAGES = STAGES[1:7]


def _pct(v: list[float], q: float) -> float | None:
    return round(float(np.percentile(v, q)), 2) if v else None


def _chains(trace: dict[str, Any]) -> tuple[list[dict[str, float]], float]:
    """Every complete marked frame with its reading tick: wall-clock stamps (s)."""
    off = float(trace["wall_minus_mono_s"])
    ticks = np.array(trace.get("ticks") or [], dtype=np.int64).reshape(-1, 5)
    if len(ticks):
        ok = (ticks[:, 1] > 0) & (ticks[:, 1] <= ticks[:, 2]) & (ticks[:, 2] <= ticks[:, 3]) \
            & (ticks[:, 3] <= ticks[:, 4])
        ticks = ticks[ok]
        ticks = ticks[np.argsort(ticks[:, 2])]
    out = []
    for m in trace.get("marks") or []:
        arrival, _ts, queued, read, onset, offset = m
        if not (0 < arrival <= queued <= read) or not len(ticks):
            continue
        # the tick that read it: start <= read <= sent
        i = int(np.searchsorted(ticks[:, 2], read))
        if i >= len(ticks) or not ticks[i, 1] <= read <= ticks[i, 4]:
            continue
        _k, start, t_read, enc, sent = (int(x) for x in ticks[i])
        # the tick grid point at or after `queued` (not before the reading tick's start)
        j = math.ceil((queued - start) / (TICK_S * 1e9) - 1e-9)
        grid = start + min(0, j) * int(TICK_S * 1e9)
        w = lambda ns: ns / 1e9 + off
        # queued during the reading tick itself (before its read): no alignment, no queue
        start_eff = max(start, queued)
        out.append({"arrival": w(arrival), "queued": w(queued), "grid": w(max(grid, queued)),
                    "start": w(start_eff), "read": w(read), "encoded": w(enc), "sent": w(sent),
                    "onset": bool(onset), "offset_samples": int(offset)})
    return out, off


def _stages(c: dict[str, float]) -> list[float]:
    return [(c["queued"] - c["arrival"]) * 1e3, (c["grid"] - c["queued"]) * 1e3,
            (c["start"] - c["grid"]) * 1e3, (c["read"] - c["start"]) * 1e3,
            (c["encoded"] - c["read"]) * 1e3, (c["sent"] - c["encoded"]) * 1e3]


def budget(trace: dict[str, Any] | None, pairs: list[tuple[float, float]],
           sender_split: dict[str, float] | None = None) -> dict[str, Any]:
    """The budget of paired (captured, played) onsets against the server's trace.

    `sender_split`: known parts of the sender → server stage in ms (e.g. Chromium's
    {"pacer": 0.4, "network (rtt/2)": 0.1}); the rest is reported as capture + encode."""
    if not trace:
        return {"error": "no latency trace from the server"}
    chains, _ = _chains(trace)
    onsets = sorted((c for c in chains if c["onset"]), key=lambda c: c["arrival"])
    rows: list[list[float]] = []
    unmatched = 0
    for cap, played in pairs:
        c = next((c for c in onsets if cap - 0.005 <= c["arrival"] < cap + 0.4), None)
        if c is None or not c["sent"] <= played:
            unmatched += 1
            continue
        rows.append([(c["arrival"] - cap) * 1e3, *_stages(c), (played - c["sent"]) * 1e3,
                     (played - cap) * 1e3])
    res: dict[str, Any] = {"onsets": len(rows), "unmatched": unmatched, "stages": []}
    split = dict(sender_split or {})
    for i, name in enumerate(STAGES):
        v = [r[i] for r in rows]
        res["stages"].append({"stage": name, "p50": _pct(v, 50), "p95": _pct(v, 95),
                              "mean": round(float(np.mean(v)), 2) if v else None})
    if rows and split:
        first = res["stages"][0]
        known = sum(split.values())
        res["sender_split"] = {**{k: round(v, 2) for k, v in split.items()},
                               "capture + encode (the rest, mean)":
                               round(first["mean"] - known, 2)}
    tot = [r[-1] for r in rows]
    res["total"] = {"p50": _pct(tot, 50), "p95": _pct(tot, 95),
                    "mean": round(float(np.mean(tot)), 2) if tot else None}
    # every sampled frame (one in N and the onsets): the server's own stages, more samples
    allv = [_stages(c) for c in chains]
    res["server_sampled"] = {"frames": len(allv), "stages": [
        {"stage": name, "p50": _pct([r[i] for r in allv], 50),
         "p95": _pct([r[i] for r in allv], 95)} for i, name in enumerate(SERVER_STAGES)]}
    return res


def render(b: dict[str, Any], console: Any, title: str) -> None:
    from rich.table import Table
    if "error" in b:
        console.print(f"[yellow]budget: {b['error']}[/]")
        return
    t = Table(title=f"{title}: where the milliseconds go ({b['onsets']} onsets; stages add "
                    f"up per onset)")
    for c in ("stage", "p50", "p95", "mean", "server frames p50", "p95 "):
        t.add_column(c, justify="left" if c == "stage" else "right")
    srv = {s["stage"]: s for s in b["server_sampled"]["stages"]}
    for s in b["stages"]:
        o = srv.get(s["stage"], {})
        t.add_row(s["stage"], str(s["p50"]), str(s["p95"]), str(s["mean"]),
                  str(o.get("p50", "")), str(o.get("p95", "")))
    tot = b["total"]
    t.add_row("[bold]total (captured → played)[/]", str(tot["p50"]), str(tot["p95"]),
              str(tot["mean"]), "", "")
    console.print(t)
    if b.get("sender_split"):
        console.print(f"sender → server, split by the sender's getStats (mean ms): "
                      f"{b['sender_split']}")
    console.print(f"server frames: {b['server_sampled']['frames']} sampled (one in N and "
                  f"every onset)")
