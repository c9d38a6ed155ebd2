"""RouterState's file watching: a kubelet-style ConfigMap swap is seen, a bad file keeps the last good config."""

from __future__ import annotations

from pathlib import Path

import yaml
from tiered_devstack.router_pod import VolumeDir
from tiered_router.state import RouterState, file_signature


def config(default: str) -> str:
    tiers = [
        {"name": name, "baseURL": f"http://127.0.0.1:9/{name}/v1", "pricing": {"gpuHourUSD": 1, "tokensPerSecond": 1}}
        for name in ("a", "b")
    ]
    return yaml.safe_dump({"tiers": tiers, "default": default})


def test_configmap_swap_is_seen_and_a_bad_file_keeps_the_last_good_config(tmp_path: Path) -> None:
    volume = VolumeDir(tmp_path / "cm")
    volume.update({"config.yaml": config("a")})
    state = RouterState(str(volume.root / "config.yaml"))
    assert state.reload_if_changed() is False  # nothing changed
    volume.update({"config.yaml": config("b")})
    assert state.reload_if_changed() is True and state.snapshot.config.default == "b"
    volume.update({"config.yaml": config("b")}, force=True)  # same bytes, new directory: loaded again, harmlessly
    assert state.reload_if_changed() is True
    volume.update({"config.yaml": config("nowhere")})
    errors = "tiered_router_config_reload_errors_total"
    assert state.reload_if_changed() is False and state.snapshot.config.default == "b"
    assert state.metrics.registry.get_sample_value(errors) == 0  # first look: maybe a write under way
    assert state.reload_if_changed() is False  # second look at the same file: now it counts
    assert state.reload_if_changed() is False  # a bad file is reported once
    assert state.metrics.registry.get_sample_value(errors) == 1


def test_a_half_written_file_is_looked_at_again_not_counted(tmp_path: Path) -> None:
    path = tmp_path / "router.yaml"
    path.write_text(config("a"))
    state = RouterState(str(path))
    full = config("b")
    path.write_text(full[: len(full) // 2])  # in place, cut off: what a reader can catch mid-write
    assert state.reload_if_changed() is False
    path.write_text(full)
    assert state.reload_if_changed() is True and state.snapshot.config.default == "b"
    assert state.metrics.registry.get_sample_value("tiered_router_config_reload_errors_total") == 0


def test_signature_names_the_timestamped_directory(tmp_path: Path) -> None:
    volume = VolumeDir(tmp_path / "cm")
    volume.update({"config.yaml": "x: 1\n"})
    before = file_signature(str(volume.root / "config.yaml"))
    volume.update({"config.yaml": "x: 1\n"}, force=True)
    after = file_signature(str(volume.root / "config.yaml"))
    assert before is not None and after is not None
    assert before[0] != after[0] and Path(after[0]).parent.name.startswith("..")
    assert file_signature(str(tmp_path / "missing.yaml")) is None
