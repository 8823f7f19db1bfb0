"""Tests for addons/core/sessions.py: evidence order, lineage, interleaving, the gap rule."""

from sessiontap.core.model import AGENT, HTTP, USER, WEBSOCKET, Call, Turn
from sessiontap.core.sessions import CLIENT, CONVERSATION_ID, LINEAGE, SessionTracker, prefix_hashes


def call(i: int, context: list[Turn], reply: str = "", *, t: float | None = None, **kw) -> Call:
    c = Call(id=f"c{i}", flow_id=f"c{i}", protocol=kw.pop("protocol", HTTP), endpoint="simulate",
             agent_id=kw.pop("agent_id", "ag"), started=t if t is not None else float(i), context=context,
             reply=[Turn(AGENT, reply)] if reply else [], server_conversation=kw.pop("server", f"c{i}"),
             client=kw.pop("client", "127.0.0.1:5000"), **kw)
    c.ended = c.started + 0.5
    return c


def run(tracker: SessionTracker, c: Call) -> str:
    sid = tracker.assign(c)
    tracker.complete(c)
    return sid


def u(text: str) -> Turn:
    return Turn(USER, text)


def a(text: str) -> Turn:
    return Turn(AGENT, text)


def test_declared_id_wins():
    tr = SessionTracker()
    assert run(tr, call(1, [u("x")], "y", declared_session="abc")) == "abc"
    assert tr.sessions["abc"].source == CLIENT


def test_lineage_links_growing_histories_and_keeps_interleaved_conversations_apart():
    tr = SessionTracker()
    s1 = run(tr, call(1, [u("shirts")], "ok shirts"))
    s2 = run(tr, call(2, [u("shoes")], "ok shoes"))
    assert s1 != s2
    s1b = run(tr, call(3, [u("shirts"), a("ok shirts"), u("vietnam")], "vn"))
    s2b = run(tr, call(4, [u("shoes"), a("ok shoes"), u("italy")], "it"))
    assert (s1b, s2b) == (s1, s2)
    assert tr.sessions[s1].source == LINEAGE
    assert tr.sessions[s1].calls == 2


def test_ws_turns_share_their_socket_session_and_user_id_names_it():
    tr = SessionTracker()
    first = call(1, [a("hello")], "r1", protocol=WEBSOCKET, server="conv_1", conversation_id="conv_1", user_id="u7")
    second = call(2, [a("hello"), u("m"), a("r1")], "r2", protocol=WEBSOCKET, server="conv_1", conversation_id="conv_1")
    assert run(tr, first) == "user:u7"
    assert run(tr, second) == "user:u7"


def test_conversation_id_when_nothing_else():
    tr = SessionTracker()
    c = call(1, [a("hello")], "r", protocol=WEBSOCKET, server="conv_9", conversation_id="conv_9")
    assert run(tr, c) == "conv_9"
    assert tr.sessions["conv_9"].source == CONVERSATION_ID


def test_gap_rule_joins_contextless_calls_only_within_the_gap():
    tr = SessionTracker(session_gap=10)
    s = run(tr, call(1, [], "hello", t=0))
    assert run(tr, call(2, [], "hello", t=5)) == s
    assert run(tr, call(3, [], "hello", t=100)) != s
    assert run(tr, call(4, [], "hello", t=101, client="127.0.0.1:6000")) != run(tr, call(5, [], "h", t=102))


def test_prefix_hashes_are_prefix_stable():
    turns = [u("a"), a("b"), u("c")]
    assert prefix_hashes(turns)[:2] == prefix_hashes(turns[:2])
    assert prefix_hashes([u("a  b")]) == prefix_hashes([u("a b")])
