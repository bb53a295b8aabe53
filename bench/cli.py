"""`loa bench ...`: benchmarks that tell the truth about this machine.

  loa bench fanout --receivers N --seconds S [--frame-ms 20|40|60] [--workers K]
                   [--target loa|bare] [--peer gstreamer|bare] [--runs R] [--json FILE]
  loa bench preempt [--receivers N] [--alerts 20] [--attention] [--json FILE]
  loa bench alert [--receivers 5000] [--rounds 20] [--spoken] [--polygon] [--json FILE]
  loa bench latency --source file [--onsets 20] [--jitter-ms 60] [--json FILE]
  loa bench tts [--rounds 20] [--config FILE] [--receivers 5000] [--windows 3] [--starts 5]
                [--engine-cpus 0] [--json FILE]
  loa bench listen [--listeners 1000] [--receivers 500] [--seconds 10] [--rounds 3] [--tls]
                   [--json FILE]
  loa bench nodes [--sizes 250,1000,2500] [--seconds 10] [--trials 10] [--rounds R]
                  [--parts cpu,edge,origin,redis] [--json FILE]
  loa bench provision --receivers N [--batch 1000 | --single [--concurrency 8]] [--zones Z]
                      [--programme zones|separate] [--json FILE]

Exit status: 0 when every run was valid, 3 when a run was invalid (sink overflowed, a sender or
the server crashed), 2 for bad usage. Never non-zero because a number was slow.
"""
from __future__ import annotations

import argparse
import json
import sys

from rich.console import Console


def _fanout(argv: list[str]) -> int:
    from bench.fanout import FanoutOptions, loa_server_available, render, run_fanout
    p = argparse.ArgumentParser(prog="loa bench fanout",
                                description="Fan-out of one Opus/RTP stream to N loopback receivers.")
    p.add_argument("--receivers", type=int, default=2000)
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--frame-ms", type=int, default=20, choices=(20, 40, 60))
    p.add_argument("--workers", type=int, default=0, help="sender worker processes (0: in-process)")
    p.add_argument("--target", choices=("loa", "bare"), default="loa",
                   help="loa: a real `loa serve`; bare: the send loop alone")
    p.add_argument("--peer", choices=("gstreamer", "bare"), default=None,
                   help="run this sender interleaved with the target and print the CPU ratio")
    p.add_argument("--runs", type=int, default=1)
    p.add_argument("--batch", type=int, default=512, help="destinations per sendmmsg call")
    p.add_argument("--zones", type=int, default=1, help="split receivers over this many zones")
    p.add_argument("--sample", type=int, default=50, help="receivers sampled for timing")
    p.add_argument("--bitrate", type=int, default=32_000)
    p.add_argument("--complexity", type=int, default=5, choices=range(11), metavar="0..10",
                   help="Opus complexity of every sender (loa serve, bare loop, opusenc)")
    p.add_argument("--fec", action="store_true",
                   help="Opus in-band FEC on in every sender (off: opusenc's default)")
    p.add_argument("--nice", type=int, default=None, help="nice value (default -10 as root)")
    p.add_argument("--sender-cpus", default=None, help="taskset list for the sender")
    p.add_argument("--sink-cpu", type=int, default=None)
    p.add_argument("--json", dest="json_path", default=None, help="write results here")
    a = p.parse_args(argv)
    console = Console()
    if not console.is_terminal:
        console = Console(width=180)
    if a.target == "loa" and not loa_server_available():
        console.print("[red]loa serve is not available in this tree (control/cli.py missing); "
                      "use --target bare[/]")
        return 2
    if not 1 <= a.runs <= 50 or a.receivers < 1 or a.receivers > 64_000:
        console.print("[red]--runs must be 1..50 and --receivers 1..64000[/]")
        return 2
    if a.peer == a.target:
        console.print("[red]--peer must differ from --target[/]")
        return 2
    opts = FanoutOptions(**{k: v for k, v in vars(a).items()})
    try:
        report = run_fanout(opts, console=console)
    except ValueError as e:
        console.print(f"[red]{e}[/]")
        return 2
    render(report, console)
    if a.json_path:
        with open(a.json_path, "w") as f:
            json.dump(report, f, indent=2)
        console.print(f"results written to {a.json_path}")
    return 0 if report["valid"] else 3


