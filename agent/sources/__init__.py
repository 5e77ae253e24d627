"""Where the objects come from when they do not come from the API server: the
Source protocol the daemon reads (`base.py`) and the watched manifest
directory (`files.py`, `manifests.py`, with inotify, the last good content of
each file and hardened reads).  The Kubernetes source is agent/kube.  Never
touches the kernel, the proxy or status."""
