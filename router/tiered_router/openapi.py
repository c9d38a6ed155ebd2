"""The router's OpenAPI 3.1 document, served at `/openapi.json` and fuzzed by schemathesis in the tests.

It documents exactly what the router checks (the fields routing reads) and leaves the rest of an OpenAI
request open (`additionalProperties`), because the upstream validates it. `model` is an enum of the
configured tiers plus `auto`, so the document follows config reloads.
"""

from __future__ import annotations

from typing import Any

from tiered_router.config import AUTO_MODEL, RouterConfig

_ERROR = {"$ref": "#/components/schemas/Error"}
_RETRY_AFTER = {
    "Retry-After": {
        "description": "Seconds to wait before retrying.",
        "schema": {"type": "string", "pattern": "^[0-9]+$"},
    }
}
# Each server-sent event: `data:` carries one JSON chunk, then `[DONE]`.
_SSE_EVENT = {"type": "object", "required": ["data"], "properties": {"data": {"type": "string"}}}
_ROUTING_HEADERS = {
    "x-tiered-tier": {"description": "The tier that served the request.", "schema": {"type": "string"}},
    "x-tiered-reason": {
        "description": "Why: explicit, rule:<name>, default, private, burst.",
        "schema": {"type": "string"},
    },
    "x-tiered-escalation": {
        "description": "Answers of the escalation `from` tier: escalated, kept, no-logprobs, private-kept, "
        "skipped-streaming, failed.",
        "schema": {"type": "string"},
    },
    "x-tiered-confidence": {
        "description": "The `from` tier answer's confidence (escalation method), 0 to 1.",
        "schema": {"type": "string"},
    },
    "x-tiered-escalated": {"description": "1 when the escalation `to` tier answered.", "schema": {"type": "string"}},
    "x-tiered-cache": {
        "description": "Answered from the router's response cache: exact or semantic (absent on a miss).",
        "schema": {"type": "string", "enum": ["exact", "semantic"]},
    },
    "x-tiered-cache-similarity": {
        "description": "A semantic hit's cosine similarity to the cached request, 0 to 1.",
        "schema": {"type": "string"},
    },
}


def _error(description: str, retry: bool = False) -> dict[str, Any]:
    response: dict[str, Any] = {
        "description": description,
        "content": {"application/json": {"schema": _ERROR}},
    }
    if retry:
        response["headers"] = _RETRY_AFTER
    return response


def _completion_operation(summary: str, request_schema: str) -> dict[str, Any]:
    headers = [
        {"name": name, "in": "header", "required": False, "description": text, "schema": {"type": "string"}}
        for name, text in (
            ("x-tiered-team", "Team for attribution (ignored when the API key names a team)."),
            ("x-tiered-feature", "Feature for attribution."),
            ("x-tiered-task", "Task type for `model: auto` rules."),
            ("x-tiered-private", "1/true/yes: never send to an external tier."),
        )
    ]
    return {
        "summary": summary,
        "parameters": headers,
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{request_schema}"}}},
        },
        "responses": {
            "200": {
                "description": "The upstream's completion (JSON), or its SSE stream when `stream` is true.",
                "headers": _ROUTING_HEADERS,
                "content": {
                    "application/json": {"schema": {"$ref": "#/components/schemas/Completion"}},
                    "text/event-stream": {"schema": _SSE_EVENT},
                },
            },
            "400": _error("Malformed JSON or a field routing needs has the wrong shape."),
            "401": _error("Missing or invalid API key."),
            "404": _error("Unknown model."),
            "413": _error("Body over the configured limit."),
            "502": _error("Every attempt failed upstream.", retry=True),
            "503": _error("No tier available (breakers open, rate limited, private queue full).", retry=True),
            "default": _error("An upstream error passed through unchanged (e.g. 422 for a bad parameter)."),
        },
    }


