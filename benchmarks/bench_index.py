"""TokenIndex against a Python set of the same tokens: memory, lookup, bulk build, add/remove.

Memory is counted honestly: ``nbytes`` of every index array against ``sys.getsizeof`` of the
set plus its token objects. Lookups use fresh token objects (as a request would bring) and
confirm every fingerprint hit against a memory-mapped token file, the way a server holding
millions of users would (the tokens stay out of the heap; they are not counted above).
"""

from __future__ import annotations

import gc
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import Report, best_of, parse_args, progress
from contactmatch.index import TokenFile, TokenIndex


def main() -> int:
    args = parse_args(
        __doc__.splitlines()[0],
        n=(int, 10_000_000, "registered tokens"),
        contacts=(int, 1000, "contacts per lookup"),
        token_bytes=(int, 32, "token length (32 = HMAC/SHA-256, 64 = OPRF)"),
        churn=(int, 100_000, "tokens added and removed for the update figures"),
    )
    if args.quick:
        args.n, args.churn = 20_000, 2_000
    n, width = args.n, args.token_bytes
    # Small lookups take microseconds on two shared cores: many more tries for a stable best.
    lookup_repeat = 5 if args.quick else 61
    report = Report(
        "bench_index",
        args,
        title=(
            "Token lookup: best time by contacts per lookup, TokenIndex vs Python set\n"
            f"({n:,} registered tokens of {width} bytes)"
        ),
    )
    report.params = {"registered": n, "contacts": args.contacts, "token_bytes": width}
    rng = np.random.default_rng(2026)

    with progress("generating tokens", 2) as advance:
        matrix = rng.integers(0, 256, (n, width), dtype=np.uint8)
        tokens = [bytes(row) for row in matrix]
        advance(1)
        tmp = tempfile.TemporaryDirectory()
        token_path = Path(tmp.name) / "tokens.bin"
        TokenFile.write(token_path, matrix)
        del matrix
        source = TokenFile.open(token_path)
        advance(1)

    # --- bulk build and memory -----------------------------------------------------------
    t0 = time.perf_counter()
    registered = set(tokens)
    set_build = time.perf_counter() - t0
    set_container = sys.getsizeof(registered)
    set_total = set_container + sum(map(sys.getsizeof, tokens))
    report.row(
        structure="python set",
        bytes_per_user=set_total / n,
        container_bytes_per_user=set_container / n,
        build_s=set_build,
        build_tokens_per_s=n / set_build,
    )
    indexes: dict[str, TokenIndex] = {}
    for mode in ("hash", "prefix"):
        gc.collect()
        t0 = time.perf_counter()
        index = TokenIndex.build(tokens, fingerprint=mode, source=source)  # type: ignore[arg-type]
        build = time.perf_counter() - t0
        indexes[mode] = index
        report.row(
            structure=f"TokenIndex ({mode})",
            bytes_per_user=index.nbytes / n,
            container_bytes_per_user=index.nbytes / n,
            build_s=build,
            build_tokens_per_s=n / build,
        )
    report.goal("index bytes per registered user", indexes["hash"].nbytes / n, 12, at_least=False)

    # --- lookups: half registered (fresh objects), half not ------------------------------
    def contacts_of(size: int) -> list[bytes]:
        half = size // 2
        picks = rng.integers(0, n, half)
        known = [bytes(bytearray(tokens[i])) for i in picks.tolist()]
        unknown = [bytes(r) for r in rng.integers(0, 256, (size - half, width), dtype=np.uint8)]
        return known + unknown

    sizes = sorted({10, 100, args.contacts, 10 * args.contacts, 100 * args.contacts})
    sizes = [s for s in sizes if s <= n]
    curve: dict[str, list[float]] = {"python set": [], "index hash": [], "index prefix": []}
    at_contacts: dict[str, float] = {}
    for size in sizes:
        batch = contacts_of(size)
        expect = [t in registered for t in batch]
        for index in indexes.values():
            assert index.contains_many(batch).tolist() == expect
        # Interleaved rounds (set, hash, prefix, set, ...): other jobs on the shared cores
        # then slow all three alike, and the best of each round set is compared.
        runs: dict[str, Any] = {
            "python set": lambda b=batch: [t in registered for t in b],
            **{
                f"index {mode}": (lambda b=batch, ix=index: ix.contains_many(b))
                for mode, index in indexes.items()
            },
        }
        best = dict.fromkeys(runs, float("inf"))
        for _ in range(lookup_repeat):
            for name, fn in runs.items():
                best[name] = min(best[name], best_of(fn, repeat=1))
        t_set = best["python set"]
        row: dict[str, Any] = {"structure": f"lookup {size:,} contacts", "set_us": t_set * 1e6}
        curve["python set"].append(t_set)
        for mode in indexes:
            t_ix = best[f"index {mode}"]
            row[f"{mode}_us"] = t_ix * 1e6
            row[f"{mode}_speedup"] = t_set / t_ix
            curve[f"index {mode}"].append(t_ix)
            if size == args.contacts:
                at_contacts[mode] = t_set / t_ix
        report.row(**row)
    report.goal(
        f"{args.contacts:,}-contact lookup speed-up vs set loop (prefix fingerprints)",
        at_contacts["prefix"],
        20,
        at_least=True,
    )
    report.goal(
        f"{args.contacts:,}-contact lookup clearly faster than the set loop (prefix)",
        at_contacts["prefix"],
        1.5,
        at_least=True,
    )

    # --- add / remove throughput -----------------------------------------------------------
    churn = min(args.churn, n)
    fresh = [bytes(r) for r in rng.integers(0, 256, (churn, width), dtype=np.uint8)]
    rows = np.arange(n, n + churn, dtype=np.uint32)
    gone = [tokens[i] for i in rng.choice(n, churn, replace=False).tolist()]
    step = max(1, min(1000, churn // 10))
    index = indexes["hash"]
    index.merge_minimum = 10 * churn  # time the delta path; the merge is timed on its own
    t0 = time.perf_counter()
    for i in range(0, churn, step):
        index.add_many(fresh[i : i + step], rows[i : i + step])
    t_add = time.perf_counter() - t0
    t0 = time.perf_counter()
    for i in range(0, churn, step):
        index.remove_many(gone[i : i + step])
    t_remove = time.perf_counter() - t0
    pending = index.pending
    t0 = time.perf_counter()
    index.compact()
    t_merge = time.perf_counter() - t0
    t0 = time.perf_counter()
    for i in range(0, churn, step):
        registered.update(fresh[i : i + step])
    t_set_add = time.perf_counter() - t0
    t0 = time.perf_counter()
    for i in range(0, churn, step):
        registered.difference_update(gone[i : i + step])
    t_set_remove = time.perf_counter() - t0
    report.row(
        structure=f"updates: {churn:,} adds + removes in batches of {step:,}",
        index_adds_per_s=churn / t_add,
        index_removes_per_s=churn / t_remove,
        set_adds_per_s=churn / t_set_add,
        set_removes_per_s=churn / t_set_remove,
        merge_s=t_merge,
        merged_changes=pending,
    )
    report.note(
        "Lookups confirm every fingerprint hit against a memory-mapped token file; adds are "
        "timed without writing the new tokens anywhere (the store does that)."
    )
    report.note(
        "The set loop costs one hash probe per contact in C, ~1-3 cache/TLB misses at 10M; the "
        "index pays the same order of misses per contact (directory, entry, token row) but "
        "issues them as independent gathers, plus a fixed ~40 numpy calls and one pass over "
        "the token objects (lengths, join) per batch, which the rows above show against the "
        "set loop at each book size (its ratio column)."
    )

    def plot(ax: Any) -> None:
        for label, ys in curve.items():
            ax.loglog(sizes, [y * 1e6 for y in ys], marker="o", label=label)
        ax.set_xlabel("contacts per lookup")
        ax.set_ylabel("best time (us)")
        ax.legend()

    status = report.finish(plot)
    tmp.cleanup()
    return status


if __name__ == "__main__":
    raise SystemExit(main())
