"""Tests for addons/probe/checks.py and scenarios.py on hand-built calls: what passes and fails each check."""

from __future__ import annotations

import pytest

from sessiontap.core.analysis import analyse
from sessiontap.core.decode import HISTORY_FIELD
from sessiontap.core.model import AGENT, HTTP, USER, Call, Finding, Turn
from sessiontap.probe.checks import (
    CONTINUITY_RULES,
    Played,
    because,
    context_grows,
    context_size,
    facts_carried,
    judge,
    mentions,
    message_calls,
    one_session,
)
from sessiontap.probe.lines import LineClient
from sessiontap.probe.run import ProbeError, RunResult, judged, removed_status, table
from sessiontap.probe.scenarios import PRODUCT, Scenario, chosen, scenarios

U, A = (lambda s: Turn(USER, s)), (lambda s: Turn(AGENT, s))
LINES = ("I need to classify cotton t-shirts.", "They are made in Vietnam.", "Which HS code?")
SCENARIO = Scenario("s", "a test case", LINES, (PRODUCT,), ("facts-carried", "one-session", "context-grows"))


def call(i: int, context: list[Turn], reply: str = "ok", status: int | None = 200, **kw) -> Call:
    c = Call(id=f"c{i}", flow_id=f"f{i}", protocol=HTTP, endpoint="simulate", agent_id="ag", started=float(i),
             ended=i + 0.5, context=context, reply=[A(reply)], server_conversation=f"f{i}", status=status,
             user_text=context[-1].text if context else None, declared_session="S", context_field=HISTORY_FIELD,
             **kw)
    return c


def continuing() -> list[Call]:
    return [call(1, [U(LINES[0])], "r1"), call(2, [U(LINES[0]), A("r1"), U(LINES[1])], "r2"),
            call(3, [U(LINES[0]), A("r1"), U(LINES[1]), A("r2"), U(LINES[2])], "r3")]


def test_a_continuing_conversation_passes_each_check():
    outcomes = judge(Played(SCENARIO, analyse(continuing())))
    assert [(o.check, o.passed) for o in outcomes] == [("facts-carried", True), ("one-session", True),
                                                       ("context-grows", True)]
    assert outcomes[2].reason == "1 turn at message 1, 5 at message 3"


def test_a_window_of_the_last_turns_never_shrinks_but_loses_the_product():
    calls = continuing()
    calls[2].context = [U(LINES[1]), A("r2"), U(LINES[2])]
    played = Played(SCENARIO, analyse(calls))
    assert context_grows(played).passed  # 1, 3, 3 turns
    assert facts_carried(played).reason == ("the product ('cotton t-shirts', said in message 1) is not in the "
                                            "context of message 3 (simulation_specification."
                                            "partial_conversation_history: 3 turns)")
    assert one_session(played).reason.startswith("context-reset: context kept only the last 2 of 4 turns")


def test_a_context_that_shrinks_fails_to_grow():
    played = Played(SCENARIO, analyse(continuing()))
    played.calls[2].context = played.calls[2].context[:1]  # judged as recorded: one turn at message 3
    assert context_grows(played).reason == "the context shrank from 3 turns to 1 at message 3"


def test_messages_are_matched_to_answered_calls_in_order_and_a_missing_one_fails():
    calls = continuing()
    failed = call(0, [U(LINES[0])], status=503)
    matched = message_calls([calls[1], failed, calls[0]], LINES)
    assert matched == [calls[0], calls[1], None]  # the failed call carried nothing; no call for message 3
    played = Played(SCENARIO, analyse(calls[:2]))
    assert one_session(played).reason == "message 3 never reached the agent (no answered call carried it)"
    assert context_size(played).reason == "the last message (#3) never reached the agent"


def test_reasons_quote_the_most_telling_finding_first_and_count_the_others():
    found = [Finding("context-reset", "error", "S", [], "went back"), Finding("context-reset", "error", "S", [], "x"),
             Finding("new-conversation-per-message", "error", "S", [], "3 server conversations")]
    assert because(found) == "context-reset: went back (and context-reset ×1, new-conversation-per-message ×1)"
    analysis = analyse(continuing())
    analysis.findings = list(reversed(found))
    assert one_session(Played(SCENARIO, analysis)).reason.startswith("new-conversation-per-message: 3 server")
    assert "context-oversize" not in CONTINUITY_RULES and "repeated-opening" in CONTINUITY_RULES


def test_mentions_ignore_case_and_spacing():
    assert mentions([U("Cotton   T-Shirts from Vietnam")], "cotton t-shirts")
    assert not mentions([U("cotton"), U("t-shirts")], "cotton t-shirts")


def test_removed_status_comes_from_the_upstream_error_finding_of_a_simulate_call():
    analysis = analyse([call(1, [U(LINES[0])], status=410)])
    assert removed_status(analysis) == 410
    assert removed_status(analyse([call(1, [U(LINES[0])], status=500)])) is None
    # A 404 later in a conversation is that conversation's upstream failure, not the endpoint gone.
    later = continuing()[:2] + [call(3, continuing()[2].context, status=404)]
    assert removed_status(analyse(later)) is None


