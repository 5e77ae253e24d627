"""Everything that speaks to the Kubernetes API server.

- client.py: the HTTP client (requests, watch streams, API errors).
- source.py: list+watch of the kinds translate needs, into Snapshots
  (KubeSource), and where each object's status lives (StatusTarget).
- status.py: the status subresource patches (KubeStatusWriter).
- events.py: Warning Events for what one node could not do.
- election.py: the Lease that picks the one agent that writes status.

It reads the cluster and writes back only status, Events and the Lease.  It
must never touch the kernel or the proxy: nothing here imports agent.dataplane,
agent.proxy or agent.announce; the daemon wires the two sides together.
"""
