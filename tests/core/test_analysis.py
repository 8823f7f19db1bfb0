"""Tests for the continuity analysis (addons/core/analysis.py, rules.py, contextdiff.py) and `check`."""

from __future__ import annotations

import json

from hypothesis import given
from hypothesis import strategies as st

from sessiontap.app.capture import analyse_records, read_capture
from sessiontap.core.analysis import Analyzer
from sessiontap.core.contextdiff import apply, diff
from sessiontap.core.model import AGENT, HTTP, USER, WEBSOCKET, Call, Closing, Turn
from tests.conftest import sample

KEY = "sk_test_analysis_key_000"


def by_session(findings_json: dict) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for f in findings_json["findings"]:
        out.setdefault(f["session"], set()).add(f["rule"])
    return out


def test_sample_clients_raise_exactly_their_faults(demo_capture):
    out, proc = demo_capture
    data = json.loads((out / "findings.json").read_text())
    sessions = {s["id"]: s for s in data["sessions"]}
    assert len(sessions) == 4
    rules = by_session(data)
    faulty_http = rules["elevenlabs-session-0"]
    assert {"repeated-opening", "context-ignored", "context-reset", "context-format",
            "context-missing-turn"} <= faulty_http
    ws = [s for s in sessions.values() if s["protocol"] == "websocket"]
    faulty_ws = next(s for s in ws if s["server_conversations"] == 5)
    fixed_ws = next(s for s in ws if s["server_conversations"] == 1)
    assert {"new-conversation-per-message", "repeated-opening"} <= rules[faulty_ws["id"]]
    fixed_http = next(s for s in sessions.values() if s["protocol"] == "http" and s["id"] != "elevenlabs-session-0")
    for fixed in (fixed_http, fixed_ws):
        assert not any(f["severity"] == "error" for f in data["findings"] if f["session"] == fixed["id"])
        assert fixed["resets"] == 0
    assert sessions["elevenlabs-session-0"]["resets"] == 4
    assert "agent repeated its opening line" in proc.stderr
    finding = next(f for f in data["findings"] if f["rule"] == "context-ignored")
    assert "partial_conversation_history" in finding["fix"] and finding["flow_ids"]


def test_live_findings_are_journaled_and_offline_analysis_agrees(demo_capture):
    out, _ = demo_capture
    journal = [json.loads(line) for line in (out / "journal.jsonl").read_text().splitlines()]
    live = sorted((e["rule"], e["session"]) for e in journal if e["event"] == "finding")
    offline = analyse_records(read_capture(out).records)
    assert sorted((f.rule, f.session) for f in offline.findings) == live


def test_check_exit_codes(demo_capture, sessiontap, tmp_path):
    out, _ = demo_capture
    assert sessiontap("check", str(out / "flows.mitm")).code == 1
    garbage = tmp_path / "garbage.mitm"
    garbage.write_bytes(b"not a flow file at all")
    assert sessiontap("check", str(garbage)).code == 2
    assert sessiontap("check", str(tmp_path / "missing.mitm")).code == 2


def test_check_passes_a_fixed_client_capture(simulator, sessiontap):
    run = sessiontap("record", "--mode", "reverse", "--upstream", simulator.url, "--", *sample("fixed-ws"),
                     env={"ELEVENLABS_API_KEY": KEY})
    assert run.code == 0
    checked = sessiontap("check", str(run.out))
    assert checked.code == 0, checked.stdout
    assert "the conversation continues" in checked.stdout


# -- synthetic cases the simulator cannot produce -----------------------------------------------------------

def mk(i: int, context: list[Turn], reply: str, *, session: str | None = "S", t: float | None = None, **kw) -> Call:
    c = Call(id=f"c{i}", flow_id=f"f{i}", protocol=kw.pop("protocol", HTTP), endpoint="simulate", agent_id="ag",
             started=t if t is not None else float(i), context=context, reply=[Turn(AGENT, reply)],
             declared_session=session, server_conversation=kw.pop("server", f"f{i}"),
             user_text=kw.pop("user", context[-1].text if context and context[-1].role == USER else None), **kw)
    c.ended = c.started + 0.1
    return c


