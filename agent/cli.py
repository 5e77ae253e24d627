"""The `gatewaylb` command line (also `python -m agent`).

Only argument handling and output formatting live here; every command delegates
to the module that owns the work.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click
import yaml

from agent import __version__
from agent.model.snapshot import Snapshot
from agent.sources.files import ManifestError, load_directory
from agent.translate import DEFAULT_CONTROLLER_NAME, Translation, translate


def translation_document(snapshot: Snapshot, result: Translation) -> dict[str, Any]:
    """The document `translate` prints and `run --status-file` writes."""
    doc: dict[str, Any] = {
        "objects": result.status.to_list(),
        "desired": result.desired.to_dict(),
    }
    if snapshot.problems:
        doc["problems"] = [str(p) for p in snapshot.problems]
    return doc


def dump(doc: dict[str, Any], output: str) -> str:
    if output == "yaml":
        return yaml.safe_dump(doc, sort_keys=False, allow_unicode=True)
    return json.dumps(doc, indent=2, ensure_ascii=False) + "\n"


@click.group(
    context_settings={"help_option_names": ["-h", "--help"], "auto_envvar_prefix": "GATEWAYLB"}
)
def main() -> None:
    """gatewaylb: a kernel-native Kubernetes Gateway API implementation."""


@main.command("translate")
@click.option(
    "--manifests",
    "manifests",
    required=True,
    type=click.Path(path_type=Path),
    help="Directory of Gateway API and core manifests (*.yaml, *.yml, *.json).",
)
@click.option(
    "-o", "--output", type=click.Choice(["json", "yaml"]), default="json", show_default=True
)
@click.option("--controller-name", default=DEFAULT_CONTROLLER_NAME, show_default=True)
def translate_command(manifests: Path, output: str, controller_name: str) -> None:
    """Print the status and desired state computed from manifests; change nothing."""
    try:
        snapshot = load_directory(manifests)
    except ManifestError as exc:
        click.echo(str(exc), err=True)
        sys.exit(2)
    for problem in snapshot.problems:
        click.echo(f"warning: {problem}", err=True)
    result = translate(snapshot, controller_name)
    click.echo(dump(translation_document(snapshot, result), output), nl=False)


@main.command("version")
def version_command() -> None:
    """Version and the dataplane modes this kernel supports."""
    click.echo(f"gatewaylb {__version__}")
