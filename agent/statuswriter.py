"""Status writers: the StatusReport back to where the objects came from.

Each is a reconciler (agent/reconcile.py) of a `StatusView`; the agent loop
runs them beside the sync, latest view first.

- FileStatusWriter (standalone): the `translate` document, written atomically.
- KubeStatusWriter (agent/kube/status.py): the status subresource of each
  object, through the API server.

This module owns what every status writer shares and knows nothing of
Kubernetes: it must never import agent.kube, which builds on it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from agent.model.meta import Key as GatewayKey
from agent.model.snapshot import Snapshot
from agent.osutil import write_atomically
from agent.output import translation_document
from agent.reconcile import Outcome, Reconciler
from agent.translate import Translation


@dataclass(frozen=True, slots=True)
class StatusView:
    """What a status writer converges to: the translation of one snapshot, with
    what the stages could not do folded in."""

    snapshot: Snapshot
    result: Translation


# A status writer is a reconciler of StatusView (agent/reconcile.py).
StatusWriter = Reconciler[StatusView]


class FileStatusWriter:
    name = "status"

    def __init__(self, path: Path) -> None:
        self.path = path
        self._last: str | None = None

    def reconcile(self, desired: StatusView) -> Outcome:
        doc = translation_document(desired.snapshot, desired.result)
        # Compact: at 10k routes the indented form is 27 MB and a second to write.
        text = json.dumps(doc, ensure_ascii=False, separators=(",", ":")) + "\n"
        if text == self._last:
            return Outcome()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        write_atomically(self.path, text.encode())
        self._last = text
        return Outcome(changed=1)


def addresses_from_status_file(path: Path) -> dict[GatewayKey, tuple[str, ...]]:
    """The Gateway addresses a previous run wrote: a standalone agent's record
    of what the pools gave (Kubernetes keeps it in status.addresses).  A
    missing or damaged file is an empty record, never an error."""
    try:
        doc = json.loads(path.read_text())
        objects = doc["objects"]
    except (OSError, ValueError, KeyError, TypeError):
        return {}
    out: dict[GatewayKey, tuple[str, ...]] = {}
    for obj in objects if isinstance(objects, list) else ():
        if not isinstance(obj, dict) or obj.get("kind") != "Gateway":
            continue
        meta, status = obj.get("metadata"), obj.get("status")
        if not isinstance(meta, dict) or not isinstance(status, dict):
            continue
        values = [
            str(a["value"])
            for a in status.get("addresses") or ()
            if isinstance(a, dict) and isinstance(a.get("value"), str)
        ]
        if values and isinstance(meta.get("name"), str):
            out[GatewayKey(str(meta.get("namespace", "")), meta["name"])] = tuple(values)
    return out
