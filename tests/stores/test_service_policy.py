"""The conftest rule: unreachable services skip tests locally and fail them under CI=true."""

from __future__ import annotations

from tests.services import service_verdict, tool_verdict


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


def test_missing_cluster_binary_skips_locally_and_fails_under_ci() -> None:
    def _none(_name: str) -> str | None:
        return None

    assert tool_verdict(["redis_cluster"], lambda n: f"/usr/bin/{n}", ci=True) is None
    local = tool_verdict(["redis_cluster"], _none, ci=False)
    assert local is not None
    assert local[0] == "skip"
    assert "redis-server" in local[1]
    ci = tool_verdict(["redis_cluster"], _none, ci=True)
    assert ci is not None
    assert ci[0] == "fail"