def _console() -> Console:
    console = Console()
    return console if console.is_terminal else Console(width=180)


def _finish(report: dict, render, json_path: str | None, console: Console) -> int:
    render(report, console)
    if json_path:
        with open(json_path, "w") as f:
            json.dump(report, f, indent=2)
        console.print(f"results written to {json_path}")
    return 0 if report["valid"] else 3


def _preempt(argv: list[str]) -> int:
    from bench.preempt import render, run_preempt
    p = argparse.ArgumentParser(prog="loa bench preempt",
                                description="Emergency API call → first RTP packet, with N receivers.")
    p.add_argument("--receivers", type=int, default=1000)
    p.add_argument("--alerts", type=int, default=20)
    p.add_argument("--attention", action="store_true",
                   help="start each alert with the attention chime (default: the stored file at once)")
    p.add_argument("--json", dest="json_path")
    a = p.parse_args(argv)
    if not 1 <= a.alerts <= 1000 or not 1 <= a.receivers <= 64_000:
        print("--alerts must be 1..1000 and --receivers 1..64000", file=sys.stderr)
        return 2
    console = _console()
    return _finish(run_preempt(a.receivers, a.alerts, a.attention, console), render,
                   a.json_path, console)


def _alert(argv: list[str]) -> int:
    from bench.alert import render, run_alert
    p = argparse.ArgumentParser(prog="loa bench alert",
                                description="Signed CAP push (and POST /broadcasts) → first RTP "
                                            "packet, with N receivers while a programme plays.")
    p.add_argument("--receivers", type=int, default=5000)
    p.add_argument("--rounds", type=int, default=20)
    p.add_argument("--spoken", action="store_true", help="speech (espeak-ng), not a recording")
    p.add_argument("--polygon", action="store_true",
                   help="a polygon over half the zone's receivers, not the zone's geocode")
    p.add_argument("--json", dest="json_path")
    a = p.parse_args(argv)
    if not 1 <= a.rounds <= 500 or not 1 <= a.receivers <= 64_000:
        print("--rounds must be 1..500 and --receivers 1..64000", file=sys.stderr)
        return 2
    console = _console()
    return _finish(run_alert(a.receivers, a.rounds, a.spoken, console, polygon=a.polygon),
                   render, a.json_path, console)


def _tts(argv: list[str]) -> int:
    from bench.tts import render, run_tts
    p = argparse.ArgumentParser(prog="loa bench tts",
                                description="TTS API call → first packet (cold/warm cache), "
                                            "real-time factor per engine.")
    p.add_argument("--rounds", type=int, default=20)
    p.add_argument("--config", default=None, help="settings file with [[tts_engines]]")
    p.add_argument("--receivers", type=int, default=5000,
                   help="receivers hearing a programme while bulletins are synthesised (late "
                        "ticks measured); 0 skips it")
    p.add_argument("--load-seconds", type=float, default=15.0)
    p.add_argument("--windows", type=int, default=3,
                   help="quiet + with-TTS window pairs under load, each printed (default 3)")
    p.add_argument("--starts", type=int, default=5,
                   help="new servers whose first bulletin is timed (0 skips it)")
    p.add_argument("--engine-cpus", default=None,
                   help="under load, the server may use every core and reserves these for its "
                        "tick and senders (settings engine_cpus, e.g. 0); default: the whole "
                        "server on the first core")
    p.add_argument("--json", dest="json_path")
    a = p.parse_args(argv)
    if not 1 <= a.rounds <= 1000 or not 0 <= a.receivers <= 64000:
        print("--rounds must be 1..1000 and --receivers 0..64000", file=sys.stderr)
        return 2
    if not 1 <= a.windows <= 100 or not 0 <= a.starts <= 100:
        print("--windows must be 1..100 and --starts 0..100", file=sys.stderr)
        return 2
    console = _console()
    return _finish(run_tts(a.rounds, a.config, a.receivers, a.load_seconds, a.starts,
                           a.windows, a.engine_cpus), render, a.json_path, console)


