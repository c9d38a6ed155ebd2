"""Pure decisions: capacity plan, rendering, router config, scaling, burst, reconcile decisions.

Imports only `api` (and the router's config model); no I/O frameworks."""
