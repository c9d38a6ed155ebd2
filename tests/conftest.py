"""Shared pytest fixtures. Each block says who owns it; add yours in a block of your own."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

# ---- test bed: the Kubernetes API emulator (see tests/bed.py) -------------------------------------
from bed import EmulatorProcess, check_kubectl, running_emulator


@pytest.fixture
def emulator(tmp_path: Path) -> Iterator[EmulatorProcess]:
    """`tiered cluster` as a subprocess on an ephemeral loopback port, with the repo's CRDs (and RayService)."""
    with running_emulator(tmp_path) as process:
        yield process


@pytest.fixture
def kubectl_binary() -> None:
    """Fails (never skips) when the pinned kubectl is missing."""
    check_kubectl()


# ---- end of test bed ---------------------------------------------------------------------------------
