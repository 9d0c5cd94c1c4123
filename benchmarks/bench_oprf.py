"""OPRF throughput per element: contactmatch vs the bare libsodium floor and OpenMined PSI.

Three workloads on the same inputs, every candidate measured round-robin in one run (best of
``--repeat``) so that machine noise hits all of them alike:

* server: evaluate a batch of blinded elements (the floor is rbcl's
  ``crypto_scalarmult_ristretto255`` in a bare loop; OpenMined: ``server.ProcessRequest``);
* client: blind + finalize a batch (OpenMined: ``client.CreateRequest`` + ``GetIntersection``);
* precompute: tokens of registered numbers (OpenMined: ``server.CreateSetupMessage``).

The goals compare OPRF mode, the like-for-like match for OpenMined's unverifiable ECDH-PSI;
VOPRF rows show what verifiability costs. A process-pool row checks the choice of threads.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import private_set_intersection.python as psi
import rbcl

from _common import Report, parse_args, progress
from contactmatch.hazmat import oprf
from contactmatch.hazmat._pool import available_cores
from contactmatch.hazmat.oprf import Mode
from contactmatch.keys import ServerKey
from contactmatch.oprf import OprfClient, OprfServer


def _evaluate_chunk(sk: bytes, chunk: list[bytes]) -> list[bytes]:
    return oprf.blind_evaluate(sk, chunk, Mode.OPRF, workers=1)[0]


def main() -> int:
    args = parse_args(
        __doc__.splitlines()[0],
        n=(int, 8192, "blinded elements per batch (and registered numbers)"),
        repeat=(int, 5, "rounds; each figure is the best round"),
    )
    n = 64 if args.quick else args.n
    repeat = 1 if args.quick else args.repeat
    cores = available_cores()

    numbers = [f"+1202{i:07d}" for i in range(n)]
    inputs = [x.encode() for x in numbers]
    registered = numbers[::2]

    # contactmatch fixtures
    key = ServerKey.generate(Mode.OPRF)
    vkey = ServerKey.generate(Mode.VOPRF)
    sk, vsk = key.private_bytes(), vkey.private_bytes()
    client = OprfClient(Mode.OPRF)
    vserver = OprfServer(vkey)
    vclient = OprfClient(Mode.VOPRF, public_keys=vserver.public_keys())
    state, blinded = client.blind(inputs)
    evaluation = OprfServer(key).evaluate_batch(blinded)
    vstate, vblinded = vclient.blind(inputs)
    vevaluation = vserver.evaluate_batch(vblinded)
    server_1 = OprfServer(key, workers=1)
    server_all = OprfServer(key, workers=None)

    # OpenMined PSI fixtures (ECDH over P-256, reveal_intersection=True)
    om_server = psi.server.CreateWithNewKey(True)
    om_client = psi.client.CreateWithNewKey(True)
    om_request = om_client.CreateRequest(numbers)
    om_setup = om_server.CreateSetupMessage(1e-9, n, registered, psi.DataStructure.RAW)
    om_response = om_server.ProcessRequest(om_request)

    procs = ProcessPoolExecutor(max_workers=cores)
    bounds = [(n * i // cores, n * (i + 1) // cores) for i in range(cores)]

    def process_pool() -> list[bytes]:
        futures = [procs.submit(_evaluate_chunk, sk, blinded[lo:hi]) for lo, hi in bounds]
        return [e for f in futures for e in f.result()]

    def floor() -> None:
        mult = rbcl.crypto_scalarmult_ristretto255
        for e in blinded:
            mult(sk, e)

    def client_oprf() -> None:
        st, _ = client.blind(inputs)
        # finalize against the evaluation of the fixture batch: same cost, the check is ours
        client.finalize(st, evaluation)

    def client_voprf() -> None:
        vclient.blind(inputs)
        vclient.finalize(vstate, vevaluation)

    def om_client_side() -> None:
        om_client.CreateRequest(numbers)
        om_client.GetIntersection(om_setup, om_response)

    def precompute_1() -> None:
        for x in inputs:
            oprf.evaluate(sk, x, Mode.OPRF)

    cands: list[tuple[str, str, str, int, Callable[[], object]]] = [
        ("server", "floor", "floor: bare rbcl scalarmult loop", 1, floor),
        ("server", "cm1", "blind_evaluate OPRF w=1", 1,
         lambda: oprf.blind_evaluate(sk, blinded, Mode.OPRF, workers=1)),
        ("server", "cmall", "blind_evaluate OPRF threads", cores,
         lambda: oprf.blind_evaluate(sk, blinded, Mode.OPRF)),
        ("server", "cmproc", "blind_evaluate OPRF processes", cores, process_pool),
        ("server", "v1", "blind_evaluate VOPRF w=1", 1,
         lambda: oprf.blind_evaluate(vsk, vblinded, Mode.VOPRF, workers=1)),
        ("server", "vall", "blind_evaluate VOPRF threads", cores,
         lambda: oprf.blind_evaluate(vsk, vblinded, Mode.VOPRF)),
        ("server", "om", "OpenMined ProcessRequest", 1,
         lambda: om_server.ProcessRequest(om_request)),
        ("client", "c1", "OprfClient OPRF blind+finalize", 1, client_oprf),
        ("client", "cv1", "OprfClient VOPRF blind+finalize", 1, client_voprf),
        ("client", "omc", "OpenMined CreateRequest+GetIntersection", 1, om_client_side),
        ("precompute", "p1", "evaluate per number w=1", 1, precompute_1),
        ("precompute", "pall", "evaluate_tokens threads", cores,
         lambda: server_all.evaluate_tokens(inputs)),
        ("precompute", "omp", "OpenMined CreateSetupMessage", 1,
         lambda: om_server.CreateSetupMessage(1e-9, n, numbers, psi.DataStructure.RAW)),
    ]  # fmt: skip

    # Sanity before timing: the compared paths compute the same thing.
    assert oprf.blind_evaluate(sk, blinded, Mode.OPRF, workers=1)[0] == process_pool()
    assert client.finalize(state, evaluation) == server_1.evaluate_tokens(inputs)
    for _, _, _, _, fn in cands:  # warm-up: pools started, caches filled
        fn()

    load_start = os.getloadavg()[0]
    best = {c[1]: float("inf") for c in cands}
    with progress("bench_oprf rounds", repeat * len(cands)) as advance:
        for _ in range(repeat):
            for _, tag, _, _, fn in cands:
                t0 = time.perf_counter()
                fn()
                best[tag] = min(best[tag], time.perf_counter() - t0)
                advance(1)
    procs.shutdown()
    us = {tag: t / n * 1e6 for tag, t in best.items()}

    report = Report(
        "bench_oprf",
        args,
        title=(
            "OPRF cost: microseconds per element, contactmatch vs libsodium floor and "
            f"OpenMined PSI\n(batches of {n:,} elements, best of {repeat}, {cores} cores)"
        ),
    )
    report.params = {
        "elements": n,
        "repeat": repeat,
        "cores": cores,
        "quick": bool(args.quick),
        # Shared machine: the load during the run says how far to trust the all-core rows.
        "loadavg_1m_start": round(load_start, 2),
        "loadavg_1m_end": round(os.getloadavg()[0], 2),
    }
    for group, tag, label, c, _ in cands:
        report.row(
            workload=group,
            variant=label,
            cores=c,
            us_per_elem=round(us[tag], 2),
            elems_per_s=round(1e6 / us[tag]),
            vs_floor=round(us[tag] / us["floor"], 3),
        )
    report.goal("server workers=1 / floor (OPRF)", us["cm1"] / us["floor"], 1.10, at_least=False)
    report.goal("OpenMined ProcessRequest / cm workers=1", us["om"] / us["cm1"], 1.3, at_least=True)
    report.goal(
        "OpenMined ProcessRequest / cm all cores", us["om"] / us["cmall"], 2.5, at_least=True
    )
    report.goal("OpenMined client / cm client (1 core)", us["omc"] / us["c1"], 1.3, at_least=True)
    report.goal("OpenMined setup / cm evaluate (1 core)", us["omp"] / us["p1"], 1.3, at_least=True)
    report.goal(
        "OpenMined setup / cm evaluate_tokens (all)", us["omp"] / us["pall"], 2.5, at_least=True
    )
    report.note(
        f"Thread pool vs process pool for blind_evaluate on {cores} cores: "
        f"{us['cmall']:.1f} vs {us['cmproc']:.1f} us/element "
        f"(threads {us['cmproc'] / us['cmall']:.2f}x the speed of processes)."
    )
    report.note(
        f"VOPRF costs {us['v1'] / us['cm1']:.2f}x OPRF on the server (one core) and "
        f"{us['cv1'] / us['c1']:.2f}x on the client: the batched DLEQ proof needs one more "
        "scalar multiplication and point addition per element (two of each to verify)."
    )
    if args.quick:
        report.note("--quick: tiny workload, a smoke test; the figures are not meaningful.")

    def plot(ax: Any) -> None:
        labels = [f"{g}: {lbl}" for g, _, lbl, _, _ in cands][::-1]
        values = [us[tag] for _, tag, _, _, _ in cands][::-1]
        colors = ["tab:gray" if "OpenMined" in lbl else "tab:blue" for lbl in labels]
        ax.barh(labels, values, color=colors)
        ax.set_xlabel("microseconds per element (lower is better)")
        ax.tick_params(axis="y", labelsize=7)

    return report.finish(plot)


if __name__ == "__main__":
    raise SystemExit(main())
