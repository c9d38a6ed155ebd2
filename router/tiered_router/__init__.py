"""tiered_router: the OpenAI-compatible router in front of the tiers.

Pure core: `config` (RouterConfig), `policy` (choose_tier), `cost` (prices, usage, ledger). Control data:
`breaker`, `forward.InFlight`, the snapshot in `app.RouterState`. Edges: `app` (aiohttp server), `forward`
(upstream pool and fallback), `metrics`, `auth`, `openapi`, `server` (CLI). `fake_upstream` is a test and
benchmark double. See docs/router.md.
"""