def rules_of(calls: list[Call]) -> list[str]:
    an = Analyzer()
    for c in calls:
        an.add_call(c)
    return [f.rule for f in an.result().findings]


U, A = (lambda s: Turn(USER, s)), (lambda s: Turn(AGENT, s))


def test_interleaved_conversations_sharing_an_id_collide_but_sequential_ones_do_not():
    interleaved = [mk(1, [U("shirts")], "r-shirts"), mk(2, [U("shoes")], "r-shoes"),
                   mk(3, [U("shirts"), A("r-shirts"), U("vietnam")], "r2"),
                   mk(4, [U("shoes"), A("r-shoes"), U("italy")], "r3")]
    assert "session-id-collision" in rules_of(interleaved)
    sequential = [mk(1, [U("shirts")], "r-shirts"), mk(2, [U("shirts"), A("r-shirts"), U("vietnam")], "r2")]
    assert "session-id-collision" not in rules_of(sequential)


def test_interleaved_conversations_sharing_an_id_become_two_sessions():
    an = Analyzer()
    for c in [mk(1, [U("shirts")], "r-shirts"), mk(2, [U("shoes")], "r-shoes"),
              mk(3, [U("shirts"), A("r-shirts"), U("vietnam")], "r2"),
              mk(4, [U("shoes"), A("r-shoes"), U("italy")], "r3"),
              mk(5, [U("shoes"), A("r-shoes"), U("italy"), A("r3"), U("and wool?")], "r4")]:
        an.add_call(c)
    result = an.result()
    assert {s.id: [c.id for c in s.calls] for s in result.sessions} == {"S": ["c1", "c3"], "S#2": ["c2", "c4", "c5"]}
    assert [f.rule for f in result.findings] == ["session-id-collision"]  # no reset once the two are apart
    assert result.findings[0].evidence["split_into"] == ["S", "S#2"]
    again = an.result()
    assert [s.id for s in again.sessions] == ["S", "S#2"] and again.findings[0].message == result.findings[0].message
    # one conversation whose history restarts is not split: it is a reset
    reset = Analyzer()
    for c in [mk(1, [U("shirts")], "r1"), mk(2, [U("shirts"), A("r1"), U("b")], "r2"), mk(3, [U("again")], "r3"),
              mk(4, [U("again"), A("r3"), U("c")], "r4")]:
        reset.add_call(c)
    assert [s.id for s in reset.result().sessions] == ["S"]
    assert "context-reset" in [f.rule for f in reset.result().findings]


def test_a_retry_without_any_session_id_stays_in_its_session():
    from sessiontap.core.sessions import SessionTracker

    seed = [A("Hi, I'm Durin.")]  # context with no user turn: lineage cannot tie the calls together
    first = mk(1, seed, "", session=None, status=503, request_digest="d1")
    first.reply = []
    retry = mk(2, seed, "r1", session=None, status=200, request_digest="d1", t=1.5)
    other = mk(3, seed, "r2", session=None, status=200, request_digest="d2", t=2.0)
    tr = SessionTracker()
    for c in (first, retry, other):
        tr.assign(c)
        tr.complete(c)
    assert retry.session == first.session and retry.session_evidence == "retry"
    # a different request with no earlier turns from the same client: the next message, by order in time
    assert other.session == first.session and other.session_evidence == "order in time"
    assert tr.sessions[first.session].source == "inferred"


