"""Router edges a new user hits (issue 10), with real router and fake-upstream processes on loopback.

Matching scope and whole-word keywords, task normalisation, tiered's labels kept in, tenancy of the cost
summary, bounded attribution, config checks at load and on reload, error codes and streams, and readiness
with privacy rules.
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import yaml
from router_bed import FakeUpstream, Router, base_config, fakes, router
from tiered_router.auth import hash_key

pytestmark = pytest.mark.integration


def client(rt: Router, key: str = "none") -> openai.OpenAI:
    return openai.OpenAI(base_url=rt.base_url, api_key=key, max_retries=0, timeout=30)


def chat(rt: Router, messages: list[dict[str, str]], key: str = "none", **kwargs: Any) -> tuple[str, str]:
    raw = client(rt, key).chat.completions.with_raw_response.create(model="auto", messages=messages, **kwargs)
    return raw.headers["x-tiered-tier"], raw.headers["x-tiered-reason"]


def user(text: str) -> dict[str, str]:
    return {"role": "user", "content": text}


@pytest.fixture
def up(router_fakes: dict[str, FakeUpstream]) -> Iterator[dict[str, FakeUpstream]]:
    """The module's fakes, healthy and with zero counts, for a test that starts a router of its own."""
    for fake in router_fakes.values():
        fake.reset()
    yield router_fakes
    for fake in router_fakes.values():
        fake.release()
        fake.reset()


MATCHING_RULES = [
    {"name": "math", "match": {"keywords": ["prove", "Theorem"]}, "tier": "big"},
    {"name": "design", "match": {"keywords": ["design a"]}, "tier": "edge"},
    {"name": "legal", "match": {"keywords": ["legalese"], "scope": "lastUserAndSystem"}, "tier": "edge"},
    {"name": "history", "match": {"keywords": ["escalate"], "scope": "conversation"}, "tier": "big"},
    {"name": "steps", "match": {"regex": r"step[- ]by[- ]step"}, "tier": "big"},
    {"name": "extract", "match": {"taskTypes": [" Extraction "]}, "tier": "edge"},
]


@pytest.mark.parametrize(
    ("messages", "route"),
    [
        ([user("please improve this paragraph")], ("small", "default")),
        ([user("Prove that it halts.")], ("big", "rule:math")),
        ([user("PROVE it")], ("big", "rule:math")),
        ([user("a theorem, please")], ("big", "rule:math")),
        ([user("the designated driver")], ("small", "default")),
        ([user("design   a logo")], ("edge", "rule:design")),
        ([{"role": "system", "content": "You prove theorems."}, user("hello")], ("small", "default")),
        ([user("prove x"), {"role": "assistant", "content": "done"}, user("thanks")], ("small", "default")),
        ([{"role": "system", "content": "Answer in legalese."}, user("hello")], ("edge", "rule:legal")),
        ([user("please escalate"), {"role": "assistant", "content": "ok"}, user("thanks")], ("big", "rule:history")),
        ([{"role": "system", "content": "think step by step"}, user("hi")], ("small", "default")),
        ([user("think step by step")], ("big", "rule:steps")),
    ],
    ids=[
        "improve-not-prove",
        "prove",
        "case-insensitive",
        "second-keyword",
        "designated-not-design-a",
        "phrase-any-whitespace",
        "keyword-only-in-system-prompt",
        "keyword-only-in-earlier-turn",
        "scope-last-user-and-system",
        "scope-conversation",
        "regex-only-in-system-prompt",
        "regex-last-user",
    ],
)
def test_keywords_match_whole_words_in_the_last_user_message_by_default(
    router_reset: Router, router_fakes: dict[str, FakeUpstream], messages: list[dict[str, str]], route: tuple[str, str]
) -> None:
    router_reset.apply(base_config(router_fakes, rules=MATCHING_RULES))
    assert chat(router_reset, messages) == route


def test_task_types_are_normalised_and_unknown_ones_counted(
    router_reset: Router, router_fakes: dict[str, FakeUpstream]
) -> None:
    router_reset.apply(base_config(router_fakes, rules=MATCHING_RULES))
    assert chat(router_reset, [user("hi")], extra_headers={"x-tiered-task": "EXTRACTION"}) == (
        "edge",
        "rule:extract",
    )
    assert chat(router_reset, [user("hi")], metadata={"task": " Extraction\t"}) == ("edge", "rule:extract")
    assert chat(router_reset, [user("hi")], extra_headers={"x-tiered-task": "Poetry"}) == ("small", "default")
    assert router_reset.metric("tiered_router_unknown_tasks_total", task="poetry") == 1
    assert router_reset.metric("tiered_router_unknown_tasks_total", task="extraction") == 0


