"""The router's API with real processes: routing by each rule kind, endpoints, attribution, error statuses.

Clients are the official `openai` SDK (retries off, so every status is seen as sent) and plain httpx for
requests the SDK would not send (malformed JSON, oversized bodies).
"""

from __future__ import annotations

import httpx
import openai
import pytest
from router_bed import FakeUpstream, Router, base_config, free_port_url

pytestmark = pytest.mark.integration


def client(router: Router, key: str = "none") -> openai.OpenAI:
    return openai.OpenAI(base_url=router.base_url, api_key=key, max_retries=0, timeout=30)


def ask(router: Router, model: str = "auto", content: str = "hello", **kwargs: object):  # type: ignore[no-untyped-def]
    raw = client(router).chat.completions.with_raw_response.create(
        model=model, messages=[{"role": "user", "content": content}], **kwargs
    )
    return raw.headers["x-tiered-tier"], raw.headers["x-tiered-reason"], raw.parse()


@pytest.mark.parametrize(
    ("content", "extra", "tier", "reason"),
    [
        ("hello", {}, "small", "default"),
        ("hello", {"extra_headers": {"x-tiered-task": "extraction"}}, "edge", "rule:extract"),
        ("hello", {"metadata": {"task": "extraction"}}, "edge", "rule:extract"),
        ("word " * 60, {}, "big", "rule:long"),
        ("hi", {"extra_headers": {"x-tiered-task": "chat"}}, "edge", "rule:tiny"),
        ("a proof of the theorem", {}, "big", "rule:math"),
        ("think step by step", {}, "big", "rule:steps"),
    ],
    ids=["default", "task-header", "task-metadata", "min-tokens", "max-tokens", "keyword", "regex"],
)
def test_auto_routes_by_each_rule_kind(
    router_reset: Router,
    router_fakes: dict[str, FakeUpstream],
    content: str,
    extra: dict[str, object],
    tier: str,
    reason: str,
) -> None:
    served, why, completion = ask(router_reset, content=content, **extra)
    assert (served, why) == (tier, reason)
    assert completion.choices[0].message.content
    assert router_fakes[tier].requests == 1
    sent = router_fakes[tier].stats()["bodies"][0]
    assert sent["model"] == ("small-model" if tier == "small" else tier)  # the tier's upstream model name


def test_explicit_tier_and_legacy_completions(router_reset: Router) -> None:
    assert ask(router_reset, model="edge", content="a theorem")[:2] == ("edge", "explicit")
    raw = client(router_reset).completions.with_raw_response.create(model="auto", prompt="step by step")
    assert (raw.headers["x-tiered-tier"], raw.headers["x-tiered-reason"]) == ("big", "rule:steps")
    assert raw.parse().choices[0].text


def test_models_health_ready_metrics_openapi(router_reset: Router) -> None:
    assert [m.id for m in client(router_reset).models.list()] == ["small", "edge", "big", "auto"]
    http = router_reset.http
    assert http.get("/healthz").status_code == 200
    assert http.get("/readyz").json() == {"status": "ready"}
    assert router_reset.metric("tiered_router_breaker_state", tier="small") == 0
    spec = http.get("/openapi.json").json()
    assert spec["components"]["schemas"]["ChatRequest"]["properties"]["model"]["enum"] == [
        "small",
        "edge",
        "big",
        "auto",
    ]


def test_team_and_feature_from_headers_reach_metrics_and_costs(router_reset: Router) -> None:
    ask(router_reset, extra_headers={"x-tiered-team": "search", "x-tiered-feature": "autocomplete"})
    ask(router_reset, metadata={"team": "search", "feature": "summary"})
    assert (
        router_reset.metric(
            "tiered_router_requests_total",
            team="search",
            feature="autocomplete",
            tier="small",
            reason="default",
            status="200",
        )
        == 1
    )
    rows = router_reset.http.get("/v1/tiered/costs").json()["by_tier_team_feature"]
    assert {(r["team"], r["feature"]) for r in rows} >= {("search", "autocomplete"), ("search", "summary")}


def test_malformed_json_400(router_reset: Router) -> None:
    for body in (
        b"{not json",
        b"[1, 2]",
        b'{"model": 5, "messages": []}',
        b'{"model": "auto", "messages": "hi"}',
        b'{"model": "auto", "messages": [{}], "stream": 1}',
    ):
        response = router_reset.http.post(
            "/v1/chat/completions", content=body, headers={"content-type": "application/json"}
        )
        assert response.status_code == 400, body
        assert response.json()["error"]["type"] == "invalid_request_error"


