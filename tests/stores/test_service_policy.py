"""The conftest rule: unreachable services skip tests locally and fail them under CI=true."""

from __future__ import annotations

from tests.services import service_verdict


def _down(host: str, port: int) -> bool:
    return False


def _up(host: str, port: int) -> bool:
    return True


def test_reachable_services_run() -> None:
    assert service_verdict(["postgres", "redis"], _up, ci=True) is None
    assert service_verdict([], _down, ci=True) is None


def test_unreachable_skips_locally_with_the_address() -> None:
    verdict = service_verdict(["redis"], _down, ci=False)
    assert verdict == ("skip", "Redis is not reachable at 127.0.0.1:6379")


def test_unreachable_fails_under_ci() -> None:
    verdict = service_verdict(["postgres"], _down, ci=True)
    assert verdict is not None
    assert verdict[0] == "fail"
    assert "PostgreSQL is not reachable at 127.0.0.1:5432" in verdict[1]