def run_router(config_path: Path) -> subprocess.CompletedProcess[str]:
    """A router process on a config it should refuse: it exits at once (bounded by the timeout)."""
    return subprocess.run(
        [sys.executable, "-m", "tiered_router.server", "--config", str(config_path), "--port", "0"],
        capture_output=True,
        text=True,
        timeout=60,
    )


def _tier(config: dict[str, Any], name: str) -> dict[str, Any]:
    return next(t for t in config["tiers"] if t["name"] == name)


REFUSED: dict[str, tuple[Any, str]] = {
    "empty-task-types-on-a-non-last-rule": (
        lambda c: c["rules"].insert(0, {"match": {"taskTypes": []}, "tier": "big"}),
        r"rules\[0\]\.match has no condition",
    ),
    "empty-match-on-a-non-last-rule": (
        lambda c: c["rules"].insert(1, {"match": {}, "tier": "big"}),
        r"rules\[1\]\.match has no condition",
    ),
    "empty-keyword": (lambda c: c["rules"].append({"match": {"keywords": [""]}, "tier": "big"}), "empty keyword"),
    "blank-task-type": (
        lambda c: c["rules"].append({"match": {"taskTypes": ["  "]}, "tier": "big"}),
        "empty task type",
    ),
    "private-teams-without-a-local-tier": (
        lambda c: c.update(
            tiers=[_tier(c, "big")], default="big", baseline=None, rules=[], privacy={"privateTeams": ["legal"]}
        ),
        "no tier is local",
    ),
    "self-fallback": (lambda c: _tier(c, "edge").update(fallback=["edge"]), r"fallback lists the tier itself"),
    "baseurl-names-an-endpoint": (
        lambda c: _tier(c, "big").update(baseURL=_tier(c, "big")["baseURL"] + "/chat/completions"),
        "names an endpoint",
    ),
}


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_configs_that_cannot_behave_as_written_are_refused_at_start(
    up: dict[str, FakeUpstream], tmp_path: Path, case: str
) -> None:
    config = base_config(up)
    mutate, message = REFUSED[case]
    mutate(config)
    path = tmp_path / "router.yaml"
    path.write_text(yaml.safe_dump(config))
    result = run_router(path)
    assert result.returncode == 2, result.stderr
    assert re.search(message, result.stderr), result.stderr


def test_an_empty_match_is_a_catch_all_only_on_the_last_rule(
    router_reset: Router, router_fakes: dict[str, FakeUpstream]
) -> None:
    rules = [*base_config(router_fakes)["rules"], {"name": "rest", "match": {"taskTypes": []}, "tier": "edge"}]
    router_reset.apply(base_config(router_fakes, rules=rules))
    assert chat(router_reset, [user("hello")]) == ("edge", "rule:rest")


