"""`tiered router` is wired into the CLI and refuses a bad config with exit code 2 (no server started)."""

from __future__ import annotations

from pathlib import Path

import pytest
from tiered_operator.cli import build_parser, main
from tiered_router import server


def test_router_subcommand_is_registered() -> None:
    args = build_parser("router").parse_args(["router", "--config", "c.yaml", "--host", "0.0.0.0", "--port", "9000"])
    assert args._handler is server.router
    assert (args.config, args.host, args.port, args.reload_interval) == ("c.yaml", "0.0.0.0", 9000, 1.0)


def test_invalid_config_exits_2_with_the_reason(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "c.yaml"
    config.write_text("tiers: []\ndefault: x\n")
    assert main(["router", "--config", str(config)]) == 2
    assert "invalid config" in capsys.readouterr().err
