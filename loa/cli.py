"""The one command: `loa serve`, `loa receiver`, `loa play`, `loa bench ...`, `loa demo`."""
from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__)
        print("usage: loa {serve,receiver,play,demo,bench} ...")
        return 0
    cmd, rest = argv[0], argv[1:]
    if cmd == "receiver":
        from receivers.cli import main as receiver_main
        return receiver_main(rest) or 0
    if cmd == "bench":
        from bench.cli import main as bench_main
        return bench_main(rest) or 0
    from control.cli import main as control_main
    return control_main(argv) or 0


if __name__ == "__main__":
    sys.exit(main())