def openapi_document(config: RouterConfig) -> dict[str, Any]:
    models = [t.name for t in config.tiers] + [AUTO_MODEL]
    # The router reads `task`, `team`, `feature` and `private` from metadata; other keys are the upstream's.
    metadata = {
        "type": "object",
        "description": "OpenAI metadata; `task`, `team`, `feature`, `private` are read (not sent to external tiers).",
    }
    stream_options = {
        "type": ["object", "null"],
        "description": "`include_usage: true` asks for the final usage chunk.",
    }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "tiered router",
            "version": "0.1.0",
            "description": "OpenAI-compatible router over tiers of self-hosted and external models.",
        },
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": {
                "Error": {
                    "type": "object",
                    "required": ["error"],
                    "properties": {
                        "error": {
                            "type": "object",
                            "required": ["message", "type"],
                            "properties": {
                                "message": {"type": "string"},
                                "type": {"type": "string"},
                                "param": {"type": ["string", "null"]},
                                "code": {"type": ["string", "null"]},
                            },
                        }
                    },
                },
                "ChatRequest": {
                    "type": "object",
                    "required": ["model", "messages"],
                    "properties": {
                        "model": {"type": "string", "enum": models},
                        "messages": {"type": "array", "minItems": 1, "items": {"type": "object"}},
                        "stream": {"type": "boolean"},
                        "stream_options": stream_options,
                        "metadata": metadata,
                    },
                },
                "CompletionRequest": {
                    "type": "object",
                    "required": ["model", "prompt"],
                    "properties": {
                        "model": {"type": "string", "enum": models},
                        "prompt": {
                            "oneOf": [
                                {"type": "string"},
                                {"type": "array", "description": "strings or token ids"},
                            ]
                        },
                        "stream": {"type": "boolean"},
                        "stream_options": stream_options,
                        "metadata": metadata,
                    },
                },
                "Completion": {
                    "type": "object",
                    "required": ["choices"],
                    "properties": {
                        "id": {"type": "string"},
                        "model": {"type": "string"},
                        "choices": {"type": "array", "items": {"type": "object"}},
                        "usage": {"type": "object"},
                    },
                },
                "ModelList": {
                    "type": "object",
                    "required": ["data"],
                    "properties": {
                        "data": {
                            "type": "array",
                            "items": {
                                "type": "object",
                                "required": ["id"],
                                "properties": {"id": {"type": "string"}},
                            },
                        }
                    },
                },
            },
        },
        "security": [{"bearer": []}],
        "paths": {
            "/v1/chat/completions": {"post": _completion_operation("Chat completion", "ChatRequest")},
            "/v1/completions": {"post": _completion_operation("Text completion", "CompletionRequest")},
            "/v1/models": {
                "get": {
                    "summary": "The tiers, plus `auto`.",
                    "responses": {
                        "200": {
                            "description": "Models.",
                            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ModelList"}}},
                        },
                        "401": _error("Missing or invalid API key."),
                    },
                }
            },
            "/v1/tiered/costs": {
                "get": {
                    "summary": "Cost summary since start, by tier, team and feature (a team's key: its own rows).",
                    "responses": {
                        "200": {
                            "description": "Totals and rows.",
                            "content": {
                                "application/json": {
                                    "schema": {
                                        "type": "object",
                                        "required": ["totals", "by_tier_team_feature"],
                                    }
                                }
                            },
                        },
                        "401": _error("Missing or invalid API key."),
                    },
                }
            },
            "/v1/tiered/costs/history": {
                "get": {
                    "summary": "Cost, tokens and requests by tier per step over a window (memory ring or Prometheus).",
                    "parameters": [
                        {"name": "window", "in": "query", "schema": {"type": "number", "exclusiveMinimum": 0}},
                        {"name": "step", "in": "query", "schema": {"type": "number", "exclusiveMinimum": 0}},
                        {"name": "source", "in": "query", "schema": {"type": "string", "enum": ["memory"]}},
                    ],
                    "responses": {
                        "200": {
                            "description": "Series by tier.",
                            "content": {
                                "application/json": {
                                    "schema": {"type": "object", "required": ["source", "timestamps", "tiers"]}
                                }
                            },
                        },
                        "400": _error("`window` or `step` not a positive number of seconds, or an unknown `source`."),
                        "401": _error("Missing or invalid API key."),
                    },
                }
            },
            "/v1/tiered/feedback": {
                "post": {
                    "summary": "The outcome of a task (named by its task id or one of its requests' ids).",
                    "requestBody": {
                        "required": True,
                        "content": {
                            "application/json": {
                                "schema": {
                                    "type": "object",
                                    "required": ["outcome"],
                                    "anyOf": [{"required": ["request_id"]}, {"required": ["task_id"]}],
                                    "properties": {
                                        "request_id": {"type": "string", "minLength": 1},
                                        "task_id": {"type": "string", "minLength": 1},
                                        "outcome": {"type": "string", "enum": ["resolved", "unresolved"]},
                                        "score": {"type": "number"},
                                    },
                                }
                            }
                        },
                    },
                    "responses": {
                        "200": {
                            "description": "The task as judged: requests, calls, cost.",
                            "content": {
                                "application/json": {
                                    "schema": {"type": "object", "required": ["task", "outcome", "cost_usd"]}
                                }
                            },
                        },
                        "400": _error("Malformed body, no id, or an unknown outcome."),
                        "401": _error("Missing or invalid API key."),
                        "404": _error("No such request or task (or another team's)."),
                    },
                }
            },
            "/v1/tiered/explain": {
                "post": {
                    "summary": "The routing decision for a chat request (features, scores, rule trace), not forwarded.",
                    "requestBody": {
                        "required": True,
                        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ChatRequest"}}},
                    },
                    "responses": {
                        "200": {
                            "description": "The decision.",
                            "content": {
                                "application/json": {
                                    "schema": {"type": "object", "required": ["tier", "reason", "signals", "rules"]}
                                }
                            },
                        },
                        "400": _error("Malformed request."),
                        "401": _error("Missing or invalid API key."),
                        "404": _error("Unknown model."),
                    },
                }
            },
            "/v1/tiered/status": {
                "get": {
                    "summary": "Tiers' breakers, in-flight counts and whether private traffic can be served.",
                    "responses": {
                        "200": {
                            "description": "Live state.",
                            "content": {
                                "application/json": {
                                    "schema": {"type": "object", "required": ["ready", "private", "tiers"]}
                                }
                            },
                        },
                        "401": _error("Missing or invalid API key."),
                    },
                }
            },
            "/healthz": {
                "get": {
                    "summary": "Liveness.",
                    "security": [],
                    "responses": {
                        "200": {
                            "description": "Alive.",
                            "content": {"application/json": {"schema": {"type": "object"}}},
                        }
                    },
                }
            },
            "/readyz": {
                "get": {
                    "summary": "Readiness: 503 while draining (upstream health does not count).",
                    "security": [],
                    "responses": {
                        "200": {
                            "description": "Ready.",
                            "content": {"application/json": {"schema": {"type": "object"}}},
                        },
                        "503": {
                            "description": "Not ready.",
                            "content": {"application/json": {"schema": {"type": "object"}}},
                        },
                    },
                }
            },
            "/metrics": {
                "get": {
                    "summary": "Prometheus metrics.",
                    "security": [],
                    "responses": {
                        "200": {
                            "description": "Text exposition format.",
                            "content": {"text/plain": {"schema": {"type": "string"}}},
                        }
                    },
                }
            },
        },
    }
