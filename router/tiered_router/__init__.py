"""tiered_router: the OpenAI-compatible router in front of the tiers.

Pure core: `config` (RouterConfig), `policy` (choose_tier), `cost` (prices, usage, ledger). Control data:
`state` (RouterState: config snapshot, file watching), `breaker`, `forward.InFlight`. Edges: `app` (aiohttp
handlers, which only read a snapshot), `forward` (upstream pool and fallback), `metrics`, `auth`, `openapi`,
`server` (CLI). The test double for upstreams is `tiered_devstack.fake_upstream`. See docs/router.md.
"""
