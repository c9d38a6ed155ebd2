"""The render ↔ serving contract: what core/render.py writes for llama-cpp tiers is what tiered_serving accepts.

Every llama-cpp example tier's rendered application names this module's builder and deployment, its `args`
pass `LlamaCppArgs` (which refuses unknown keys), and Ray's own schema accepts the serve config.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from ray.serve.schema import ServeDeploySchema
from tiered_operator.api.model import InferenceTier
from tiered_operator.api.objects import load_file
from tiered_operator.core.plan import plan_capacity
from tiered_operator.core.render import render_rayservice
from tiered_serving import llama_cpp
from tiered_serving.llama_cpp import DEPLOYMENT_NAME, LlamaCppArgs

ROOT = Path(__file__).resolve().parents[2]
LLAMA_CPP_TIERS = [
    obj
    for path in sorted((ROOT / "examples").glob("*.yaml"))
    for obj in load_file(path)
    if isinstance(obj, InferenceTier) and obj.spec.engine == "llama-cpp"
]


def rendered_app(tier: InferenceTier, replicas: int) -> dict[str, Any]:
    rayservice = render_rayservice(tier, plan_capacity(tier.spec), replicas)
    config = yaml.safe_load(rayservice["spec"]["serveConfigV2"])
    ServeDeploySchema.model_validate(config)
    app: dict[str, Any] = config["applications"][0]
    return app


def test_there_is_a_llama_cpp_example() -> None:
    assert LLAMA_CPP_TIERS


@pytest.mark.parametrize("tier", LLAMA_CPP_TIERS, ids=lambda t: t.metadata.name)
def test_the_rendered_app_is_this_builder_with_args_it_accepts(tier: InferenceTier) -> None:
    app = rendered_app(tier, replicas=2)
    module, _, builder = app["import_path"].partition(":")
    assert module == llama_cpp.__name__ and callable(getattr(llama_cpp, builder))
    args = LlamaCppArgs.model_validate(app["args"])
    assert args.model_id == tier.spec.model.id
    assert args.n_ctx == tier.spec.model.max_model_len
    assert [d["name"] for d in app["deployments"]] == [DEPLOYMENT_NAME]
    assert app["args"] == rendered_app(tier, replicas=5)["args"]  # scaling never touches the code version


def test_the_builder_refuses_args_it_does_not_know() -> None:
    with pytest.raises(ValueError, match="num_replicas"):
        llama_cpp.build_app({"model_id": "m", "model_source": "/m.gguf", "num_replicas": 2})
