"""Polling for a condition in a lab: what the e2e tests and the one-node
cluster's tests wait with."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def wait_for(
    pred: Callable[[], T], timeout: float, what: str = "condition", step: float = 0.1
) -> T:
    """Calls `pred` every `step` seconds until it returns something truthy,
    and returns that; AssertionError naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = pred()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout}s")
        time.sleep(step)
