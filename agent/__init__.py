"""gatewaylb: a per-node agent that turns Gateway API objects into kernel state."""

__version__ = "0.1.0"
