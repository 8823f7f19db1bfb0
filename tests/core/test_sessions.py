"""Tests for addons/core/sessions.py: evidence order, lineage, interleaving, the gap rule."""

from sessiontap.core.analysis import analyse
from sessiontap.core.model import AGENT, HTTP, USER, WEBSOCKET, Call, Turn
from sessiontap.core.sessions import CLIENT, CONVERSATION_ID, INFERRED, LINEAGE, SessionTracker, prefix_hashes


def call(i: int, context: list[Turn], reply: str = "", *, t: float | None = None, **kw) -> Call:
    c = Call(id=f"c{i}", flow_id=f"c{i}", protocol=kw.pop("protocol", HTTP), endpoint="simulate",
             agent_id=kw.pop("agent_id", "ag"), started=t if t is not None else float(i), context=context,
             reply=[Turn(AGENT, reply)] if reply else [], server_conversation=kw.pop("server", f"c{i}"),
             client=kw.pop("client", "127.0.0.1 python-httpx/0.28"), **kw)
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


def test_lineage_links_growing_histories_and_the_analysis_keeps_interleaved_conversations_apart():
    tr = SessionTracker()
    s1 = run(tr, call(1, [u("shirts")], "ok shirts"))
    assert run(tr, call(2, [u("shoes")], "ok shoes")) == s1  # live, nothing yet tells it from a new message
    assert tr.sessions[s1].source == INFERRED
    calls = [call(1, [u("shirts")], "ok shirts"), call(2, [u("shoes")], "ok shoes"),
             call(3, [u("shirts"), a("ok shirts"), u("vietnam")], "vn"),
             call(4, [u("shoes"), a("ok shoes"), u("italy")], "it")]
    result = analyse(calls)
    parts = {s.id: [c.id for c in s.calls] for s in result.sessions}
    assert sorted(parts.values()) == [["c1", "c3"], ["c2", "c4"]]  # their own lineages went on: two conversations
    assert all(s.source == LINEAGE for s in result.sessions) and not result.findings
    assert [s.evidence for s in result.sessions] == [{"new conversation": 1, "context lineage": 1}] * 2


def test_an_overlapping_look_alike_is_never_taken_for_the_next_message():
    tr = SessionTracker()
    first, second = call(1, [u("shirts")], "ok", t=0.0), call(2, [u("shirts")], "ok", t=0.2)  # both in flight
    for c in (first, second):
        tr.assign(c)
    for c in (first, second):
        tr.complete(c)
    assert first.session != second.session
    # their next calls, same words, on their own connections, each go to their own conversation
    first.connection, second.connection = "c-a", "c-b"
    a2 = call(3, [u("shirts"), a("ok"), u("vietnam")], "vn", t=1.0, connection="c-b")
    b2 = call(4, [u("shirts"), a("ok"), u("vietnam")], "vn", t=1.1, connection="c-a")
    assert (run(tr, a2), run(tr, b2)) == (second.session, first.session)
    assert a2.session_evidence == b2.session_evidence == "context lineage"


def test_a_dropped_reply_still_continues_but_a_repeated_first_message_does_not():
    tr = SessionTracker()
    s = run(tr, call(1, [u("shirts")], "ok"))
    assert run(tr, call(2, [u("shirts"), u("vietnam")], "vn")) == s  # history without the agent's reply
    other = call(3, [u("shirts")], "ok", client="10.1.1.1")  # the same first message again: a new conversation
    assert run(tr, other) != s


def test_ws_turns_share_their_socket_session_and_user_id_never_names_one():
    tr = SessionTracker()
    first = call(1, [a("hello")], "r1", protocol=WEBSOCKET, server="conv_1", conversation_id="conv_1", user_id="u7")
    second = call(2, [a("hello"), u("m"), a("r1")], "r2", protocol=WEBSOCKET, server="conv_1",
                  conversation_id="conv_1", user_id="u7", turn_index=2)
    assert run(tr, first) == run(tr, second) == "conv_1"
    assert second.session_evidence == "server conversation"
    tr.close("conv_1", 2.6)
    # a complete conversation later under the same user_id is a conversation of its own
    third = call(3, [a("hello")], "r3", protocol=WEBSOCKET, server="conv_2", conversation_id="conv_2", user_id="u7")
    assert run(tr, third) == "conv_2" and tr.sessions["conv_2"].source == CONVERSATION_ID