def test_a_refused_reload_counts_once_and_a_partial_write_not_at_all(
    up: dict[str, FakeUpstream], tmp_path: Path
) -> None:
    # A long reload interval, so the test finishes its slow write well inside the router's second look.
    with router(base_config(up), tmp_path, ("--reload-interval", "2")) as rt:
        text = yaml.safe_dump(base_config(up, default="edge"))
        reloads = rt.metric("tiered_router_config_reloads_total")
        with rt.config_path.open("w") as out:  # written in place, in two parts, as an editor might
            out.write(text[: len(text) // 2])
            out.flush()
            deadline = time.monotonic() + 20
            while "checking again" not in rt.log.read_text():
                assert time.monotonic() < deadline, rt.log.read_text()[-2000:]
                time.sleep(0.05)
            out.write(text[len(text) // 2 :])
        rt.wait_metric("tiered_router_config_reloads_total", reloads + 1)
        assert rt.metric("tiered_router_config_reload_errors_total") == 0
        assert chat(rt, [user("hello")]) == ("edge", "default")
        # A file that stays bad is counted once, after the second look, and the last good config stays.
        config = base_config(up)
        _tier(config, "edge")["fallback"] = ["edge"]
        rt.write(yaml.safe_dump(config))
        rt.wait_metric("tiered_router_config_reload_errors_total", 1)
        assert "fallback lists the tier itself" in rt.log.read_text()
        assert chat(rt, [user("hello")]) == ("edge", "default")


def test_a_base_url_without_v1_is_called_as_written_and_logged(tmp_path: Path) -> None:
    with fakes(tmp_path, "small", "edge", "big") as up:
        config = base_config(up)
        _tier(config, "edge")["baseURL"] = up["edge"].url  # no /v1: the router calls {url}/chat/completions
        with router(config, tmp_path) as rt:
            assert f"chat requests go to {up['edge'].url}/chat/completions" in rt.log.read_text()
            response = rt.http.post("/v1/chat/completions", json={"model": "edge", "messages": [user("hi")]})
            assert (response.status_code, response.headers["x-tiered-tier"]) == (404, "edge")  # the fake's own 404


def test_tiered_labels_never_reach_an_external_tier(
    router_reset: Router, router_fakes: dict[str, FakeUpstream]
) -> None:
    metadata = {"team": "search", "feature": "autocomplete", "task": "chat", "trace_id": "t-1"}
    raw = client(router_reset).chat.completions.with_raw_response.create(
        model="big", messages=[user("hello")], metadata=metadata
    )
    assert raw.headers["x-tiered-tier"] == "big"
    sent = router_fakes["big"].stats()["bodies"][-1]
    assert sent["metadata"] == {"trace_id": "t-1"}  # other metadata passes through
    assert sent["model"] == "big"
    # Only tiered keys: no metadata at all goes out.
    client(router_reset).chat.completions.create(
        model="big", messages=[user("hello")], metadata={"team": "search"}, stream=True
    ).close()
    assert "metadata" not in router_fakes["big"].stats()["bodies"][-1]
    # A local tier is ours: it gets the metadata as sent.
    client(router_reset).chat.completions.create(model="small", messages=[user("hello")], metadata=metadata)
    assert router_fakes["small"].stats()["bodies"][-1]["metadata"] == metadata
    # metadata.private marks a request private, like the header.
    private = client(router_reset).chat.completions.with_raw_response.create(
        model="big", messages=[user("hello")], metadata={"private": "true"}
    )
    assert private.headers["x-tiered-reason"] == "private"
    assert router_fakes["big"].requests == 2


def keys_file(tmp_path: Path) -> Path:
    path = tmp_path / "keys.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "keys": [
                    {"sha256": hash_key("sk-search"), "team": "search", "feature": "web"},
                    {"key": "sk-ads", "team": "ads"},
                    {"key": "sk-admin", "team": "platform", "admin": True},
                ]
            }
        )
    )
    return path


def test_a_key_sees_its_own_teams_costs_and_an_admin_key_sees_all(up: dict[str, FakeUpstream], tmp_path: Path) -> None:
    config = base_config(up, apiKeysFile=str(keys_file(tmp_path)), attribution={"features": ["chatbot"]})
    with router(config, tmp_path) as rt:
        chat(rt, [user("hi")], key="sk-search")  # the key's own feature: web
        chat(rt, [user("hi")], key="sk-search", extra_headers={"x-tiered-feature": "chatbot"})  # allow-listed
        chat(rt, [user("hi")], key="sk-search", metadata={"feature": "made-up"})  # neither: other
        chat(rt, [user("hi")], key="sk-ads", extra_headers={"x-tiered-team": "search"})  # the key's team wins

        def costs(key: str) -> httpx.Response:
            return rt.http.get("/v1/tiered/costs", headers={"Authorization": f"Bearer {key}"})

        search = costs("sk-search").json()
        assert search["team"] == "search"
        assert {(r["team"], r["feature"]) for r in search["by_tier_team_feature"]} == {
            ("search", "web"),
            ("search", "chatbot"),
            ("search", "other"),
        }
        assert search["totals"]["requests"] == 3
        ads = costs("sk-ads").json()
        assert {r["team"] for r in ads["by_tier_team_feature"]} == {"ads"} and ads["totals"]["requests"] == 1
        everything = costs("sk-admin").json()
        assert everything["team"] is None and everything["totals"]["requests"] == 4
        assert costs("sk-wrong").status_code == 401
        assert rt.metric("tiered_router_label_overflow_total", label="feature") == 1


