"""Extra simulator fixtures (custom settings, async); `simulator` itself is in tests/conftest.py."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest

from sessiontap.simulator.server import Simulator, running_simulator


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
