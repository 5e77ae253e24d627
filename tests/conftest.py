"""Root-level pytest configuration shared by every test directory.

Tests marked ``root`` need root, network namespaces and the real kernel; they are
skipped, with the reason shown, when the suite runs as an ordinary user.
"""

import os

import pytest

_NOT_ROOT_REASON = "marked 'root': needs root, network namespaces and the real kernel (run as root)"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if os.geteuid() == 0:
        return
    skip_not_root = pytest.mark.skip(reason=_NOT_ROOT_REASON)
    for item in items:
        if item.get_closest_marker("root") is not None:
            item.add_marker(skip_not_root)
