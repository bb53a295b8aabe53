"""Score Vietnamese text normalisers on the table tests/unit/data/vi_normalize_cases.tsv.

    python -m bench.tts_normalize [--json] [--failures NAME] [--table PATH]

Scores Loa's own normaliser (streamer.tts.normalize) and each registry package that imports in
this interpreter (vietnormalizer, vinormx, vinorm, vietnam-number as a number core, soe-vinorm).
Run it with an interpreter that has the packages to compare them; the project's venv does not
install them. "strict" compares the words (case, punctuation and spacing ignored); "lenient" also
accepts the regional and spelling variants an announcer may use (lẻ/lẽ for linh, ngàn for nghìn,
kí for ki, hyphenated syllables).
"""
from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Callable
from importlib import metadata
from pathlib import Path

TABLE = Path(__file__).resolve().parent.parent / "tests" / "unit" / "data" / "vi_normalize_cases.tsv"


def load_cases(path: Path = TABLE) -> list[tuple[str, str]]:
    cases = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        text, expected = line.split("\t")
        cases.append((text, expected))
    return cases


def key(s: str) -> str:
    """The words only: lower case, no punctuation, single spaces."""
    s = re.sub(r"[.,;:!?…()\"']", " ", s.lower())
    return " ".join(s.split())


_VARIANTS = [(r"\b(lẻ|lẽ)\b", "linh"), (r"\bngàn\b", "nghìn"), (r"\bkí\b", "ki"), (r"-", " "),
             (r"\bmươi bốn\b", "mươi tư"), (r"\btỉ\b", "tỷ"), (r"\bthuỷ\b", "thủy"), (r"\buỷ\b", "ủy"),
             (r"\bhoà\b", "hòa")]


def lenient_key(s: str) -> str:
    s = key(s)
    for pattern, repl in _VARIANTS:
        s = re.sub(pattern, repl, s)
    return " ".join(s.split())


def _loa() -> Callable[[str], str]:
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from streamer.tts.normalize import normalize
    return normalize


def _vietnormalizer() -> Callable[[str], str]:
    from vietnormalizer import VietnameseNormalizer
    n = VietnameseNormalizer()
    return n.normalize  # type: ignore[no-any-return]


def _vinormx() -> Callable[[str], str]:
    import vinormx
    n = vinormx.VietnameseNormalizer()
    return n.normalize  # type: ignore[no-any-return]


def _vinorm() -> Callable[[str], str]:
    from vinorm import TTSnorm     # runs a bundled C++ binary through files in its package dir
    return TTSnorm  # type: ignore[no-any-return]


def _vietnam_number() -> Callable[[str], str]:
    # a number-to-words library only: score it as a number core (every number token, '.' as
    # thousands and ',' as decimals, through n2w), the rest of the text left as is
    from vietnam_number import n2w

    def run(text: str) -> str:
        def one(m: re.Match[str]) -> str:
            whole, _, frac = m.group(0).replace(".", "").partition(",")
            words = n2w(whole)
            return words + (" phẩy " + n2w(frac) if frac else "")
        return re.sub(r"\d{1,3}(?:\.\d{3})+(?:,\d+)?|\d+(?:,\d+)?", one, text)
    return run


def _soe_vinorm() -> Callable[[str], str]:
    from soe_vinorm import SoeNormalizer
    n = SoeNormalizer()         # fetches its CRF/ONNX weights from Hugging Face on first use
    return n.normalize  # type: ignore[no-any-return]


CANDIDATES: dict[str, tuple[str | None, Callable[[], Callable[[str], str]]]] = {
    "loa (streamer.tts.normalize)": (None, _loa),
    "vietnormalizer": ("vietnormalizer", _vietnormalizer),
    "vinormx": ("vinormx", _vinormx),
    "vinorm": ("vinorm", _vinorm),
    "vietnam-number (numbers only)": ("vietnam-number", _vietnam_number),
    "soe-vinorm": ("soe-vinorm", _soe_vinorm),
}


def score(fn: Callable[[str], str], cases: list[tuple[str, str]]) -> dict[str, object]:
    strict = lenient = 0
    failures = []
    for text, expected in cases:
        try:
            got = fn(text)
        except Exception as e:  # a package that crashes on a case scores 0 on it
            got = f"<{type(e).__name__}: {e}>"
        ok = key(got) == key(expected)
        strict += ok
        lenient += lenient_key(got) == lenient_key(expected)
        if not ok:
            failures.append({"text": text, "expected": expected, "got": got})
    return {"strict": strict, "lenient": lenient, "cases": len(cases), "failures": failures}


def run(cases: list[tuple[str, str]]) -> list[dict[str, object]]:
    rows: list[dict[str, object]] = []
    for name, (dist, factory) in CANDIDATES.items():
        version = ""
        if dist:
            try:
                version = metadata.version(dist)
            except metadata.PackageNotFoundError:
                rows.append({"name": name, "version": "", "error": "not installed"})
                continue
        try:
            fn = factory()
            fn("1")
        except Exception as e:
            rows.append({"name": name, "version": version,
                         "error": f"does not run here: {type(e).__name__}: {str(e)[:120]}"})
            continue
        rows.append({"name": name, "version": version, **score(fn, cases)})
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.tts_normalize", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--json", action="store_true")
    p.add_argument("--failures", metavar="NAME", help="list the cases NAME gets wrong")
    p.add_argument("--table", type=Path, default=TABLE)
    args = p.parse_args(argv)
    cases = load_cases(args.table)
    rows = run(cases)
    if args.json:
        print(json.dumps(rows, ensure_ascii=False, indent=1))
        return 0
    print(f"{'normaliser':32} {'version':10} {'strict':>12} {'lenient':>12}")
    for r in rows:
        if "error" in r:
            print(f"{r['name']:32} {r['version']:10} {r['error']}")
            continue
        n = r["cases"]
        assert isinstance(n, int) and isinstance(r["strict"], int) and isinstance(r["lenient"], int)
        print(f"{r['name']:32} {r['version']:10} {r['strict']:>4}/{n} {100 * r['strict'] / n:4.0f}%"
              f" {r['lenient']:>4}/{n} {100 * r['lenient'] / n:4.0f}%")
        if args.failures and args.failures in str(r["name"]):
            for f in r["failures"]:  # type: ignore[attr-defined]
                print(f"    {f['text']!r}\n      want {f['expected']}\n      got  {f['got']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
