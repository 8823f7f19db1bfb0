#!/usr/bin/env node
// Scripted conversation over the HTTP simulate-conversation endpoint, using the
// official Node SDK @elevenlabs/elevenlabs-js:
//   client.conversationalAi.agents.simulateConversation(agentId, {
//     simulationSpecification: {simulatedUserConfig, partialConversationHistory: [{role, message, timeInCallSecs}]},
//     newTurnsLimit})
// (the SDK serialises this to simulation_specification.partial_conversation_history[].time_in_call_secs).
//
// Environment: ELEVENLABS_BASE_URL, ELEVENLABS_API_KEY, ELEVENLABS_AGENT_ID (default agent_customs_demo).
// Flags: --behaviour correct|new-conversation|drop-previous-reply, --messages '<JSON list>', --timeout SECONDS,
//        --stdin (the messages from stdin, each reply a bare stdout line: sessiontap probe --client),
//        --verbose (debug lines on stderr).
//   correct              every call sends the whole history so far (user and agent turns) + the new user turn
//   new-conversation     every call sends only the new user turn
//   drop-previous-reply  the whole history without the agent's latest reply + the new user turn
// Output: `agent: <text>` per reply; exit 0, or exit 1 with one `error: ...` line on stderr.

import { ElevenLabsClient } from "@elevenlabs/elevenlabs-js";
import { makeDebug, parseArgs, readEnv, runClient, say, userMessages, withTimeout } from "./common.mjs";

const BEHAVIOURS = ["correct", "new-conversation", "drop-previous-reply"];

function sameTurn(a, b) {
  return a && b && a.role === b.role && String(a.message ?? "").trim() === String(b.message ?? "").trim();
}

/**
 * The reply is the first agent turn that comes after the history we sent.
 * The server may echo the sent history at the start of simulatedConversation,
 * or return only the new turns; handle both.
 */
function findReply(sent, simulated) {
  let start = 0;
  if (simulated.length > sent.length && sent.every((turn, i) => sameTurn(turn, simulated[i]))) {
    start = sent.length;
  }
  for (let i = start; i < simulated.length; i++) {
    const turn = simulated[i];
    if (turn && turn.role === "agent" && typeof turn.message === "string" && turn.message.length > 0) {
      return { turn, echoed: start > 0 };
    }
  }
  return { turn: null, echoed: start > 0 };
}

await runClient(async () => {
  const opts = parseArgs(process.argv.slice(2), { behaviours: BEHAVIOURS, defaultBehaviour: "correct" });
  const debug = makeDebug(opts.verbose);
  const { baseUrl, apiKey, agentId } = readEnv({ needApiKey: true });
  const timeoutMs = opts.timeoutSecs * 1000;

  const client = new ElevenLabsClient({
    baseUrl,
    apiKey,
    maxRetries: 0, // the SDK retries 408/429/5xx twice by default
    timeoutInSeconds: opts.timeoutSecs,
  });

  // The true conversation so far, append-only: turns are never rewritten, so a
  // later call's history starts with exactly the turns of the earlier calls.
  const history = [];
  let clock = 0; // timeInCallSecs is a required integer; keep it non-decreasing
  let latestReplyIndex = -1;

  for await (const [n, text] of userMessages(opts)) {
    clock += 1;
    const userTurn = { role: "user", message: text, timeInCallSecs: clock };

    let sent;
    if (opts.behaviour === "correct") {
      sent = [...history, userTurn];
    } else if (opts.behaviour === "new-conversation") {
      sent = [userTurn];
    } else {
      sent = [...history.filter((_, i) => i !== latestReplyIndex), userTurn];
    }

    const request = {
      simulationSpecification: {
        simulatedUserConfig: {},
        partialConversationHistory: sent,
      },
      newTurnsLimit: 1,
    };
    debug(`call ${n}: POST simulate-conversation with ${sent.length} turn(s)`);
    const controller = new AbortController();
    let response;
    try {
      response = await withTimeout(
        client.conversationalAi.agents.simulateConversation(agentId, request, {
          maxRetries: 0,
          timeoutInSeconds: opts.timeoutSecs,
          abortSignal: controller.signal,
        }),
        timeoutMs + 1000,
        `the simulate-conversation reply to message ${n}`,
      );
    } catch (err) {
      controller.abort();
      let why = err?.message ?? String(err);
      // In Node's fetch the SDK's own timeout surfaces as an ElevenLabsError whose message is "\"timeout\""
      // (it aborts with the string reason "timeout"), not as ElevenLabsTimeoutError.
      if (/^"?timeout"?$/i.test(why) || err?.name === "ElevenLabsTimeoutError") {
        why = `timed out after ${opts.timeoutSecs}s waiting for the reply (${why})`;
      }
      throw new Error(`simulate-conversation call ${n} failed: ${why}`, { cause: err?.cause });
    }

    const simulated = response?.simulatedConversation;
    if (!Array.isArray(simulated)) {
      throw new Error(`simulate-conversation call ${n}: response has no simulated_conversation list`);
    }
    const { turn, echoed } = findReply(sent, simulated);
    debug(`call ${n}: ${simulated.length} turn(s) back, history echoed: ${echoed}`);
    if (!turn) {
      throw new Error(`simulate-conversation call ${n}: no agent turn after the ${sent.length} turn(s) sent`);
    }
    say(opts, turn.message);

    history.push(userTurn);
    const replyTime = Number.isInteger(turn.timeInCallSecs) ? Math.max(turn.timeInCallSecs, clock) : clock;
    clock = replyTime;
    history.push({ role: "agent", message: turn.message, timeInCallSecs: replyTime });
    latestReplyIndex = history.length - 1;
  }
});
