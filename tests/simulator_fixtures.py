"""Pytest fixtures that run the ElevenLabs simulator on loopback (use via `pytest_plugins`)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest

from addons.simulator.server import Simulator, running_simulator


@pytest.fixture
def simulator() -> Iterator[Simulator]:
    """A default simulator on its own thread (any non-empty xi-api-key, public agent)."""
    with running_simulator() as sim:
        yield sim


@pytest.fixture
def make_simulator() -> Iterator[Callable[..., Simulator]]:
    """A factory: `make_simulator(api_key=..., faults=...)` starts one, stopped at teardown."""
    with contextlib.ExitStack() as stack:

        def make(**kwargs: Any) -> Simulator:
            return stack.enter_context(running_simulator(**kwargs))

        yield make


@pytest.fixture
async def async_simulator() -> AsyncIterator[Simulator]:
    """A default simulator on the test's own event loop (for async tests)."""
    sim = Simulator()
    await sim.start()
    try:
        yield sim
    finally:
        await sim.stop()
