"""Fixtures of the whole-stack tests: one local Ray for the session (~10-15 s to start), stopped at the end."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from tiered_devstack.ray_serve import LocalRay, running_ray


@pytest.fixture(scope="session")
def local_ray(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalRay]:
    """One `ray start --head` with the Serve REST API on loopback ports, shared by every test that needs Ray."""
    with running_ray(tmp_path_factory.mktemp("ray")) as ray:
        yield ray
