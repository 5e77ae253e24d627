"""Smoke test of the environment that scripts/setup.sh builds.

It fails early and plainly when the venv was made with the wrong interpreter or
without Debian's system site packages, instead of letting the dataplane tests
fail later with an obscure import error.
"""

import importlib
import os

DEBIAN_DIST_PACKAGES = "/usr/lib/python3/dist-packages"


def test_agent_and_debian_kernel_bindings_import() -> None:
    agent = importlib.import_module("agent")
    assert isinstance(agent.__version__, str)

    # Debian's python3-bpfcc and python3-nftables, not the unrelated PyPI
    # projects of the same names, which would import but lack these classes.
    bcc = importlib.import_module("bcc")
    nftables = importlib.import_module("nftables")
    for module in (bcc, nftables):
        assert module.__file__ is not None
        assert module.__file__.startswith(DEBIAN_DIST_PACKAGES), module.__file__
    assert hasattr(bcc, "BPF")

    # libnftables needs CAP_NET_ADMIN to read the ruleset; without root only
    # the imports above are checked.
    if os.geteuid() == 0:
        nft = nftables.Nftables()
        rc, _output, error = nft.json_cmd({"nftables": [{"list": {"tables": {}}}]})
        assert rc == 0, error
