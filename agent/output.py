"""The document `translate` prints and `run --status-file` writes.

Owns its shape (objects, desired, problems) and its JSON or YAML text.  It
never writes it anywhere: cli.py prints it, statuswriter.py writes the file.
"""

from __future__ import annotations

import json
from typing import Any

import yaml

from agent.model.snapshot import Snapshot
from agent.translate import Translation


def translation_document(snapshot: Snapshot, result: Translation) -> dict[str, Any]:
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
