"""normalize_many against the plain phonenumbers loop, on unique numbers in mixed formats.

The workload imitates an Iranian messenger's registry import: mostly Iranian mobiles written
as phones store them (``0912 345 6789``, ``+98 912 345 6789``, ``00989123456789``, Persian
and Arabic-Indic digits, ``tel:`` URIs), some Iranian landlines, numbers of other regions
(their example numbers with a redrawn tail, written internationally) and some junk. Every
input is unique (no cache can help); the workload is seeded, so runs are comparable.

Goals: normalize_many at least 4x the numbers/s of the plain loop (same run), and zero
differences from the reference (E.164 and reason code) on every input.
"""

from __future__ import annotations

import random
import sys
from collections import Counter
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import phonenumbers
from phonenumbers import NumberParseException, PhoneNumberFormat, PhoneNumberType

from _common import Report, best_of, parse_args, progress
from contactmatch import phone
from contactmatch.phone import normalize_many

REGION = "IR"
MOBILE_TYPES = (PhoneNumberType.MOBILE, PhoneNumberType.FIXED_LINE_OR_MOBILE)
PERSIAN = str.maketrans("0123456789", "۰۱۲۳۴۵۶۷۸۹")
ARABIC = str.maketrans("0123456789", "٠١٢٣٤٥٦٧٨٩")
# Prefixes of Iranian mobile operators (MCI 91x/990-994, Irancell 90x/93x, RighTel 92x).
IR_MOBILE_HEADS = ["910", "911", "912", "913", "914", "915", "917", "919", "990", "991"]
IR_MOBILE_HEADS += ["901", "902", "903", "905", "930", "933", "935", "936", "937", "938"]
IR_MOBILE_HEADS += ["939", "920", "921", "922"]
IR_AREA_CODES = ["21", "26", "31", "41", "51", "71", "81", "11", "13", "17"]


def plain_loop(raws: list[str], mobile_only: bool) -> list[str | None]:
    """The baseline: what an application would write with phonenumbers alone."""
    out: list[str | None] = []
    for raw in raws:
        try:
            num = phonenumbers.parse(raw, REGION)
        except NumberParseException:
            out.append(None)
            continue
        if not phonenumbers.is_valid_number(num) or (
            mobile_only and phonenumbers.number_type(num) not in MOBILE_TYPES
        ):
            out.append(None)
        else:
            out.append(phonenumbers.format_number(num, PhoneNumberFormat.E164))
    return out


def _ir_mobile(rng: random.Random) -> str:
    nsn = rng.choice(IR_MOBILE_HEADS) + f"{rng.randrange(10**7):07d}"
    a, b, c = nsn[:3], nsn[3:6], nsn[6:]
    shapes = [
        f"0{a} {b} {c}",
        f"0{nsn}",
        f"0{a}-{b}-{c}",
        f"+98 {a} {b} {c}",
        f"+98{nsn}",
        f"00 98 {a} {b} {c}",
        f"0098{nsn}",
        f"(0{a}) {b} {c}",
        f"0{nsn}".translate(PERSIAN),
        f"+98 {a} {b} {c}".translate(PERSIAN),
        f"0{a} {b} {c}".translate(ARABIC),
        f"tel:+98-{a}-{b}-{c}",
        nsn,
    ]
    weights = [14, 14, 6, 12, 10, 4, 8, 3, 8, 4, 3, 2, 2]
    return rng.choices(shapes, weights)[0]


def _ir_landline(rng: random.Random) -> str:
    area = rng.choice(IR_AREA_CODES)
    rest = f"{rng.randrange(10**8):08d}"
    return rng.choice([f"0{area} {rest[:4]} {rest[4:]}", f"+98 {area} {rest}", f"0{area}{rest}"])


def _foreign(rng: random.Random, examples: list[tuple[int, str]]) -> str:
    cc, nsn = rng.choice(examples)
    keep = max(1, len(nsn) - 4)
    nsn = nsn[:keep] + "".join(rng.choice("0123456789") for _ in range(len(nsn) - keep))
    cut = len(nsn) // 2
    return rng.choice([f"+{cc}{nsn}", f"+{cc} {nsn[:cut]} {nsn[cut:]}", f"00{cc}{nsn}"])


def _junk(rng: random.Random) -> str:
    digits = "".join(rng.choice("0123456789") for _ in range(rng.randint(3, 16)))
    return rng.choice(
        [digits, f"0{digits} ext {rng.randint(1, 99)}", f"call {digits}", f"+{digits}", digits[:5]]
    )