def test_declared_id_changing_mid_conversation_is_churn():
    calls = [mk(1, [U("shirts")], "r1", session="A"), mk(2, [U("shirts"), A("r1"), U("vietnam")], "r2", session="B")]
    from sessiontap.core.sessions import SessionTracker

    tr = SessionTracker()
    an = Analyzer(tracker=tr)
    for c in calls:
        tr.assign(c)
        tr.complete(c)
        an.add_call(c)
    assert calls[1].session == "A"
    assert [f.rule for f in an.result().findings] == ["session-id-churn"]
    assert "session-id-churn" not in rules_of([mk(1, [U("shirts")], "r1"), mk(2, [U("x")], "r2")])


def test_retry_after_503_is_not_a_reset():
    first = mk(1, [U("shirts")], "", status=503, request_digest="d1")
    first.reply = []
    retry = mk(2, [U("shirts")], "r1", status=200, request_digest="d1")
    found = rules_of([first, retry])
    assert "context-reset" not in found and found.count("upstream-error") == 1
    changed = mk(2, [], "Hello", status=200, request_digest="d2")
    assert "context-reset" in rules_of([mk(1, [U("shirts")], "r1", request_digest="d1"), changed])


def test_reconnect_after_server_error_close_is_upstream_error_not_reset():
    def ws(i, server, ctx, reply):
        return mk(i, ctx, reply, protocol=WEBSOCKET, server=server, opening="Hello" if len(ctx) == 1 else None,
                  user=f"m{i}")
    an = Analyzer()
    an.add_call(ws(1, "conv1", [A("Hello")], "r1"))
    an.close_conversation(Closing("conv1", "f1", 1011, False, 1.6))
    an.add_call(ws(2, "conv2", [A("Hello")], "r2"))
    rules = [f.rule for f in an.result().findings]
    assert "upstream-error" in rules and "context-reset" not in rules and "repeated-opening" not in rules
    an2 = Analyzer()
    an2.add_call(ws(1, "conv1", [A("Hello")], "r1"))
    an2.close_conversation(Closing("conv1", "f1", 1000, True, 1.6))
    an2.add_call(ws(2, "conv2", [A("Hello")], "r2"))
    assert "repeated-opening" in [f.rule for f in an2.result().findings]


def test_long_pause_is_only_info_and_similar_not_equal_greeting_still_repeats():
    calls = [mk(1, [], "Hello! I'm Durin.", user="a", opening="Hello! I'm Durin."),
             mk(2, [], "Hello! I'm Durin.", t=10_000, user="b", opening="Hello! I'm Durin.")]
    an = Analyzer()
    for c in calls:
        an.add_call(c)
    resets = [f for f in an.result().findings if f.rule == "context-reset"]
    assert [f.severity for f in resets] == ["info"]
    greeting = "Hello Bob! I'm Durin, your assistant."
    near = [mk(1, [], greeting, user="a", opening=greeting),
            mk(2, [U("a"), A("x"), U("b")], "Hello Ann! I'm Durin, your assistant.")]
    assert "repeated-opening" in rules_of(near)
    different = [mk(1, [], "Hello Bob! I'm Durin, your assistant.", user="a",
                    opening="Hello Bob! I'm Durin, your assistant."),
                 mk(2, [U("a"), A("x"), U("b")], "Cotton t-shirts from Vietnam: HS 6109.10.")]
    assert "repeated-opening" not in rules_of(different)


def test_removed_endpoint_hint_and_oversize():
    gone = mk(1, [U("a")], "", status=404)
    found = Analyzer()
    found.add_call(gone)
    f = found.result().findings[0]
    assert f.rule == "upstream-error" and "2026-10-31" in f.fix
    big = mk(1, [U("x" * 40_000)], "ok")
    assert "context-oversize" in rules_of([big])
    assert "context-oversize" not in rules_of([mk(1, [U("x" * 100)], "ok")])


def test_newline_transcript_is_not_a_format_fault():
    c = mk(1, [], "Hello", user="hi")
    c.context_formats["conversation_context"] = "transcript"
    assert "context-format" not in rules_of([c])
    c2 = mk(1, [], "Hello", user="hi")
    c2.context_formats["conversation_context"] = "flat-transcript"
    assert "context-format" in rules_of([c2])