def test_one_message_sockets_one_after_another_are_one_inferred_session():
    tr = SessionTracker(session_gap=10)
    ids = []
    for i in range(4):
        c = call(i, [a("hello")], f"r{i}", protocol=WEBSOCKET, server=f"conv_{i}", conversation_id=f"conv_{i}",
                 user_id="u7", t=float(i))
        ids.append(run(tr, c))
        tr.close(f"conv_{i}", i + 0.8)
    assert ids == ["conv_0"] * 4 and tr.sessions["conv_0"].source == INFERRED
    other_user = call(5, [a("hello")], "r", protocol=WEBSOCKET, server="conv_5", conversation_id="conv_5",
                      user_id="u8", t=4.0)
    late = call(9, [a("hello")], "r", protocol=WEBSOCKET, server="conv_9", conversation_id="conv_9", user_id="u7",
                t=30.0)
    assert run(tr, other_user) == "conv_5"  # another user is another conversation
    assert run(tr, late) == "conv_9"  # beyond the gap


def test_order_in_time_needs_the_same_client_and_no_earlier_turns():
    tr = SessionTracker(session_gap=10)
    s = run(tr, call(1, [u("hi")], "hello", t=0))
    assert run(tr, call(2, [u("next")], "hello", t=5)) == s
    assert run(tr, call(3, [u("later")], "hello", t=100)) != s
    assert run(tr, call(4, [u("a")], "h", t=101, client="10.0.0.9 curl/8")) != run(tr, call(5, [u("b")], "h", t=101.2))
    grown = SessionTracker()
    g = run(grown, call(1, [u("x")], "y"))
    run(grown, call(2, [u("x"), a("y"), u("z")], "w"))
    assert run(grown, call(3, [u("new")], "hello", t=3)) != g  # after a real multi-turn conversation: a new one


def test_prefix_hashes_are_prefix_stable():
    turns = [u("a"), a("b"), u("c")]
    assert prefix_hashes(turns)[:2] == prefix_hashes(turns[:2])
    assert prefix_hashes([u("a  b")]) == prefix_hashes([u("a b")])


def test_lineage_keys_worked_out_ahead_are_the_ones_the_tracker_would_count():
    from sessiontap.core.model import AGENT, HTTP, USER, Call, Turn
    from sessiontap.core.sessions import SessionTracker, prefix_hashes, work_out_keys

    def call(i: int, context: list) -> Call:
        return Call(f"c{i}", f"f{i}", HTTP, "simulate", "a1", float(i), float(i) + 0.5, context[-1].text,
                    context=context, reply=[Turn(AGENT, f"reply {i}")])

    first = call(1, [Turn(USER, "shirts")])
    outcome = []
    for prepare in (True, False):
        tracker = SessionTracker()
        one = call(1, [Turn(USER, "shirts")])
        two = call(2, [Turn(USER, "shirts"), Turn(AGENT, "reply 1"), Turn(USER, "Vietnam")])
        for c in (one, two):
            if prepare:
                work_out_keys(c)
                assert c.prefix_keys == prefix_hashes(c.context, (c.protocol, c.agent_id))
            tracker.assign(c)
            tracker.complete(c)
        outcome.append((two.session == one.session, two.session_evidence))
    assert outcome[0] == outcome[1] and outcome[0][0], outcome  # joined by lineage either way
    assert first.context_key is None
    work_out_keys(first)
    assert first.carried_key() == prefix_hashes(first.carried_state(), ("http", "a1"))[-1]


def test_a_clients_spans_stay_bounded_as_calls_end_and_calls_that_never_end_are_walked_ever_less_often():
    from sessiontap.core.sessions import SPANS_KEPT

    tr = SessionTracker()
    for i in range(3000):  # live: assigned as the request starts, completed once the answer is in
        c = call(i, [u(f"q{i}")], "ok", declared_session=f"s{i}")
        ended, c.ended = c.ended, None
        tr.assign(c)
        c.ended = ended
        tr.complete(c)
    assert len(tr.spans[c.client]) <= SPANS_KEPT + 1

    class Walked(dict):  # counts the walks over one client's spans
        walks = 0

        def items(self):  # type: ignore[override]
            Walked.walks += 1
            return super().items()

    tr.spans[c.client] = Walked(tr.spans[c.client])
    for i in range(3000):  # never answered: still in flight, so never pruned
        c = call(10_000 + i, [u("x")], declared_session=f"n{i}")
        c.ended = None
        tr.assign(c)
    assert len(tr.spans[c.client]) == 3000 and Walked.walks < 10  # walked as the count doubles, not at every call