def workload(n: int, seed: int) -> list[str]:
    """``n`` unique inputs: ~78% IR mobiles, 8% IR landlines, 10% other regions, 4% junk."""
    rng = random.Random(seed)
    examples = []
    for region in sorted(phonenumbers.SUPPORTED_REGIONS):
        ex = phonenumbers.example_number_for_type(region, PhoneNumberType.MOBILE)
        if ex is not None and ex.country_code != 98:
            examples.append((int(ex.country_code), phonenumbers.national_significant_number(ex)))
    makers = [_ir_mobile, _ir_landline, lambda r: _foreign(r, examples), _junk]
    seen: set[str] = set()
    out: list[str] = []
    with progress("generating numbers", n) as advance:
        while len(out) < n:
            raw = rng.choices(makers, [78, 8, 10, 4])[0](rng)
            if raw not in seen:
                seen.add(raw)
                out.append(raw)
                advance(1)
    return out


def differences(raws: list[str], mobile_only: bool) -> tuple[int, int]:
    """(inputs where normalize_many differs from the reference, inputs left to the reference)."""
    batch = normalize_many(raws, REGION, mobile_only=mobile_only)
    plain = plain_loop(raws, mobile_only)
    reasons = dict(batch.rejected)
    rules = phone._rules_for(REGION)
    diff = undecided = 0
    with progress(f"checking mobile_only={mobile_only}", len(raws)) as advance:
        for i, raw in enumerate(raws):
            got = batch.numbers[i] if batch.numbers[i] is not None else reasons.get(i)
            want = phone._reference(raw, REGION, mobile_only)
            if got != want or batch.numbers[i] != plain[i]:
                diff += 1
            if phone._FAST(raw, rules, mobile_only) is None:
                undecided += 1
            advance(1)
    return diff, undecided


def main() -> int:
    args = parse_args(
        __doc__.splitlines()[0],
        count=(int, 60_000, "unique numbers in the workload (full run)"),
        seed=(int, 20240611, "workload seed"),
    )
    n = 2_000 if args.quick else args.count
    repeat = 1 if args.quick else 3
    raws = workload(n, args.seed)
    report = Report(
        "bench_phone",
        args,
        title=(
            "Phone normalisation: numbers/s, normalize_many vs the phonenumbers loop\n"
            f"({n:,} unique inputs in mixed formats, region {REGION}, best of {repeat})"
        ),
    )
    report.params = {"numbers": n, "region": REGION, "seed": str(args.seed), "repeat": repeat}
    shares = Counter("accepted" if x else "rejected" for x in normalize_many(raws, REGION).numbers)
    report.note(
        f"Workload: {n:,} unique inputs, {shares['accepted']:,} accepted as mobiles, "
        f"{shares['rejected']:,} rejected (landlines, invalid, junk)."
    )

    speeds: dict[str, float] = {}
    for mobile_only in (True, False):
        # Interleaved, best of each: load from other processes hits both sides alike.
        t_ref = t_fast = float("inf")
        for _ in range(repeat):
            t_ref = min(t_ref, best_of(lambda m=mobile_only: plain_loop(raws, m), repeat=1))
            t_fast = min(
                t_fast,
                best_of(
                    lambda m=mobile_only: normalize_many(raws, REGION, mobile_only=m), repeat=1
                ),
            )
        diff, undecided = differences(raws, mobile_only)
        label = f"mobile_only={mobile_only}"
        for impl, t in (("phonenumbers loop", t_ref), ("normalize_many", t_fast)):
            report.row(
                mode=label,
                implementation=impl,
                seconds=t,
                numbers_per_s=n / t,
                us_per_number=t / n * 1e6,
                differences=diff if impl == "normalize_many" else 0,
                fallback_share=undecided / n if impl == "normalize_many" else "",
            )
            speeds[f"{impl}\n{label}"] = n / t
        report.goal(f"speed-up vs phonenumbers loop ({label})", t_ref / t_fast, 4, at_least=True)
        report.goal(f"differences from the reference ({label})", diff, 0, at_least=False)
    report.note(
        "fallback_share: inputs the fast path left to phonenumbers (junk, extensions, "
        "unusual shapes); differences count E.164 or reason-code mismatches on all inputs."
    )

    def plot(ax: Any) -> None:
        names = list(speeds)
        colors = ["#999999" if "phonenumbers" in k else "#2a7ab9" for k in names]
        ax.bar(range(len(names)), [speeds[k] for k in names], color=colors)
        ax.set_xticks(range(len(names)), names, fontsize=8)
        ax.set_ylabel("numbers per second (higher is better)")

    return report.finish(plot)


if __name__ == "__main__":
    sys.exit(main())
