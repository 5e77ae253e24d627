"""One node's BGPAnnouncer in its own process, for tests/e2e/test_bgp_announce_e2e.py.

`python bgp_node.py NODE RUN_DIR` runs in the network namespace it was started
in (the test starts it with nsenter) and answers one JSON line per request line
on stdin, so the test can drive it and kill it like a dead agent:

    {"op": "apply", "announcements": [{"vip", "ready", "gateways"}], "settings": {...}}
    {"op": "status"}                  -> peers, advertised, problems, pid
    {"op": "close", "withdraw": bool}

Owns nothing but its announcer.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Any

from agent.announce.bgp.announcer import BGPAnnouncer
from agent.state import Announcement, BGPPeer, BGPSettings


def settings_from(data: dict[str, Any]) -> BGPSettings:
    peers = tuple(BGPPeer(**p) for p in data.get("peers", ()))
    rest = {k: v for k, v in data.items() if k != "peers"}
    return BGPSettings(peers=peers, **rest)


def handle(announcer: BGPAnnouncer, req: dict[str, Any]) -> dict[str, Any]:
    op = req["op"]
    if op == "apply":
        anns = [
            Announcement(a["vip"], a["ready"], tuple(a.get("gateways", ())))
            for a in req["announcements"]
        ]
        announcer.apply(anns, settings_from(req["settings"]))
        return {"problems": list(announcer.problems())}
    if op == "status":
        return {
            "peers": announcer.peer_states(),
            "advertised": sorted(announcer.advertised()),
            "problems": list(announcer.problems()),
            "pid": announcer.daemon_pid(),
        }
    if op == "close":
        announcer.close(withdraw=bool(req["withdraw"]))
        return {}
    return {"error": f"unknown op {op!r}"}


def main() -> int:
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(message)s")
    announcer = BGPAnnouncer(sys.argv[1], Path(sys.argv[2]))
    for line in sys.stdin:
        print(json.dumps(handle(announcer, json.loads(line))), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
