"""kopf handlers, the autoscale loop, Kubernetes and Prometheus clients: the thin I/O around `core`."""