def distinct(rt: Router, metric: str, label: str) -> set[str]:
    values = set()
    for line in rt.http.get("/metrics").text.splitlines():
        if line.startswith(metric + "{"):
            found = re.search(label + r'="([^"]*)"', line)
            if found:
                values.add(found.group(1))
    return values


def test_ad_hoc_features_and_teams_leave_metrics_bounded(up: dict[str, FakeUpstream], tmp_path: Path) -> None:
    with router(base_config(up), tmp_path) as rt, httpx.Client(base_url=rt.url, timeout=30) as http:
        body = {"model": "small", "messages": [user("hi")]}
        for i in range(300):
            headers = {"x-tiered-feature": f"feature-{i}", "x-tiered-team": f"team-{i % 150}"}
            assert http.post("/v1/chat/completions", json=body, headers=headers).status_code == 200
        features = distinct(rt, "tiered_router_requests_total", "feature")
        teams = distinct(rt, "tiered_router_requests_total", "team")
        # The documented cap: 100 distinct values per label, the rest counted as `other`.
        assert len(features - {"other"}) == 100 and "other" in features
        assert len(teams - {"other"}) == 100 and "other" in teams
        assert rt.metric("tiered_router_label_overflow_total", label="feature") == 200
        assert rt.metric("tiered_router_requests_total", feature="other") == 200
        rows = rt.http.get("/v1/tiered/costs").json()
        assert rows["totals"]["requests"] == 300  # every request still counted, under a bounded set of rows
        assert len({r["feature"] for r in rows["by_tier_team_feature"]}) == 101


def test_a_private_team_is_private_after_the_team_cap(up: dict[str, FakeUpstream], tmp_path: Path) -> None:
    config = base_config(up, attribution={"maxLabelValues": 1})
    with router(config, tmp_path) as rt:
        assert chat(rt, [user("hi")], extra_headers={"x-tiered-team": "search"}) == ("small", "default")
        assert chat(rt, [user("a theorem")], extra_headers={"x-tiered-team": "legal"}) == ("small", "private")
        assert rt.metric("tiered_router_requests_total", team="other", reason="private") == 1


def error_of(response: httpx.Response) -> dict[str, Any]:
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert re.fullmatch(r"[a-z]+(_[a-z]+)*", error["code"]), error
    return error  # type: ignore[no-any-return]


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"model": 5, "messages": [user("x")]}, "model"),
        ({"model": "auto", "messages": "hi"}, "messages"),
        ({"model": "auto", "messages": ["hi"]}, "messages"),
        ({"model": "auto", "messages": [user("x")], "stream": 1}, "stream"),
        ({"model": "auto", "messages": [user("x")], "metadata": []}, "metadata"),
        ({"model": "auto", "messages": [user("x")], "stream": True, "stream_options": "yes"}, "stream_options"),
        ({"model": "gpt-nonexistent", "messages": [user("x")]}, "model"),
    ],
)
def test_error_bodies_name_the_field_at_fault(router_reset: Router, body: dict[str, Any], param: str) -> None:
    response = router_reset.http.post("/v1/chat/completions", json=body)
    assert response.status_code in (400, 404)
    assert error_of(response)["param"] == param


def test_prompt_error_names_prompt(router_reset: Router) -> None:
    response = router_reset.http.post("/v1/completions", json={"model": "auto", "prompt": 5})
    assert error_of(response)["param"] == "prompt"


def test_503_only_when_every_attempt_was_rate_limited(
    router_reset: Router, router_fakes: dict[str, FakeUpstream]
) -> None:
    router_fakes["small"].mode("fail", status=500, times=1)
    router_fakes["edge"].mode("429", times=1)
    router_fakes["big"].mode("429", times=1)
    response = router_reset.http.post("/v1/chat/completions", json={"model": "small", "messages": [user("x")]})
    assert response.status_code == 502
    assert error_of(response)["code"] == "upstream_exhausted"
    assert "500, 429, 429" in response.json()["error"]["message"]
    for fake in router_fakes.values():
        fake.mode("429", times=1)
    response = router_reset.http.post("/v1/chat/completions", json={"model": "small", "messages": [user("x")]})
    assert (response.status_code, error_of(response)["code"]) == (503, "upstream_exhausted")
    assert "rate limited" in response.json()["error"]["message"]


