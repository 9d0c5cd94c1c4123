"""Argument types and options shared by several commands."""

from __future__ import annotations

import argparse

__all__ = ["add_cluster_argument", "port_number", "positive_int"]


def port_number(text: str) -> int:
    """An argparse type for TCP ports: a bad one is a usage error (exit 2 with usage)."""
    try:
        port = int(text, 10)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}") from None
    if not 1 <= port <= 65_535:
        raise argparse.ArgumentTypeError(f"port must be in 1-65535, not {port}")
    return port


def positive_int(text: str) -> int:
    """An argparse type for counts and sizes that must be at least 1."""
    try:
        value = int(text, 10)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def add_cluster_argument(p: argparse.ArgumentParser) -> None:
    """The ``--cluster`` option of the bulk commands (Dask, or this process)."""
    p.add_argument(
        "--cluster",
        default=None,
        metavar="ADDRESS|local:N",
        help="run on a Dask distributed cluster: a scheduler address (tcp://host:8786) or "
        "local:N for N local worker processes (needs contactmatch[cluster]); default: this "
        "process, every core",
    )