def test_unknown_model_404(router_reset: Router) -> None:
    with pytest.raises(openai.NotFoundError) as caught:
        ask(router_reset, model="gpt-nonexistent")
    assert caught.value.body["code"] == "model_not_found"  # type: ignore[index]


def test_body_over_limit_413(router_reset: Router, router_fakes: dict[str, FakeUpstream]) -> None:
    router_reset.apply(base_config(router_fakes, maxBodyBytes=2048))
    with pytest.raises(openai.APIStatusError) as caught:
        ask(router_reset, content="x" * 4096)
    assert caught.value.status_code == 413
    chunked = router_reset.http.post("/v1/chat/completions", content=iter([b"{" + b" " * 4096 + b"}"]))
    assert chunked.status_code == 413
    assert router_fakes["small"].requests == 0


def test_all_attempts_fail_502_with_retry_after(router_reset: Router, router_fakes: dict[str, FakeUpstream]) -> None:
    for fake in router_fakes.values():
        fake.mode("fail", status=500, times=1)
    with pytest.raises(openai.InternalServerError) as caught:
        ask(router_reset)
    assert caught.value.status_code == 502
    assert caught.value.response.headers["retry-after"].isdigit()
    assert [f.requests for f in router_fakes.values()] == [1, 1, 1]  # small, then edge, then big


def test_rate_limited_everywhere_503_with_retry_after(
    router_reset: Router, router_fakes: dict[str, FakeUpstream]
) -> None:
    for fake in router_fakes.values():
        fake.mode("429", times=1)
    with pytest.raises(openai.APIStatusError) as caught:
        ask(router_reset)
    assert caught.value.status_code == 503
    assert caught.value.response.headers["retry-after"].isdigit()


def test_api_keys_401_and_team_from_key(router_fakes: dict[str, FakeUpstream], tmp_path) -> None:  # type: ignore[no-untyped-def]
    from router_bed import router
    from tiered_router.auth import hash_key

    keys = tmp_path / "keys.yaml"
    keys.write_text(
        f"keys:\n  - {{sha256: {hash_key('sk-search')}, team: search, feature: web}}\n"
        "  - {key: sk-legal, team: legal}\n"
    )
    with router(base_config(router_fakes, apiKeysFile=str(keys)), tmp_path) as rt:
        assert "OPEN" not in rt.log.read_text()
        for key in ("none", "sk-wrong"):
            with pytest.raises(openai.AuthenticationError):
                client(rt, key).chat.completions.create(model="auto", messages=[{"role": "user", "content": "x"}])
        with pytest.raises(openai.AuthenticationError):
            client(rt, "sk-wrong").models.list()
        # The key's team wins over a header claiming another team.
        raw = client(rt, "sk-search").chat.completions.with_raw_response.create(
            model="auto",
            messages=[{"role": "user", "content": "x"}],
            extra_headers={"x-tiered-team": "legal"},
        )
        assert raw.status_code == 200
        assert rt.metric("tiered_router_requests_total", team="search", feature="web") == 1
        # A private team's key keeps its requests local even when asking for the external tier.
        raw = client(rt, "sk-legal").chat.completions.with_raw_response.create(
            model="big", messages=[{"role": "user", "content": "x"}]
        )
        assert (raw.headers["x-tiered-tier"], raw.headers["x-tiered-reason"]) == ("small", "private")
        assert httpx.get(f"{rt.url}/v1/tiered/costs").status_code == 401
        # The key file is reloaded when it changes, like the config.
        keys.write_text("keys:\n  - {key: sk-new, team: new}\n")
        rt.wait_metric("tiered_router_config_reloads_total", 1)
        assert client(rt, "sk-new").models.list().data
        with pytest.raises(openai.AuthenticationError):
            client(rt, "sk-legal").models.list()


def test_open_router_logs_loudly(router_reset: Router) -> None:
    assert "NO API KEYS CONFIGURED" in router_reset.log.read_text()


def test_connect_error_falls_back(router_reset: Router, router_fakes: dict[str, FakeUpstream]) -> None:
    config = base_config(router_fakes)
    config["tiers"][0]["baseURL"] = free_port_url()
    router_reset.apply(config)
    assert ask(router_reset)[:2] == ("edge", "default")
    assert router_reset.metric("tiered_router_fallbacks_total", from_tier="small", to_tier="edge", cause="connect") == 1


def test_upstream_client_errors_pass_through_without_fallback(
    router_reset: Router, router_fakes: dict[str, FakeUpstream]
) -> None:
    router_fakes["small"].mode("fail", status=422, times=1)
    with pytest.raises(openai.UnprocessableEntityError) as caught:
        ask(router_reset)
    assert caught.value.response.headers["x-tiered-tier"] == "small"
    assert router_fakes["edge"].requests == 0
