"""Run every benchmark and print one table: figure, ours, reference, ratio (ours / reference).

Each benchmark times our code and a plain reference on the same machine in the same run,
alternating them, and reports the median of the repeats: the machines are shared and noisy,
so the ratio is the figure to read, not the absolute numbers.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import tempfile
import time

from twotower_pipeline.store.embedded import EmbeddedMongo

BENCHMARKS = ["benchmarks.bench_flatten", "benchmarks.bench_export", "benchmarks.bench_training",
              "benchmarks.bench_scoring", "benchmarks.bench_refresh", "benchmarks.bench_serving",
              "benchmarks.bench_live_swap"]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small sizes, fewer repeats (a few minutes)")
    parser.add_argument("--only", help="run only benchmarks whose module name contains this")
    args = parser.parse_args(argv)
    rows = []
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="twotower-bench-") as data_dir:
        server = EmbeddedMongo(data_dir)
        uri = server.uri() + "?directConnection=true"
        try:
            for name in BENCHMARKS:
                if args.only and args.only not in name:
                    continue
                module = importlib.import_module(name)
                print(f"running {name} ...", file=sys.stderr, flush=True)
                rows += module.run(uri=uri, quick=args.quick)
        finally:
            server.stop()
    print(format_table(rows))
    print(
        f"\n({'quick' if args.quick else 'full'} mode, {time.monotonic() - started:.0f}s; "
        "ratio = ours / reference, higher is better for throughputs)"
    )
    return 0


def format_table(rows: list[dict]) -> str:
    header = ("figure", "ours", "reference", "ratio", "unit")
    lines = [
        [r["figure"], _number(r["ours"]), _number(r["reference"]), _ratio(r["ours"], r["reference"]), r["unit"]]
        for r in rows
    ]
    widths = [max(len(h), *(len(line[i]) for line in lines)) if lines else len(h) for i, h in enumerate(header)]
    fmt = "  ".join(f"{{:{'<' if i in (0, 4) else '>'}{w}}}" for i, w in enumerate(widths))
    return "\n".join(
        [fmt.format(*header), fmt.format(*("-" * w for w in widths)), *(fmt.format(*line) for line in lines)]
    )


def _ratio(ours: float, reference: float) -> str:
    """ours / reference; "-" where the reference is 0 (a rate neither side reached)."""
    if reference == 0:
        return "-"
    value = ours / reference
    return f"{value:.2f}" if value >= 0.01 else f"{value:.4f}"


def _number(value: float) -> str:
    """Large figures as whole numbers, small ones (seconds) with three decimals."""
    return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.3f}"


if __name__ == "__main__":
    sys.exit(main())
