"""`python -m agent` is the `gatewaylb` command."""

from agent.cli import main

main()
