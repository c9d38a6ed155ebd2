"""Real local processes for tests, benchmarks and `make demo` (Prometheus, a DCGM-named exporter).

Every helper starts its process on loopback, is a context manager, and stops what it started. Not imported
by the operator itself.
"""