def test_scenarios_follow_turns_and_names_are_checked():
    conversation, *_, long = scenarios(3)
    assert len(conversation.lines) == 3 and [f.label for f in conversation.facts] == ["product", "origin"]
    assert len(long.lines) == 12 and long.checks[0] == "context-size"
    assert len(scenarios(7)[0].lines) == 7
    assert [s.name for s in chosen("all")] == ["conversation", "product", "officer", "persistence", "context-size"]
    with pytest.raises(ValueError, match="unknown scenario 'chat'"):
        chosen("chat")
    with pytest.raises(ValueError, match="from 2 to 50"):
        scenarios(1)


def test_the_table_has_a_row_per_check_a_column_per_protocol_and_a_line_per_failure(tmp_path):
    played = Played(SCENARIO, analyse(continuing()))
    ok = RunResult("s", "http", tmp_path, judge(played))
    bad = RunResult("s", "websocket", tmp_path, [o if o.check != "one-session" else
                                                 type(o)(o.check, False, "context-reset: gone") for o in ok.outcomes])
    assert table([ok, bad], [SCENARIO]) == [
        "s: a test case",
        "  check          http  websocket",
        "  facts-carried  pass  pass",
        "  one-session    pass  FAIL",
        "  context-grows  pass  pass",
        "    websocket one-session: context-reset: gone",
        "",
        "5 of 6 checks passed, 1 failed",
    ]


def test_a_run_is_judged_from_its_analysis_and_from_what_the_client_did(tmp_path):
    client = LineClient(LINES, replies=["r1", "r2", "r3"])
    run = judged(SCENARIO, None, tmp_path, analyse(continuing()), client, 8000, mask=str.upper)
    assert (run.protocol, run.passed, run.gone) == ("http", True, None)  # named for what the client spoke
    assert run.outcomes[0].reason == "PRODUCT: IN THE CONTEXT OF EVERY LATER MESSAGE"  # masked like the verdict
    with pytest.raises(ProbeError, match="^s: asked for websocket, the client spoke http; give --protocol http"):
        judged(SCENARIO, "websocket", tmp_path, analyse(continuing()), client, 8000)
    with pytest.raises(ProbeError, match="^s over http: interrupted after 1 of 3 replies"):
        judged(SCENARIO, "http", tmp_path, analyse(continuing()), LineClient(LINES, replies=["r1"]), 8000)
    died = LineClient(LINES, failure="the client exited (code 1) before replying to message 2")
    with pytest.raises(ProbeError, match="^s over http: the client exited .* message 2 .recorded so far: "):
        judged(SCENARIO, "http", tmp_path, analyse(continuing()), died, 8000)
    gone = judged(SCENARIO, "http", tmp_path, analyse([call(1, [U(LINES[0])], status=404)]), died, 8000)
    assert gone.gone == 404 and not gone.passed  # a removed endpoint explains the client's death
    assert {o.reason for o in gone.outcomes} == {"simulate-conversation answered HTTP 404: the endpoint is gone"}
    removed = analyse([call(1, [U(LINES[0])], status=404)])
    with pytest.raises(ProbeError, match="^s: asked for websocket, the client spoke http"):  # not gone: the wrong half
        judged(SCENARIO, "websocket", tmp_path, removed, LineClient(LINES, replies=["r1", "r2", "r3"]), 8000)


def test_an_oversize_context_fails_context_size_over_http_but_not_on_the_servers_own_transcript():
    from dataclasses import replace

    from sessiontap.core.model import CONTEXT, WEBSOCKET
    from sessiontap.core.settings import DEFAULTS

    tight = replace(DEFAULTS, max_context_tokens=5)
    http = Played(SCENARIO, analyse(continuing(), settings=tight), max_context_tokens=5)
    assert not context_size(http).passed and context_size(http).reason.startswith("context-oversize: ")
    sockets = continuing()
    for c in sockets:  # one socket: the server's transcript is the context
        c.protocol, c.endpoint, c.server_conversation, c.context_field = WEBSOCKET, "conversation", "f1", ""
    websocket = Played(SCENARIO, analyse(sockets, settings=tight), max_context_tokens=5)
    assert "context-oversize" in [f.rule for f in websocket.analysis.findings]
    outcome = context_size(websocket)
    assert outcome.passed and "over it: the server's transcript, for the agent to trim" in outcome.reason
    sockets[2].context = [*sockets[2].context[:-1], Turn(CONTEXT, "HS code notes " * 20), sockets[2].context[-1]]
    flooded = Played(SCENARIO, analyse(sockets, settings=tight), max_context_tokens=5)
    assert context_size(flooded).reason.startswith("the client's contextual updates alone are ~")
