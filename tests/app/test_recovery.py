"""Recovery from the journal: calls come back from their journal lines; torn and saved ones are left out."""

from __future__ import annotations

import json
from pathlib import Path

from mitmproxy.test import tflow

from sessiontap.app.capture import journaled_calls, records_of
from sessiontap.core.model import AGENT, USER, WEBSOCKET, Call, Turn


def call(flow_id: str, n: int) -> Call:
    return Call(id=f"{flow_id}#{n}", flow_id=flow_id, protocol=WEBSOCKET, endpoint="/v1/convai/conversation",
                agent_id="a1", started=100.0 + n, ended=101.0 + n, user_text=f"question {n}",
                reply=[Turn(AGENT, f"answer {n}", 1.0)], context=[Turn(USER, "earlier", 0.0)],
                extra_context={"history": [Turn(USER, "x")]}, server_conversation="conv_1", turn_index=n,
                code=[("client.py", 12, "ask")], session="s1")


def test_a_call_comes_back_whole_from_its_json():
    original = call("f1", 1)
    assert Call.from_json(json.loads(json.dumps(original.to_json()))) == original


def test_journaled_calls_are_those_the_capture_lacks_and_a_torn_line_is_skipped(tmp_path: Path):
    saved = tflow.twebsocketflow()
    lines = []
    for c in (call(saved.id, 1), call("lost", 1), call("lost", 2)):
        line = c.to_json()
        context = line.pop("context")  # as the journal writes it
        line |= {"event": "call", "time": 1.0, "context_turns": len(context), "context_tail": context[-4:]}
        lines.append(json.dumps(line))
    lines += [json.dumps({"event": "note", "flow_id": "lost", "kind": "x", "detail": "y"}),
              json.dumps({"event": "call", "flow_id": "broken"}), lines[-1][: len(lines[-1]) // 2]]
    journal = tmp_path / "journal.jsonl"
    journal.write_text("\n".join(lines) + "\n", encoding="utf-8")
    recovered = journaled_calls(journal, records_of([saved]))
    assert [c.id for c in recovered] == ["lost#1", "lost#2"]
    assert recovered[0].context == [Turn(USER, "earlier", 0.0)] and recovered[1].reply_text == "answer 2"
    assert journaled_calls(tmp_path / "absent.jsonl") == []