turns_st = st.lists(st.builds(Turn, st.sampled_from([USER, AGENT]), st.text(max_size=20)), max_size=30)


@given(turns_st, turns_st)
def test_diff_then_apply_gives_the_new_context_back(old, new):
    d = diff(old, new)
    assert [t.key() for t in apply(old, d)] == [t.key() for t in new]
    assert d.prefix + d.suffix <= min(len(old), len(new))


def test_500_turn_session_is_analysed():
    history: list[Turn] = []
    an = Analyzer()
    for i in range(500):
        history = history + [U(f"message {i}")]
        an.add_call(mk(i, list(history), f"reply {i}"))
        history.append(A(f"reply {i}"))
    result = an.result()
    assert len(result.calls) == 500 and not result.has_errors
    assert len(result.diffs) == 499 and all(d.is_extension for d in result.diffs.values())


def test_the_verdict_names_a_place_in_the_code_once_however_many_sessions_lost_the_context_there():
    from sessiontap.core.analysis import Analysis
    from sessiontap.core.model import Finding

    def reset(session: str, line: int) -> Finding:
        code = [{"file": "client.py", "line": line, "function": "send"}]
        return Finding("context-reset", "error", session, [f"{session}-{line}"], "lost", {"code": code})

    same = [reset(f"s{n}", 10) for n in range(5) for _ in range(2)]  # five sessions, each lost it twice at line 10
    other = [reset("t", 20), reset("t", 20)]
    causes = Analysis([], [], {}, same + other).code_causes()
    assert causes == ["in 5 sessions every call that lost the context was sent at client.py:10 send",
                      "in t every call that lost the context was sent at client.py:20 send"]


def test_a_socket_per_message_session_is_judged_without_walking_its_calls_at_every_call(monkeypatch):
    """new-conversation-per-message keeps its evidence as calls join: its cost per call stays flat."""
    from sessiontap.core import analysis, code, rules

    walks = 0
    real_place = code.place

    def counted(frames):
        nonlocal walks
        walks += 1
        return real_place(frames)

    for module in (analysis, rules, code):
        monkeypatch.setattr(module, "place", counted, raising=False)
    an = Analyzer()
    n = 300
    for i in range(n):
        an.add_call(mk(i, [A("Hello"), U(f"m{i}")], f"r{i}", protocol=WEBSOCKET, server=f"conv{i}", user=f"m{i}",
                       code=[("client.py", 10 + i % 2, "send")]))
    [per_message] = [f for f in an.result().findings if f.rule == "new-conversation-per-message"]
    assert walks <= 2 * n, walks
    assert per_message.message == f"{n} server conversations for one session, one user message each"
    assert per_message.evidence["server_conversations"] == [f"conv{i}" for i in range(n)]
    assert per_message.evidence["opened_at"] == {f"conv{i}": f"client.py:{10 + i % 2} send" for i in range(n)}
    assert per_message.call_ids == [f"c{i}" for i in range(n)]  # raised over all, every later call added


def test_a_reset_says_whether_the_call_sent_nothing_or_only_its_newest_message():
    def reset_message(second: Call) -> str:
        an = Analyzer()
        for c in (mk(1, [U("cotton t-shirts")], "Noted."), second):
            an.add_call(c)
        (reset,) = [f for f in an.result().findings if f.rule == "context-reset"]
        return reset.message

    newest_only = reset_message(mk(2, [U("made in Vietnam")], "Hello"))
    assert newest_only.startswith("context went back to the newest message alone at call #2 of the session")
    nothing = reset_message(mk(2, [], "Hello", user="made in Vietnam"))
    assert nothing.startswith("context went back to empty at call #2 of the session")
    greeting_only = reset_message(mk(2, [A("Hello! How can I help?")], "Hello", user="made in Vietnam"))
    assert greeting_only.startswith("context went back to empty at call #2 of the session")
