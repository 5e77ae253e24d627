"""gatewaylb: a per-node agent that turns Gateway API objects into kernel state.

Owns only `__version__`: importing the package imports no submodule and touches
nothing (the command line is agent/cli.py, also `python -m agent`).
"""

__version__ = "0.1.0"
