"""RouterConfig validation: one valid base, a table of one-field changes and the message each produces."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import tiered_router
from pydantic import ValidationError
from tiered_router.auth import hash_key, identify, load_keys
from tiered_router.config import RouterConfig, load_config

EXAMPLE = Path(tiered_router.__file__).parent / "example-config.yaml"

BASE: dict[str, Any] = {
    "tiers": [
        {
            "name": "small",
            "baseURL": "http://s/v1",
            "pricing": {"gpuHourUSD": 1, "tokensPerSecond": 10},
            "fallback": ["big"],
        },
        {
            "name": "big",
            "kind": "external",
            "baseURL": "https://b/v1",
            "pricing": {"inputPerMTok": 1, "outputPerMTok": 2},
        },
    ],
    "default": "small",
    "baseline": "big",
    "rules": [{"match": {"taskTypes": ["x"]}, "tier": "big"}],
}


def test_example_config_loads_and_round_trips() -> None:
    config = load_config(EXAMPLE)
    assert [t.name for t in config.tiers] == ["triage", "edge", "frontier"]
    again = RouterConfig.model_validate(config.model_dump(by_alias=True))
    assert again == config
    assert config.model_dump(by_alias=True)["tiers"][0]["baseURL"].startswith("http")


def test_base_is_valid_and_snake_case_is_accepted() -> None:
    assert RouterConfig.model_validate(BASE).tier("small").pricing.gpu_hour_usd == 1
    assert (
        RouterConfig(
            tiers=[
                {
                    "name": "x",
                    "base_url": "http://x/v1",  # type: ignore[list-item]
                    "pricing": {"gpu_hour_usd": 1, "tokens_per_second": 1},
                }
            ],
            default="x",
        ).default
        == "x"
    )


def _set(data: dict[str, Any], path: str, value: Any) -> None:
    keys = path.split(".")
    for key in keys[:-1]:
        data = data[int(key)] if isinstance(data, list) else data[key]  # type: ignore[index]
    if isinstance(data, list):
        data[int(keys[-1])] = value
    else:
        data[keys[-1]] = value


@pytest.mark.parametrize(
    ("path", "value", "message"),
    [
        ("default", "nope", "default names unknown tier 'nope'"),
        ("baseline", "nope", "baseline names unknown tier 'nope'"),
        ("rules.0.tier", "nope", "rules[0].tier names unknown tier 'nope'"),
        ("tiers.0.fallback", ["nope"], "tiers[small].fallback names unknown tier 'nope'"),
        ("tiers.1.name", "small", "tier names must be unique"),
        ("tiers.1.name", "auto", "'auto' is reserved"),
        ("tiers.0.burst", True, "burst is on but burstTarget is not set"),
        ("tiers.0.burstTarget", "small", "burstTarget cannot be the tier itself"),
        ("tiers.1.pricing", {}, "an external tier needs pricing.inputPerMTok and outputPerMTok"),
        ("tiers.0.pricing", {"gpuHourUSD": 1}, "a local tier needs pricing.gpuHourUSD and tokensPerSecond"),
        ("tiers.0.baseURL", "s/v1", "String should match pattern"),
        ("rules.0.match", {"regex": "("}, "does not compile"),
        ("rules.0.match", {"minPromptTokens": 5, "maxPromptTokens": 1}, "minPromptTokens is greater"),
        ("retries", 3, "less than or equal to 2"),
        ("privacy", {"localTier": "big"}, "privacy.localTier 'big' must be a local tier"),
        ("tiers.0.colour", "red", "Extra inputs are not permitted"),
        ("tiers.0.fallback", ["small", "big"], "tiers[small].fallback lists the tier itself"),
        ("tiers.1.baseURL", "https://b/v1/chat/completions", "names an endpoint"),
        ("tiers.1.baseURL", "https://b/v1/completions/", "names an endpoint"),
        ("rules", [{"match": {}, "tier": "big"}, *BASE["rules"]], "rules[0].match has no condition"),
        ("rules", [{"match": {"taskTypes": []}, "tier": "big"}, *BASE["rules"]], "rules[0].match has no condition"),
        ("rules.0.match", {"keywords": ["ok", " "]}, "holds an empty keyword"),
        ("rules.0.match", {"taskTypes": [""]}, "holds an empty task type"),
        ("rules.0.match", {"regex": ""}, "regex is empty"),
        ("rules.0.match", {"keywords": ["x"], "scope": "everything"}, "Input should be 'lastUser'"),
        ("tiers", [BASE["tiers"][1]], "default names unknown tier 'small'"),
        ("attribution", {"maxLabelValues": 0}, "greater than or equal to 1"),
    ],
)
def test_invalid_config_message(path: str, value: Any, message: str) -> None:
    data = copy.deepcopy(BASE)
    _set(data, path, value)
    with pytest.raises(ValidationError, match=message.replace("[", r"\[").replace("(", r"\(")):
        RouterConfig.model_validate(data)


def test_private_teams_need_a_local_tier() -> None:
    data = {**copy.deepcopy(BASE), "tiers": [BASE["tiers"][1]], "default": "big", "rules": []}
    RouterConfig.model_validate(data)  # no private teams: an all-external router is fine
    data["privacy"] = {"privateTeams": ["legal"]}
    with pytest.raises(ValidationError, match=r"privacy\.privateTeams is set but no tier is local"):
        RouterConfig.model_validate(data)


def test_empty_match_on_the_last_rule_is_a_catch_all_and_tasks_are_normalised() -> None:
    rules = [{"match": {"taskTypes": [" Extraction ", "CHAT"]}, "tier": "big"}, {"match": {}, "tier": "small"}]
    config = RouterConfig.model_validate({**BASE, "rules": rules})
    assert config.rules[0].match.task_types == ["extraction", "chat"]
    assert not config.rules[1].match.has_conditions


def test_new_fields_stay_out_of_a_dump_that_does_not_use_them() -> None:
    # The operator renders with exclude_none: a config that does not set scope or attribution dumps as before.
    dumped = RouterConfig.model_validate(BASE).model_dump(by_alias=True, exclude_none=True)
    assert "attribution" not in dumped and "scope" not in dumped["rules"][0]["match"]


def test_load_config_errors_are_value_errors(tmp_path: Path) -> None:
    for text in ("tiers: [", "- a list"):
        (tmp_path / "c.yaml").write_text(text)
        with pytest.raises(ValueError):
            load_config(tmp_path / "c.yaml")
    with pytest.raises(ValueError, match="cannot read"):
        load_config(tmp_path / "missing.yaml")


def test_api_keys_file_keeps_hashes_only(tmp_path: Path) -> None:
    path = tmp_path / "keys.yaml"
    path.write_text(
        f"keys:\n  - {{key: sk-a, team: a}}\n  - {{sha256: {hash_key('sk-b').upper()}, team: b, feature: f}}\n"
    )
    keys = load_keys(path)
    assert "sk-a" not in repr(keys)
    assert identify(keys, "Bearer sk-a").team == "a"  # type: ignore[union-attr]
    assert identify(keys, "bearer sk-b").feature == "f"  # type: ignore[union-attr]
    assert identify(keys, "Bearer sk-c") is None
    assert identify(keys, None) is None
    assert identify(keys, "Basic sk-a") is None
    path.write_text("keys:\n  - {team: a}\n")
    with pytest.raises(ValueError, match=r"keys\[0\] needs `key`"):
        load_keys(path)


def test_every_config_field_is_described_and_documented() -> None:
    from tiered_router.config import Attribution, Breaker, Match, Pricing, Privacy, Rule, Tier, Timeouts

    doc = (Path(tiered_router.__file__).parents[2] / "docs" / "router.md").read_text()
    for model in (RouterConfig, Tier, Pricing, Rule, Match, Privacy, Timeouts, Breaker, Attribution):
        for name, field in model.model_fields.items():
            assert field.description, f"{model.__name__}.{name} has no description"
            assert f"`{field.alias or name}" in doc or f"{field.alias or name}`" in doc, (
                f"{model.__name__}.{field.alias or name} is not in docs/router.md"
            )
