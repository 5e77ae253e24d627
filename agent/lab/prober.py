"""A steady prober: asks TCP echo and HTTP targets every interval, one JSON
line per answer on stdout, until killed.  Tests run it in the lab's client
namespace beside whatever they do to the agent, then count the failures in
a time window.

    python -m agent.lab.prober --tcp 10.99.0.10:80 --http http://10.99.0.10:8000/ --every 0.05
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import urllib.error
import urllib.request

from agent.lab.echo import ask_tcp


def probe_http(url: str, timeout: float) -> tuple[bool, str]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as answer:
            return answer.status == 200, str(answer.status)
    except urllib.error.HTTPError as exc:
        return False, str(exc.code)
    except OSError as exc:
        return False, f"error:{type(exc).__name__}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--tcp", action="append", default=[], help="HOST:PORT of an echo server")
    parser.add_argument("--http", action="append", default=[], help="URL answering 200")
    parser.add_argument("--every", type=float, default=0.05, help="seconds between rounds")
    parser.add_argument("--timeout", type=float, default=1.0)
    args = parser.parse_args(argv)
    while True:
        started = time.time()
        for target in args.tcp:
            host, _, port = target.rpartition(":")
            answer = ask_tcp(host, int(port), timeout=args.timeout)
            ok = not answer.startswith("error")
            print(json.dumps({"t": started, "target": target, "ok": ok, "answer": answer}))
        for url in args.http:
            ok, answer = probe_http(url, args.timeout)
            print(json.dumps({"t": started, "target": url, "ok": ok, "answer": answer}))
        sys.stdout.flush()
        time.sleep(max(0.0, args.every - (time.time() - started)))


if __name__ == "__main__":
    sys.exit(main())
