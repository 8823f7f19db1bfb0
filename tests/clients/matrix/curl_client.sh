#!/usr/bin/env bash
# curl_client.sh: bash + curl + jq client for the ElevenLabs simulate-conversation endpoint.
#
# Plays ONE scripted customs conversation with the correct behaviour: every call to
#   POST $ELEVENLABS_BASE_URL/v1/convai/agents/$ELEVENLABS_AGENT_ID/simulate-conversation
# (header xi-api-key: $ELEVENLABS_API_KEY) carries the whole history so far, kept in a
# shell variable, plus the new user message. Prints `agent: <text>` per reply (the
# first agent turn after the history sent, echoed or not). Exit 0 on success, 1 with
# one line on stderr on failure.
#
# Usage: curl_client.sh [--messages JSON_LIST] [--timeout SECONDS]
set -uo pipefail

fail() { echo "error: $*" >&2; exit 1; }

MESSAGES='["I need to classify cotton t-shirts for import.","They are made in Vietnam.","The fabric is 100% cotton, knitted.","The declared value is $12,000 for 2,000 units.","The customs officer says the shirts have a printed logo; does that change the HS code?"]'
TIMEOUT=15
while [ $# -gt 0 ]; do
  case "$1" in
    --messages) [ $# -ge 2 ] || fail "--messages needs a value"; MESSAGES=$2; shift 2 ;;
    --timeout) [ $# -ge 2 ] || fail "--timeout needs a value"; TIMEOUT=$2; shift 2 ;;
    -h|--help) sed -n '2,13s/^# \{0,1\}//p' "$0"; exit 0 ;;
    *) fail "unknown argument: $1" ;;
  esac
done
command -v jq >/dev/null || fail "jq is required"
jq -e 'type == "array" and length > 0 and all(type == "string")' <<<"$MESSAGES" >/dev/null 2>&1 \
  || fail "--messages must be a non-empty JSON list of strings"
BASE=${ELEVENLABS_BASE_URL:-}
case "$BASE" in http://*|https://*) BASE=${BASE%/} ;; *) fail "ELEVENLABS_BASE_URL must be set to an http(s):// URL" ;; esac
AGENT=$(jq -rn --arg a "${ELEVENLABS_AGENT_ID:-agent_customs_demo}" '$a | @uri')
URL="$BASE/v1/convai/agents/$AGENT/simulate-conversation"

TMP=$(mktemp -d) || fail "mktemp failed"
trap 'rm -rf "$TMP"' EXIT

# Index of the first turn after the history we sent: len(history) if it was echoed, else 0.
REPLY_FILTER='
  def same($a; $b): $a.role == $b.role and (($a.message // "") | gsub("^\\s+|\\s+$"; "")) == (($b.message // "") | gsub("^\\s+|\\s+$"; ""));
  (.simulated_conversation // error("no simulated_conversation")) as $s
  | (if ($s | length) >= ($h | length) and ([range(0; $h | length) as $i | same($h[$i]; $s[$i])] | all)
     then ($h | length) else 0 end) as $skip
  | [$s[$skip:][] | select(.role == "agent" and ((.message // "") | test("\\S")))][0].message // error("no agent turn after the history")
  | gsub("^\\s+|\\s+$"; "")'

HISTORY='[]'
START=$SECONDS
COUNT=$(jq length <<<"$MESSAGES")
for ((i = 0; i < COUNT; i++)); do
  MESSAGE=$(jq -r ".[$i]" <<<"$MESSAGES")
  HISTORY=$(jq -c --arg m "$MESSAGE" --argjson t $((SECONDS - START)) '. + [{role: "user", message: $m, time_in_call_secs: $t}]' <<<"$HISTORY")
  REQUEST=$(jq -cn --argjson h "$HISTORY" '{simulation_specification: {simulated_user_config: {prompt: {prompt: "You are an importer asking a customs broker how to classify a shipment."}}, partial_conversation_history: $h}, new_turns_limit: 1}')
  STATUS=$(curl -sS --max-time "$TIMEOUT" -o "$TMP/body" -w '%{http_code}' -X POST "$URL" \
    -H "xi-api-key: ${ELEVENLABS_API_KEY:-}" -H 'content-type: application/json' \
    --data-binary "$REQUEST" 2>"$TMP/err") || fail "$(tr '\n' ' ' <"$TMP/err")"
  [ "$STATUS" = 200 ] || fail "HTTP $STATUS from $URL: $(head -c 200 "$TMP/body" | tr '\n' ' ')"
  REPLY=$(jq -r --argjson h "$HISTORY" "$REPLY_FILTER" "$TMP/body" 2>&1) || fail "bad response: $(tr '\n' ' ' <<<"$REPLY")"
  echo "agent: $(tr '\n' ' ' <<<"$REPLY" | sed 's/ $//')"
  HISTORY=$(jq -c --arg m "$REPLY" --argjson t $((SECONDS - START)) '. + [{role: "agent", message: $m, time_in_call_secs: $t}]' <<<"$HISTORY")
done