def _latency(argv: list[str]) -> int:
    from bench.latency import render, run_latency
    p = argparse.ArgumentParser(prog="loa bench latency", add_help=False,
                                description="Tone onset in the source → onset in a receiver's output.")
    p.add_argument("-h", "--help", action="store_true")
    p.add_argument("--source", default="file", choices=("file", "webrtc", "rtp"))
    p.add_argument("--onsets", type=int, default=20)
    p.add_argument("--jitter-ms", type=float, default=60.0)
    p.add_argument("--json", dest="json_path")
    a, extra = p.parse_known_args(argv)
    if a.help and a.source == "file":
        p.print_help()
        print("\n--source webrtc|rtp --help: the live sources' options (--runs, --cpu-hog, ...)")
        return 0
    if extra and a.source == "file":   # the live sources' own options (bench.latency_live)
        p.error(f"unrecognized arguments: {' '.join(extra)}")
    if a.source != "file":
        try:
            from bench import latency_live
        except ImportError:
            print(f"loa bench latency --source {a.source}: not available in this build",
                  file=sys.stderr)
            return 2
        return latency_live.main(argv)
    console = _console()
    return _finish(run_latency(a.source, a.onsets, a.jitter_ms, console), render, a.json_path,
                   console)


def _provision(argv: list[str]) -> int:
    from bench.provision import ProvisionOptions, check_options, render, run_provision
    p = argparse.ArgumentParser(prog="loa bench provision",
                                description="Provision N receivers through the API while a "
                                            "programme plays: time, late ticks, longest tick.")
    p.add_argument("--receivers", type=int, default=10_000)
    p.add_argument("--batch", type=int, default=1000, help="receivers per bulk request")
    p.add_argument("--zones", type=int, default=1, help="spread receivers over this many zones")
    p.add_argument("--single", action="store_true",
                   help="one POST /receivers per receiver instead of the bulk endpoint")
    p.add_argument("--concurrency", type=int, default=8, help="requests in flight with --single")
    p.add_argument("--programme", choices=("zones", "separate"), default="zones",
                   help="zones: the tone plays on the zones being provisioned (default); "
                        "separate: on a zone of its own")
    p.add_argument("--json", dest="json_path")
    a = p.parse_args(argv)
    opts = ProvisionOptions(receivers=a.receivers, batch=a.batch, zones=a.zones, single=a.single,
                            concurrency=a.concurrency, programme=a.programme)
    problem = check_options(opts)
    if problem:
        print(f"loa bench provision: {problem}", file=sys.stderr)
        return 2
    console = _console()
    return _finish(run_provision(opts, console), render, a.json_path, console)


def _listen(argv: list[str]) -> int:
    from bench.listen import render, run_listen
    p = argparse.ArgumentParser(prog="loa bench listen",
                                description="N concurrent HTTP listeners of one zone against Loa "
                                            "and Icecast 2 (same Ogg/Opus stream, same clients): "
                                            "CPU per listener-second, memory per listener, late "
                                            "ticks, UDP receivers' losses.")
    p.add_argument("--listeners", type=int, default=1000)
    p.add_argument("--receivers", type=int, default=500, help="UDP receivers of the zone")
    p.add_argument("--seconds", type=float, default=10.0, help="steady window per server")
    p.add_argument("--idle-seconds", type=float, default=5.0)
    p.add_argument("--ramp", type=float, default=200.0, help="connections (and closes) per s")
    p.add_argument("--rounds", type=int, default=3,
                   help="Loa and Icecast measured in turn this many times (one ratio per round)")
    p.add_argument("--tls", action="store_true",
                   help="also measure Loa's listeners over HTTPS (a second loa serve, no receivers)")
    p.add_argument("--json", dest="json_path")
    a = p.parse_args(argv)
    if not 1 <= a.rounds <= 20:
        print("--rounds 1..20", file=sys.stderr)
        return 2
    if not 1 <= a.listeners <= 20_000 or not 1 <= a.receivers <= 64_000 or a.ramp <= 0 \
            or not 1 <= a.seconds <= 600:
        print("--listeners 1..20000, --receivers 1..64000, --seconds 1..600, --ramp > 0",
              file=sys.stderr)
        return 2
    console = _console()
    return _finish(run_listen(a.listeners, a.receivers, a.seconds, a.idle_seconds, a.ramp,
                              console=console, rounds=a.rounds, tls=a.tls), render, a.json_path,
                   console)


