"""make conformance: the upstream Gateway API conformance suite (v1.6.1,
unmodified, built by scripts/build-controlplane.sh) against gatewaylb
deployed as its DaemonSet on the one-node cluster.

The suite runs in the lab's client namespace, outside the node: it dials the
Gateways' addresses across the node's interface, as a client on the network
would, and reaches the API server through a relay on that namespace's
loopback.  Features come from the GatewayClass's status.supportedFeatures
(no -supported-features).  The report goes where upstream keeps published
reports: conformance/reports/v1.6.1/gatewaylb-<version>.yaml.

    python tests/k8s/run_conformance.py                      # every profile
    python tests/k8s/run_conformance.py --run-test HTTPRouteSimpleSameNamespace
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from cluster import Cluster
from controlplane import BIN_DIR, REPO
from relay import LoopbackRelay

from agent import __version__

PROFILES = ("GATEWAY-HTTP", "GATEWAY-TLS", "GATEWAY-GRPC", "GATEWAY-TCP", "GATEWAY-UDP")
GATEWAY_CLASS = "gatewaylb-conformance"
MANIFESTS = REPO / "tests" / "k8s" / "conformance" / "gatewayclass.yaml"
REPORT = REPO / "conformance" / "reports" / "v1.6.1" / f"gatewaylb-{__version__}.yaml"
# An address of the `static` pool (autoAssign: false) and one gatewaylb
# refuses (the node's own address).
USABLE_ADDRESS = "10.99.0.200"
UNUSABLE_ADDRESS = "10.10.0.1"


def suite_argv(args: argparse.Namespace, report: Path) -> list[str]:
    argv = [
        str(BIN_DIR / "conformance.test"),
        "-test.run", "^TestConformance$",
        "-test.v",
        "-test.timeout", args.timeout,
        f"-gateway-class={GATEWAY_CLASS}",
        f"-conformance-profiles={','.join(args.profiles)}",
        f"-report-output={report}",
        "-organization=gatewaylb",
        "-project=gatewaylb",
        "-url=https://github.com/gatewaylb/gatewaylb",
        f"-version={__version__}",
        "-contact=https://github.com/gatewaylb/gatewaylb/issues",
        f"-usable-address={USABLE_ADDRESS}",
        f"-unusable-address={UNUSABLE_ADDRESS}",
        "-allow-crds-mismatch=false",
    ]  # fmt: skip
    if args.run_test:
        argv.append(f"-run-test={args.run_test}")
    if args.skip_tests:
        argv.append(f"-skip-tests={args.skip_tests}")
    if args.debug:
        argv.append("-debug")
    return argv


def wait_agent_ready(c: Cluster, timeout: float = 120) -> None:
    c.kubectl("-n", "gatewaylb-system", "rollout", "status", "daemonset/gatewaylb",
              f"--timeout={int(timeout)}s", timeout=timeout + 10)  # fmt: skip


def run(args: argparse.Namespace) -> int:
    report = Path(args.report)
    report.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    with Cluster() as c:
        print(f"conformance: cluster up in {c.timings['ready']:.1f} s", flush=True)
        c.kubectl("apply", "-k", str(REPO / "deploy" / "daemonset"))
        wait_agent_ready(c)
        c.kubectl("apply", "-f", str(MANIFESTS))
        # The suite reads the features from the GatewayClass's status once, at start.
        c.kubectl("wait", f"gatewayclass/{GATEWAY_CLASS}", "--for=condition=Accepted",
                  "--timeout=60s", timeout=70)  # fmt: skip
        features = c.kubectl(
            "get", f"gatewayclass/{GATEWAY_CLASS}",
            "-o", "jsonpath={.status.supportedFeatures[*].name}",
        ).split()  # fmt: skip
        print(f"conformance: {GATEWAY_CLASS} supports {len(features)} features", flush=True)
        relay = LoopbackRelay(c.lab, lambda: c.cp.port, where=c.lab.client)
        try:
            kubeconfig = c.workdir / "client.kubeconfig"
            kubeconfig.write_text(
                c.kubeconfig.read_text().replace(c.cp.server, f"https://127.0.0.1:{relay.port}")
            )
            env = {**os.environ, "KUBECONFIG": str(kubeconfig)}
            argv = ["nsenter", f"--net=/run/netns/{c.client_ns}", "--", *suite_argv(args, report)]
            print(f"conformance: {' '.join(argv)}", flush=True)
            t1 = time.monotonic()
            with open(args.log, "w", encoding="utf-8") as log:
                proc = subprocess.Popen(
                    argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
                )
                assert proc.stdout is not None
                for line in proc.stdout:
                    log.write(line)
                    # Quiet: each test's result (top-level and failed subtests) only.
                    if (
                        not args.quiet
                        or line.lstrip().startswith(("--- FAIL", "FAIL", "ok"))
                        or (
                            line.startswith(("--- ", "    --- PASS: TestConformance/", "PASS"))
                            and line.count("/") <= 1
                        )
                    ):
                        sys.stdout.write(line)
                rc = proc.wait()
            suite = time.monotonic() - t1
            if args.agent_log:
                Path(args.agent_log).write_text(
                    c.kubectl("-n", "gatewaylb-system", "logs", "daemonset/gatewaylb", check=False)
                )
        finally:
            relay.close()
    print(
        f"conformance: suite {suite:.0f} s, total {time.monotonic() - t0:.0f} s, exit {rc}; "
        f"report {report if report.exists() else '(none written)'}; log {args.log}"
    )
    return rc


def main(argv: list[str] | None = None) -> int:
    # A stop (SIGTERM, Ctrl-C) unwinds: the cluster and its namespaces go.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--profiles", type=lambda s: s.split(","), default=list(PROFILES))
    parser.add_argument("--run-test", default="", help="one test, by its ShortName")
    parser.add_argument("--skip-tests", default="", help="comma-separated ShortNames")
    parser.add_argument("--timeout", default="90m")
    parser.add_argument("--report", default=str(REPORT))
    parser.add_argument("--log", default="/run/gatewaylb-conformance.log")
    parser.add_argument("--agent-log", default="", help="write the agent's log here at the end")
    parser.add_argument("--debug", action="store_true")
    parser.add_argument("--quiet", action="store_true", help="print only each test's result")
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