def test_a_stalled_stream_is_a_timeout_and_a_dead_upstream_a_disconnect(tmp_path: Path) -> None:
    # Its own fakes, because this test kills one. base_config reads with a 1 s timeout.
    with fakes(tmp_path, "small", "edge", "big") as up, router(base_config(up), tmp_path) as rt:
        up["edge"].mode("hold")  # one chunk, then silence until released
        stream = iter(client(rt).chat.completions.create(model="edge", messages=[user("hi")], stream=True))
        assert next(stream).choices[0].delta.content == "The"
        with pytest.raises(openai.APIError, match=r"sent nothing for 1\.\d s mid-stream") as caught:
            list(stream)
        assert caught.value.code == "upstream_timeout"
        up["edge"].release()

        up["small"].mode("hold")
        stream = iter(client(rt).chat.completions.create(model="small", messages=[user("hi")], stream=True))
        assert next(stream).choices[0].delta.content == "The"
        up["small"].process.kill()
        with pytest.raises(openai.APIError, match="closed the connection mid-stream") as caught:
            list(stream)
        assert caught.value.code == "upstream_disconnected"
        assert "Timeout" not in str(caught.value)
        assert rt.metric("tiered_router_requests_total", status="502") == 2


@pytest.mark.parametrize("endpoint", ["chat", "completions"])
def test_the_usage_chunk_reaches_only_clients_that_ask_and_cost_always_uses_it(
    router_reset: Router, router_fakes: dict[str, FakeUpstream], endpoint: str
) -> None:
    router_fakes["edge"].mode("ok", usage={"prompt_tokens": 1000, "completion_tokens": 500})
    sdk = client(router_reset)
    tokens = router_reset.metric("tiered_router_tokens_total", tier="edge", direction="output")
    estimated = router_reset.metric("tiered_router_estimated_usage_total", tier="edge")

    def stream(**kwargs: Any) -> list[Any]:
        if endpoint == "chat":
            return list(sdk.chat.completions.create(model="edge", messages=[user("hi")], stream=True, **kwargs))
        return list(sdk.completions.create(model="edge", prompt="hi", stream=True, **kwargs))

    plain = stream()
    assert all(chunk.choices and chunk.usage is None for chunk in plain)
    asked = stream(stream_options={"include_usage": True})
    assert asked[-1].choices == [] and asked[-1].usage is not None and asked[-1].usage.completion_tokens == 500
    assert len(asked) == len(plain) + 1
    assert router_reset.metric("tiered_router_tokens_total", tier="edge", direction="output") == tokens + 1000
    assert router_reset.metric("tiered_router_estimated_usage_total", tier="edge") == estimated


def test_readiness_stays_200_without_local_capacity_and_status_says_so(
    up: dict[str, FakeUpstream], tmp_path: Path
) -> None:
    config = base_config(up, breaker={"failureThreshold": 1, "cooldownSeconds": 60})
    with router(config, tmp_path) as rt:
        assert rt.metric("tiered_router_private_ready") == 1
        assert rt.http.get("/v1/tiered/status").json()["private"]["ready"] is True
        up["small"].mode("fail", status=500)
        up["edge"].mode("fail", status=500)
        with pytest.raises(openai.InternalServerError):  # small, then edge, fail: both breakers open
            chat(rt, [user("hi")], extra_headers={"x-tiered-private": "1"})
        status = rt.http.get("/v1/tiered/status").json()
        assert status["private"] == {
            "rules": True,
            "header": "x-tiered-private",
            "ready": False,
            "local_tiers_available": [],
        }
        assert {t["name"]: t["breaker"] for t in status["tiers"]} == {
            "small": "open",
            "edge": "open",
            "big": "closed",
        }
        assert rt.metric("tiered_router_private_ready") == 0
        # Still ready: non-private traffic is served by the external tier, private traffic gets a 503.
        assert rt.http.get("/readyz").status_code == 200
        assert chat(rt, [user("hi")]) == ("big", "default")
        with pytest.raises(openai.APIStatusError) as caught:
            chat(rt, [user("hi")], extra_headers={"x-tiered-team": "legal"})
        assert caught.value.status_code == 503 and caught.value.code == "unavailable"
        assert up["big"].requests == 1