def _nodes(argv: list[str]) -> int:
    from bench.nodes import NodesOptions, check_options, render, run_nodes
    p = argparse.ArgumentParser(prog="loa bench nodes",
                                description="Several nodes through Redis: 1 origin + 2 edges vs "
                                            "one node (CPU per delivered packet, origin CPU), "
                                            "failover times (edge killed, origin killed) and "
                                            "packets lost across a Redis restart.")
    p.add_argument("--sizes", default="250,1000,2500",
                   help="receivers per edge (2 zones, 2 x N receivers), comma-separated")
    p.add_argument("--seconds", type=float, default=10.0, help="tone length of each CPU run")
    p.add_argument("--trials", type=int, default=10, help="trials of each failover")
    p.add_argument("--rounds", type=int, default=None,
                   help="CPU runs per size, single node and cluster in alternating order; each "
                        "edge's ratio is the median over the rounds (default: NodesOptions')")
    p.add_argument("--failover-receivers", type=int, default=4,
                   help="field receivers (SRTP, libopus) listing both edges")
    p.add_argument("--static-receivers", type=int, default=100,
                   help="static receivers (a sink) of the zone edge A serves, for Redis restarts")
    p.add_argument("--redis-window", type=float, default=6.0,
                   help="seconds measured around each Redis restart")
    p.add_argument("--parts", default="cpu,edge,origin,redis",
                   help="which parts to run: cpu,edge,origin,redis")
    p.add_argument("--sender-cpus", default=None, help="taskset list of the single node and "
                                                       "the edges (default 0)")
    p.add_argument("--origin-cpus", default=None, help="taskset list of the origins "
                                                       "(default: the last core)")
    p.add_argument("--sink-cpu", type=int, default=None)
    p.add_argument("--nice", type=int, default=None, help="nice of the senders (-10 as root)")
    p.add_argument("--json", dest="json_path")
    a = p.parse_args(argv)
    try:
        sizes = tuple(int(x) for x in a.sizes.split(",") if x.strip())
    except ValueError:
        print("loa bench nodes: --sizes: comma-separated numbers", file=sys.stderr)
        return 2
    more = {} if a.rounds is None else {"rounds": a.rounds}
    opts = NodesOptions(sizes=sizes, seconds=a.seconds, trials=a.trials, **more,
                        failover_receivers=a.failover_receivers,
                        static_receivers=a.static_receivers, redis_window=a.redis_window,
                        sender_cpus=a.sender_cpus, origin_cpus=a.origin_cpus,
                        sink_cpu=a.sink_cpu, nice=a.nice,
                        parts=tuple(x.strip() for x in a.parts.split(",") if x.strip()),
                        json_path=a.json_path)
    problem = check_options(opts)
    if problem:
        print(f"loa bench nodes: {problem}", file=sys.stderr)
        return 2
    console = _console()
    return _finish(run_nodes(opts, log=lambda s: console.print(s, highlight=False)), render,
                   a.json_path, console)


def main(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__)
        return 0
    cmd, rest = argv[0], list(argv[1:])
    if cmd == "fanout":
        return _fanout(rest)
    if cmd == "preempt":
        return _preempt(rest)
    if cmd == "alert":
        return _alert(rest)
    if cmd == "latency":
        return _latency(rest)
    if cmd == "provision":
        return _provision(rest)
    if cmd == "tts":
        return _tts(rest)
    if cmd == "listen":
        return _listen(rest)
    if cmd == "nodes":
        return _nodes(rest)
    print(f"loa bench: unknown benchmark {cmd!r}; try: fanout, preempt, latency, provision",
          file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
