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


def test_pod_flags_and_their_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    args = build_parser("router").parse_args(["router", "--config", "c.yaml"])
    assert (args.host, args.drain_seconds, args.shutdown_timeout, args.metrics_port) == ("127.0.0.1", 5.0, 25.0, None)
    monkeypatch.setenv(server.HOST_ENV, "0.0.0.0")
    args = build_parser("router").parse_args(["router", "--config", "c.yaml", "--metrics-port", "9090"])
    assert (args.host, args.metrics_port) == ("0.0.0.0", 9090)
    flag_wins = build_parser("router").parse_args(["router", "--config", "c.yaml", "--host", "127.0.0.2"])
    assert flag_wins.host == "127.0.0.2"
