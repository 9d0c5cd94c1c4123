"""Filter size against the log2(1/fpr) lower bound, build and query speed, several fpr.

Side by side: the Golomb-compressed filter (``GolombFilter``), the pybloom-live Bloom filter,
and OpenMined PSI's GCS setup message for the same set size and per-query false-positive rate
(PSI's ``fpr`` is for a whole client query, so it is given ``fpr * num_client_inputs``).
The Bloom filter and PSI are measured on smaller sets: both hash in Python / encrypt every
item, and their bits per entry do not depend on the set size.
"""

from __future__ import annotations

import math
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import Report, best_of, parse_args, progress
from contactmatch.filters import BloomFilter, GolombFilter

GOAL_LOG_FPR = 32


def _tokens(rng: np.random.Generator, n: int, width: int) -> list[bytes]:
    return [bytes(r) for r in rng.integers(0, 256, (n, width), dtype=np.uint8)]


def main() -> int:
    args = parse_args(
        __doc__.splitlines()[0],
        n=(int, 10_000_000, "tokens in the compact filter"),
        n_bloom=(int, 200_000, "tokens in the pybloom-live filter"),
        n_psi=(int, 100_000, "items in the OpenMined PSI setup message"),
        contacts=(int, 1000, "client query size (PSI's num_client_inputs)"),
        token_bytes=(int, 32, "token length"),
    )
    if args.quick:
        args.n, args.n_bloom, args.n_psi = 20_000, 2_000, 1_000
    log_fprs = [8, 16, 20, 32, 40]
    bloom_log_fprs = [8, 16, 20]
    report = Report(
        "bench_filters",
        args,
        title=(
            "Filter size: bits per entry against the log2(1/fpr) lower bound\n"
            f"(Golomb filter of {args.n:,} tokens, Bloom of {args.n_bloom:,}, "
            f"PSI of {args.n_psi:,}; {args.token_bytes}-byte tokens)"
        ),
    )
    report.params = {
        "gcs_entries": args.n,
        "bloom_entries": args.n_bloom,
        "psi_entries": args.n_psi,
        "psi_num_client_inputs": args.contacts,
        "token_bytes": args.token_bytes,
    }
    rng = np.random.default_rng(7)
    tokens = _tokens(rng, args.n, args.token_bytes)
    probes = _tokens(rng, min(args.n, 1_000_000), args.token_bytes + 1)
    repeat = 2 if args.quick else 3
    curves: dict[str, tuple[list[int], list[float]]] = {}

    # --- the compact filter -------------------------------------------------------------
    xs: list[int] = []
    ys: list[float] = []
    build_rate_at_goal = 0.0
    ratio_at_goal = math.inf
    with progress("GolombFilter", len(log_fprs)) as advance:
        for lf in log_fprs:
            fpr = 2.0**-lf
            t_build = best_of(
                lambda f=fpr: GolombFilter.build(tokens, fpr=f).to_bytes(), repeat=repeat
            )
            filt = GolombFilter.build(tokens, fpr=fpr)
            data = filt.to_bytes()
            t_decode = best_of(lambda d=data: GolombFilter.from_bytes(d), repeat=repeat)
            t_query = best_of(lambda f=filt: f.contains_many(probes), repeat=repeat)
            hits = int(filt.contains_many(probes).sum())
            bound = math.log2(1 / filt.fpr)
            bpe = 8 * len(data) / len(filt)
            report.row(
                filter="GolombFilter",
                entries=len(filt),
                target_fpr=f"2^-{lf}",
                actual_fpr=filt.fpr,
                measured_fpr=hits / len(probes),
                bits_per_entry=bpe,
                lower_bound_bits=bound,
                ratio_to_bound=bpe / bound,
                build_tokens_per_s=len(filt) / t_build,
                query_tokens_per_s=len(probes) / t_query,
                decode_s=t_decode,
            )
            xs.append(lf)
            ys.append(bpe)
            if lf == GOAL_LOG_FPR:
                build_rate_at_goal = len(filt) / t_build
                ratio_at_goal = bpe / bound
            advance(1)
    curves["GolombFilter (this library)"] = (xs, ys)

    # --- pybloom-live baseline ----------------------------------------------------------
    bloom_tokens = tokens[: args.n_bloom]
    bloom_probes = probes[: min(len(probes), 100_000)]
    xs, ys = [], []
    with progress("pybloom-live", len(bloom_log_fprs)) as advance:
        for lf in bloom_log_fprs:
            fpr = 2.0**-lf
            t0 = time.perf_counter()
            bloom = BloomFilter.build(bloom_tokens, fpr=fpr)
            t_build = time.perf_counter() - t0
            t0 = time.perf_counter()
            hits = int(bloom.contains_many(bloom_probes).sum())
            t_query = time.perf_counter() - t0
            bpe = bloom.bits_per_entry
            report.row(
                filter="Bloom (pybloom-live)",
                entries=len(bloom),
                target_fpr=f"2^-{lf}",
                actual_fpr=fpr,
                measured_fpr=hits / len(bloom_probes),
                bits_per_entry=bpe,
                lower_bound_bits=float(lf),
                ratio_to_bound=bpe / lf,
                build_tokens_per_s=len(bloom) / t_build,
                query_tokens_per_s=len(bloom_probes) / t_query,
            )
            xs.append(lf)
            ys.append(bpe)
            advance(1)
    curves["Bloom (pybloom-live)"] = (xs, ys)

    # --- OpenMined PSI GCS setup message --------------------------------------------------
    try:
        import private_set_intersection.python as psi
    except ImportError:  # the [bench] extra is optional
        report.note("OpenMined PSI not installed: pip install 'contactmatch[bench]'")
    else:
        items = [t.hex() for t in tokens[: args.n_psi]]
        xs, ys = [], []
        server = psi.server.CreateWithNewKey(True)
        with progress("OpenMined PSI", len(log_fprs)) as advance:
            for lf in log_fprs:
                query_fpr = 2.0**-lf * args.contacts
                if query_fpr >= 1:
                    advance(1)
                    continue
                t0 = time.perf_counter()
                setup = server.CreateSetupMessage(
                    query_fpr, args.contacts, items, psi.DataStructure.GCS
                )
                t_build = time.perf_counter() - t0
                size = len(setup.SerializeToString())
                bpe = 8 * size / len(items)
                report.row(
                    filter="OpenMined PSI GCS setup",
                    entries=len(items),
                    target_fpr=f"2^-{lf}",
                    actual_fpr=2.0**-lf,
                    bits_per_entry=bpe,
                    lower_bound_bits=float(lf),
                    ratio_to_bound=bpe / lf,
                    build_tokens_per_s=len(items) / t_build,
                )
                xs.append(lf)
                ys.append(bpe)
                advance(1)
        curves["OpenMined PSI GCS setup"] = (xs, ys)

    report.goal(
        f"GolombFilter bits per entry / log2(1/fpr) at fpr = 2^-{GOAL_LOG_FPR}",
        ratio_at_goal,
        1.05,
        at_least=False,
    )
    report.goal(
        f"GolombFilter build (tokens/s, fpr = 2^-{GOAL_LOG_FPR}, to bytes)",
        build_rate_at_goal,
        1_000_000,
        at_least=True,
    )
    report.note(
        "Build = salted hash of every token + sort + Rice coding + serialisation; query = "
        "hashing + searchsorted on the decoded values (decode_s is the one-off cost of "
        "reading a downloaded filter)."
    )

    def plot(ax: Any) -> None:
        grid = np.array(sorted({*log_fprs, *bloom_log_fprs}))
        ax.plot(grid, grid, "k--", label="lower bound log2(1/fpr)")
        ax.plot(grid, grid * 1.05, "k:", label="1.05 x lower bound")
        for label, (cx, cy) in curves.items():
            ax.plot(cx, cy, marker="o", label=label)
        ax.set_xlabel("log2(1/fpr)")
        ax.set_ylabel("bits per entry")
        ax.legend()

    return report.finish(plot)


if __name__ == "__main__":
    raise SystemExit(main())
