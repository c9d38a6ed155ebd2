"""Shared pytest fixtures. Each block says who owns it; add yours in a block of your own."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

# ---- test bed: the Kubernetes API emulator (see tests/bed.py) -------------------------------------
from bed import EmulatorProcess, OperatorProcess, check_kubectl, running_emulator, running_operator


@pytest.fixture
def emulator(tmp_path: Path) -> Iterator[EmulatorProcess]:
    """`tiered cluster` as a subprocess on a free loopback port, with the repo's CRDs (and RayService)."""
    with running_emulator(tmp_path) as process:
        yield process


@pytest.fixture
def kubectl_binary() -> None:
    """Fails (never skips) when the pinned kubectl is missing."""
    check_kubectl()


# ---- end of test bed ---------------------------------------------------------------------------------


# ---- router: fake upstreams and a router process (see tests/router_bed.py) -----------------------
from router_bed import FakeUpstream, Router, base_config, fakes, router  # noqa: E402


@pytest.fixture(scope="module")
def router_fakes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, FakeUpstream]]:
    """Fake upstreams `small`, `edge` (local tiers) and `big` (the external tier), one set per module."""
    with fakes(tmp_path_factory.mktemp("fakes"), "small", "edge", "big") as started:
        yield started


@pytest.fixture(scope="module")
def router_process(router_fakes: dict[str, FakeUpstream], tmp_path_factory: pytest.TempPathFactory
                   ) -> Iterator[Router]:
    """One router per module on `base_config`; use `router_reset` in tests that change state."""
    with router(base_config(router_fakes), tmp_path_factory.mktemp("router")) as process:
        yield process


@pytest.fixture
def router_reset(router_fakes: dict[str, FakeUpstream], router_process: Router) -> Iterator[Router]:
    """The module's router with healthy fakes; a test that applies another config gets the base back."""
    for fake in router_fakes.values():
        fake.reset()
    before = router_process.config_path.read_text()
    yield router_process
    for fake in router_fakes.values():
        fake.release()
    if router_process.config_path.read_text() != before:
        router_process.apply(base_config(router_fakes))


# ---- end of router -------------------------------------------------------------------------------


# ---- the operator (kopf run) against the emulator --------------------------------------------------


@pytest.fixture
def operator(emulator: EmulatorProcess, tmp_path: Path) -> Iterator[OperatorProcess]:
    """The real operator process, resyncing every second, stopped at teardown."""
    with running_operator(emulator, tmp_path) as process:
        yield process


# ---- end of operator ---------------------------------------------------------------------------------
