"""The L7 worker: HTTP, HTTPS, TLS and gRPC listeners served by HAProxy 2.6.

- `render.render(listeners, run_dir)` (pure) turns the L7 listeners of a
  DesiredState into one complete HAProxy configuration plus the files it needs
  (certificate PEMs, crt-lists), and a list of `Problem`s: the (route, rule,
  reason) left out because a value could not be represented safely or the
  route is over the configuration's `Budget` (ACLs, servers, bytes: what keeps
  `haproxy -c` near a second).  Escaping rules are in `escape`; routing
  semantics in `render`'s docstring.  The parts it assembles, all pure:
  - `sections`: a section, its text helpers, and the global, defaults and
    health sections;
  - `acls`: anonymous ACLs, hostname matching, listener selection, the
    weighted choice of a backend;
  - `http_frontend`: an HTTP(S) frontend's selection of a route entry, its
    match conditions, actions and backend choice; `http_filters`: the
    filters (header modifiers, rewrites, redirects, CORS) and durations;
  - `tls_frontend`: a TLS frontend's SNI routing (Passthrough, Terminate)
    and the hand-over of a port serving both modes;
  - `backends`: backend sections, their names, servers and TLS to backends;
  - `certificates`: certificate, CA and crt-list files, client verification;
  - `budget`: the `Budget`, what each route costs, and which routes are
    left out when over it.
- `ports`: the listeners HAProxy could not bind (a port another process of the
  node holds), found by binding them from the agent before a reload.
- `reconciler.problem_failures` (pure) turns the Problems into Failures, which
  `agent.feedback` folds into the StatusReport.
- `addresses.VIPAddresses`: the L7 VIPs as host addresses on `lo` (below).
- `worker.ProxyWorker(run_dir).apply(listeners) -> ApplyResult` runs HAProxy in
  master-worker mode under `run_dir` (never the system service): pre-check the
  ports, render, `haproxy -c` the candidate, replace atomically, `reload`
  through the master socket; a refused candidate leaves the previous
  configuration in force and the refused routes are isolated and reported; a
  refused reload is rolled back and not retried with the same input.
  `ensure_running()` restarts a dead master with back-off, a running master
  found through the pidfile and its socket is adopted, `stop()` cleans up.
  Reloads drop nothing: listening sockets pass to the new worker (`expose-fd
  listeners`), old workers close idle keep-alive connections only after
  answering the request in flight (`option idle-close-on-response`), and give
  up after `hard-stop-after`.

Kernel steering (how a packet for VIP:port reaches HAProxy): the VIPs of L7
listeners are local host addresses of the node (/32, /128 on `lo`, marked with
their own address protocol; `addresses.VIPAddresses` adopts and removes only
its own) and HAProxy binds VIP:port directly.  No redirect
rule, no TPROXY, no extra hop: the client's packets are delivered locally with
their original addresses, so HAProxy sees the real client address and the
original destination.  L4 frontends that share a VIP keep working because the
L4 dataplanes (nftables, eBPF) rewrite their packets in prerouting/output, before
the local-delivery decision; only L7 ports reach the local socket.  Chosen over
DNAT/REDIRECT to a loopback port (which hides the destination VIP from the
proxy, needs conntrack for every L7 flow, and makes one bind serve every VIP)
and over `ip_nonlocal_bind` (which would make HAProxy accept the bind but the
kernel still would not deliver the packets locally).  The caller reconciles
the addresses before the first apply; the agent loop owns that ordering.
"""

from agent.proxy.render import Problem, RenderedConfig, render
from agent.proxy.worker import ApplyResult, ProxyWorker

__all__ = ["ApplyResult", "Problem", "ProxyWorker", "RenderedConfig", "render"]
