"""The backlog: deferred work runs in order, after the hook's turn and the next, and never gets lost."""

from __future__ import annotations

import asyncio

from sessiontap.bridge.backlog import Backlog


def test_without_an_event_loop_work_runs_at_once():
    backlog, ran = Backlog(), []
    backlog.add(ran.append, 1)
    assert ran == [1]


def test_work_runs_two_turns_later_in_order_and_later_work_in_a_later_batch():
    async def scenario() -> list[str]:
        backlog, ran = Backlog(), []
        backlog.add(ran.append, "a")
        backlog.add(ran.append, "b")
        ran.append("hook returned")
        await asyncio.sleep(0)  # turn 1: the hook's message is written
        ran.append("turn 1")
        backlog.add(ran.append, "c")  # a hook of turn 1: its own batch
        await asyncio.sleep(0)
        ran.append("turn 2")
        await asyncio.sleep(0)
        ran.append("turn 3")
        await asyncio.sleep(0)
        return ran

    assert asyncio.run(scenario()) == ["hook returned", "turn 1", "a", "b", "turn 2", "c", "turn 3"]


def test_a_failing_call_is_logged_and_the_rest_still_runs(caplog):
    backlog, ran = Backlog(), []

    def boom() -> None:
        raise ValueError("boom")

    async def scenario() -> None:
        backlog.add(boom)
        backlog.add(ran.append, "after")
        for _ in range(3):
            await asyncio.sleep(0)

    asyncio.run(scenario())
    assert ran == ["after"]
    assert "deferred" in caplog.text and "boom" in caplog.text


def test_drain_runs_everything_left_at_shutdown():
    async def scenario() -> list[int]:
        backlog, ran = Backlog(), []
        for i in range(5):
            backlog.add(ran.append, i)
        backlog.drain()
        return ran

    assert asyncio.run(scenario()) == [0, 1, 2, 3, 4]


def test_a_settled_analysis_waits_for_the_work_queued_before_it_was_asked_and_never_runs_it_early():
    """The pytest fixture's read: what was queued before it runs in its own turn; what comes after is not awaited."""
    from sessiontap.sessiontap import Chain

    async def scenario() -> list[str]:
        chain, ran = Chain(), []
        chain.backlog.add(ran.append, "before")
        asking = asyncio.create_task(chain.settled())
        await asyncio.sleep(0)  # the read has taken its mark; "before" has not run yet (two turns)
        assert ran == []
        queue = chain.backlog.queue  # later traffic whose turn never comes while the read waits
        queue.append((chain.backlog.added, ran.append, ("after",)))
        chain.backlog.added += 1
        analysis = await asyncio.wait_for(asking, 5)
        assert analysis.calls == [] and len(queue) == 1
        return ran

    assert asyncio.run(scenario()) == ["before"]
