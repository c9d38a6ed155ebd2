"""Token discipline and cached-token pricing through real router and fake-upstream processes: max_tokens
clamping, context truncation, prompt-cache fields arriving intact at the upstream, and cached tokens priced
from both providers' usage shapes (JSON and streams) in the metrics and /v1/tiered/costs."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import openai
import pytest
from router_bed import FakeUpstream, Router, base_config, router
from tiered_router.discipline import message_tokens

pytestmark = pytest.mark.integration

CAP = 64
BUDGET = 60
# big: 5 $/M input, 0.5 $/M cached read, 6.25 $/M cache write, 30 $/M output.
INPUT, CACHED, WRITE, OUTPUT = 5e-6, 0.5e-6, 6.25e-6, 30e-6


def _config(up: dict[str, FakeUpstream]) -> dict[str, Any]:
    config = base_config(up)
    config["tiers"][2]["pricing"] = {"inputPerMTok": 5, "outputPerMTok": 30, "cachedInputPerMTok": 0.5,
                                     "cacheWritePerMTok": 6.25}  # fmt: skip
    config["rules"] = [
        {"name": "capped", "match": {"taskTypes": ["capped"]}, "tier": "small", "maxTokens": CAP},
        {"name": "trimmed", "match": {"taskTypes": ["agent"]}, "tier": "big", "maxContextTokens": BUDGET,
         "maxTokens": CAP},
    ]  # fmt: skip
    return config


@pytest.fixture(scope="module")
def bed(router_fakes: dict[str, FakeUpstream], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Router]:
    with router(_config(router_fakes), tmp_path_factory.mktemp("discipline")) as process:
        yield process


@pytest.fixture
def fakes(router_fakes: dict[str, FakeUpstream]) -> dict[str, FakeUpstream]:
    for fake in router_fakes.values():
        fake.reset()
    return router_fakes


def _sdk(bed: Router) -> openai.OpenAI:
    return openai.OpenAI(base_url=bed.base_url, api_key="none", max_retries=0)


def _last_body(fake: FakeUpstream) -> dict[str, Any]:
    bodies = fake.stats()["bodies"]
    assert bodies, "the upstream saw no request"
    return bodies[-1]  # type: ignore[no-any-return]


def test_max_tokens_is_clamped_and_said(bed: Router, fakes: dict[str, FakeUpstream]) -> None:
    sdk = _sdk(bed)
    hi = [{"role": "user", "content": "hi"}]
    task = {"x-tiered-task": "capped"}
    raw = sdk.chat.completions.with_raw_response.create(model="auto", messages=hi, max_tokens=4000, extra_headers=task)
    assert raw.headers["x-tiered-max-tokens"] == f"clamped 4000->{CAP}"
    assert raw.headers["x-tiered-tier"] == "small"
    assert _last_body(fakes["small"])["max_tokens"] == CAP

    raw = sdk.chat.completions.with_raw_response.create(
        model="auto", messages=hi, max_completion_tokens=5000, extra_headers=task
    )
    assert raw.headers["x-tiered-max-tokens"] == f"clamped 5000->{CAP}"
    assert _last_body(fakes["small"])["max_completion_tokens"] == CAP

    raw = sdk.chat.completions.with_raw_response.create(model="auto", messages=hi, extra_headers=task)
    assert raw.headers["x-tiered-max-tokens"] == f"set {CAP}"
    assert _last_body(fakes["small"])["max_tokens"] == CAP

    raw = sdk.chat.completions.with_raw_response.create(model="auto", messages=hi, max_tokens=10, extra_headers=task)
    assert "x-tiered-max-tokens" not in raw.headers  # under the cap: untouched
    assert _last_body(fakes["small"])["max_tokens"] == 10

    # A stream is clamped too (the router's own stream_options change rides along).
    with sdk.chat.completions.with_streaming_response.create(
        model="auto", messages=hi, max_tokens=900, stream=True, extra_headers=task
    ) as streamed:
        assert streamed.headers["x-tiered-max-tokens"] == f"clamped 900->{CAP}"
        assert "".join(streamed.iter_lines())
    assert _last_body(fakes["small"])["max_tokens"] == CAP

    raw = sdk.chat.completions.with_raw_response.create(model="small", messages=hi, max_tokens=4000)
    assert "x-tiered-max-tokens" not in raw.headers  # an explicit tier matched no rule
    assert _last_body(fakes["small"])["max_tokens"] == 4000

    assert bed.metric("tiered_router_token_discipline_total", rule="capped", action="clamped") == 3
    assert bed.metric("tiered_router_token_discipline_total", rule="capped", action="defaulted") == 1

    refused = bed.http.post("/v1/chat/completions", json={"model": "auto", "messages": hi, "max_tokens": "4000"},
                            headers=task)  # fmt: skip
    assert refused.status_code == 400 and refused.json()["error"]["param"] == "max_tokens"


def _conversation() -> list[dict[str, Any]]:
    turn = "x" * 80  # 20 + 4 estimated tokens per message
    system = {"role": "system", "content": [{"type": "text", "text": "You are terse.",
                                             "cache_control": {"type": "ephemeral"}}]}  # fmt: skip
    return [
        system,
        {"role": "user", "content": "first " + turn},
        {"role": "assistant", "content": "one " + turn},
        {"role": "user", "content": "second " + turn},
        {"role": "assistant", "content": "two " + turn},
        {"role": "user", "content": "and now?"},
    ]


def test_old_turns_are_truncated_and_cache_fields_pass_through(bed: Router, fakes: dict[str, FakeUpstream]) -> None:
    sdk = _sdk(bed)
    messages = _conversation()
    raw = sdk.chat.completions.with_raw_response.create(
        model="auto",
        messages=messages,  # type: ignore[arg-type]
        extra_headers={"x-tiered-task": "agent", "x-tiered-team": "trim"},
        extra_body={"prompt_cache_key": "tenant-7/agent", "metadata": {"team": "trim", "run": "r1"}},
    )
    assert raw.headers["x-tiered-tier"] == "big"
    assert raw.headers["x-tiered-truncated"].startswith("dropped 4 of 6 messages, ~")
    assert raw.headers["x-tiered-max-tokens"] == f"set {CAP}"
    sent = _last_body(fakes["big"])
    assert sent["messages"] == [messages[0], messages[-1]]  # system (cache_control intact) + last user turn
    assert sent["prompt_cache_key"] == "tenant-7/agent"
    assert sent["metadata"] == {"run": "r1"}  # tiered's attribution stays home; the rest goes on
    assert sent["max_tokens"] == CAP
    assert bed.metric("tiered_router_token_discipline_total", rule="trimmed", action="truncated") == 1
    dropped = sum(message_tokens(m) for m in messages[1:5])
    assert bed.metric("tiered_router_truncated_tokens_total", rule="trimmed") == dropped


def test_cache_fields_reach_the_upstream_untouched_when_nothing_changes(
    bed: Router, fakes: dict[str, FakeUpstream]
) -> None:
    sdk = _sdk(bed)
    messages = _conversation()
    for stream in (False, True):
        sdk.chat.completions.create(
            model="big", messages=messages, stream=stream,  # type: ignore[arg-type, call-overload]
            extra_body={"prompt_cache_key": "k-42"},
        )  # fmt: skip
        sent = _last_body(fakes["big"])
        assert sent["messages"] == messages and sent["prompt_cache_key"] == "k-42"
        assert sent["messages"][0]["content"][0]["cache_control"] == {"type": "ephemeral"}


PRICED = [
    # (shape, fake's usage control, input, cached read, cache write, output)
    ("openai", {"usage": {"prompt_tokens": 1000, "completion_tokens": 100}, "cached_tokens": 800}, 1000, 800, 0, 100),
    ("anthropic", {"usage": {"prompt_tokens": 1300, "completion_tokens": 50}, "cached_tokens": 1000,
                   "cache_write_tokens": 200, "usage_shape": "anthropic"}, 1300, 1000, 200, 50),
]  # fmt: skip


@pytest.mark.parametrize("stream", [False, True], ids=["json", "sse"])
@pytest.mark.parametrize(
    ("shape", "control", "prompt", "read", "write", "completion"), PRICED, ids=["openai", "anthropic"]
)
def test_cached_tokens_are_priced_at_the_tiers_cache_rates(
    bed: Router, fakes: dict[str, FakeUpstream], shape: str, control: dict[str, Any], prompt: int, read: int,
    write: int, completion: int, stream: bool,
) -> None:  # fmt: skip
    fakes["big"].mode("ok", **control)
    team = f"cached-{shape}-{'sse' if stream else 'json'}"
    answer = _sdk(bed).chat.completions.create(
        model="big", messages=[{"role": "user", "content": "hi"}], stream=stream,  # type: ignore[call-overload]
        extra_headers={"x-tiered-team": team},
    )  # fmt: skip
    if stream:
        assert [chunk for chunk in answer]  # drain it: the router accounts at the end
    expected = (prompt - read - write) * INPUT + read * CACHED + write * WRITE + completion * OUTPUT
    labels = {"tier": "big", "team": team, "feature": "unknown"}
    bed.wait_metric("tiered_router_cost_usd_total", expected * 0.999, **labels)
    assert bed.metric("tiered_router_cost_usd_total", **labels) == pytest.approx(expected, rel=1e-9)
    assert expected < (prompt * INPUT + completion * OUTPUT)  # cheaper than pricing every prompt token in full
    (row,) = [r for r in bed.http.get("/v1/tiered/costs").json()["by_tier_team_feature"] if r["team"] == team]
    assert (row["input_tokens"], row["cached_input_tokens"], row["cache_write_tokens"], row["output_tokens"]) == (
        prompt, read, write, completion)  # fmt: skip
    assert row["cost_usd"] == pytest.approx(expected, rel=1e-9)
