"""The attack lab and research harness: the attacks a contact-discovery service is judged by.

>>> from contactmatch.lab import leakage_report, reverse_sha256, simulate_enumeration

- **Enumeration** (:mod:`~contactmatch.lab.enumeration`): scrapers with many accounts sweep
  the numbering plan through the real service under a simulated clock; what they learn each
  day is compared with the bound the quotas imply (:func:`contactmatch.ratelimit.quota_bound`).
- **A normal user** (:mod:`~contactmatch.lab.normal_user`): a person's first sync and daily
  re-syncs stay clear of the same quotas.
- **Hash reversal** (:mod:`~contactmatch.lab.reversal`): unsalted ``sha256`` tokens are read
  back by hashing the plan; keyed tokens resist.
- **What leaks** (:mod:`~contactmatch.lab.report`): every scheme's leakage and the quota bounds.
- **Scheme comparison** (:mod:`~contactmatch.lab.compare`): any scheme in-process on one
  workload, with wire bytes and CPU per side.

The lab returns reports (counts, never numbers) and takes callbacks for progress; the
``contactmatch audit`` and ``contactmatch bench`` commands render them. Candidate numbers
come from the numbering plan in ``contactmatch/data`` (:mod:`~contactmatch.lab.plan`).

Names are imported on first use (PEP 562): the simulations import the whole service, so
importing this package stays cheap, and ``contactmatch.schemes`` can re-export the harness
(``build_server``, ``run_discovery``) without an import cycle.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from contactmatch.lab.compare import (
        Comparison,
        RunReport,
        build_server,
        compare,
        run_discovery,
        workload,
    )
    from contactmatch.lab.enumeration import (
        EnumerationDay,
        EnumerationReport,
        simulate_enumeration,
    )
    from contactmatch.lab.normal_user import (
        MeteredQuotas,
        NormalUserReport,
        SyncRow,
        normal_user_check,
    )
    from contactmatch.lab.plan import NumberingPlan, load_plan
    from contactmatch.lab.report import leakage_data, leakage_report
    from contactmatch.lab.reversal import ReversalReport, reversal_trials, reverse_sha256

__all__ = [
    "Comparison",
    "EnumerationDay",
    "EnumerationReport",
    "MeteredQuotas",
    "NormalUserReport",
    "NumberingPlan",
    "ReversalReport",
    "RunReport",
    "SyncRow",
    "build_server",
    "compare",
    "leakage_data",
    "leakage_report",
    "load_plan",
    "normal_user_check",
    "reversal_trials",
    "reverse_sha256",
    "run_discovery",
    "simulate_enumeration",
    "workload",
]

_HOME = {
    "Comparison": "compare",
    "RunReport": "compare",
    "build_server": "compare",
    "compare": "compare",
    "run_discovery": "compare",
    "workload": "compare",
    "EnumerationDay": "enumeration",
    "EnumerationReport": "enumeration",
    "simulate_enumeration": "enumeration",
    "MeteredQuotas": "normal_user",
    "NormalUserReport": "normal_user",
    "SyncRow": "normal_user",
    "normal_user_check": "normal_user",
    "NumberingPlan": "plan",
    "load_plan": "plan",
    "leakage_data": "report",
    "leakage_report": "report",
    "ReversalReport": "reversal",
    "reversal_trials": "reversal",
    "reverse_sha256": "reversal",
}


def __getattr__(name: str) -> Any:
    """Import an exported name's module on first use (PEP 562)."""
    home = _HOME.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{home}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
