#!/usr/bin/env node
// Scripted text-only conversation over the agent WebSocket, using the official
// browser/Node client @elevenlabs/client (`Conversation.startSession`).
//
// Node 20 has no global WebSocket, so `globalThis.WebSocket` is provided by the
// `ws` package (a subclass that bounds the handshake and the closing handshake
// and delivers one message per event-loop turn, as browsers do).
// The session is forced onto the WebSocket transport (`connectionType: "websocket"`,
// `textOnly: true`) and redirected with `origin` = ELEVENLABS_BASE_URL with
// http->ws / https->wss; the SDK then connects to
//   <origin>/v1/convai/conversation?agent_id=<id>&source=js_sdk&version=<sdk version>
// with subprotocol "convai". A public agent needs no API key (ELEVENLABS_API_KEY is not used).
//
// Environment: ELEVENLABS_BASE_URL, ELEVENLABS_AGENT_ID (default agent_customs_demo).
// Flags: --behaviour one-socket|socket-per-message, --messages '<JSON list>', --timeout SECONDS,
//        --stdin (the messages from stdin, each reply a bare stdout line: sessiontap probe --client),
//        --verbose (debug lines on stderr).
//   one-socket          one Conversation session for all user messages
//   socket-per-message  a new session per user message, ended cleanly after its reply
// The agent's opening greeting is not printed (the client waits up to 2 s for it
// after each session starts, before sending).
// Output: `agent: <text>` per reply; exit 0, or exit 1 with one `error: ...` line on stderr.

import WS from "ws";
import { makeDebug, parseArgs, readEnv, runClient, say, sleep, userMessages, withTimeout, wsOriginFromBaseUrl } from "./common.mjs";

const BEHAVIOURS = ["one-socket", "socket-per-message"];
const GREETING_WAIT_MS = 2000;

const sockets = []; // every WebSocket the SDK opened, for counting and cleanup
let debug = () => {};

function socketState(ws) {
  return ["CONNECTING", "OPEN", "CLOSING", "CLOSED"][ws.readyState] ?? String(ws.readyState);
}

function waitClosed(ws, ms) {
  if (ws.readyState === WS.CLOSED) return Promise.resolve();
  return withTimeout(
    new Promise((resolve) => ws.once("close", () => resolve())),
    ms,
    "the WebSocket to close",
  );
}

/** One Conversation session plus an inbox of agent replies. */
class Session {
  constructor(Conversation, { agentId, origin, timeoutMs }) {
    this.Conversation = Conversation;
    this.agentId = agentId;
    this.origin = origin;
    this.timeoutMs = timeoutMs;
    this.inbox = [];
    this.waiter = null;
    this.failure = null;
    this.ending = false;
    this.conversation = null;
    this.socket = null;
    this.conversationId = null;
  }

  fail(err) {
    if (this.failure) return;
    this.failure = err instanceof Error ? err : new Error(String(err));
    if (this.waiter) this.waiter.reject(this.failure);
  }

  onAgentMessage(text) {
    if (this.waiter) {
      const w = this.waiter;
      this.waiter = null;
      w.resolve(text);
    } else {
      this.inbox.push(text);
    }
  }

  /** Next agent message, or null after `ms` when `allowNone`, else an error. */
  nextAgentMessage(ms, what, allowNone = false) {
    if (this.failure) return Promise.reject(this.failure);
    if (this.inbox.length) return Promise.resolve(this.inbox.shift());
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.waiter = null;
        if (allowNone) resolve(null);
        else reject(new Error(`timed out after ${ms / 1000}s waiting for ${what}`));
      }, ms);
      this.waiter = {
        resolve: (v) => {
          clearTimeout(timer);
          resolve(v);
        },
        reject: (e) => {
          clearTimeout(timer);
          this.waiter = null;
          reject(e);
        },
      };
    });
  }

  async start() {
    const before = sockets.length;
    try {
      this.conversation = await withTimeout(
        this.Conversation.startSession({
          agentId: this.agentId,
          connectionType: "websocket",
          textOnly: true,
          origin: this.origin,
          onConnect: ({ conversationId }) => debug(`connected, conversation_id=${conversationId}`),
          onMessage: (m) => {
            debug("onMessage", m);
            if (m && m.role === "agent" && typeof m.message === "string") this.onAgentMessage(m.message);
          },
          onError: (message, context) => {
            debug("onError", message, context ?? null);
            this.fail(new Error(`SDK reported an error: ${message}`));
          },
          onDisconnect: (details) => {
            debug("onDisconnect", details);
            if (!this.ending) {
              const code = details?.closeCode ?? details?.context?.code;
              const why = details?.message || details?.closeReason || details?.reason || "disconnected";
              this.fail(new Error(`session ended unexpectedly (${why}${code !== undefined ? `, close code ${code}` : ""})`));
            }
          },
        }),
        this.timeoutMs,
        "the conversation session to start",
      );
    } catch (err) {
      const opened = sockets.slice(before);
      const lastErr = opened.map((s) => s.lastError).filter(Boolean).pop();
      const msg = err?.message ?? String(err);
      throw new Error(`could not start session: ${msg}${lastErr && !msg.includes(lastErr) ? ` (${lastErr})` : ""}`);
    }
    this.socket = sockets[sockets.length - 1] ?? null;
    this.conversationId = this.conversation.getId();
    // Opening greeting: wait up to 2 s for it and drop it.
    const greeting = await this.nextAgentMessage(Math.min(GREETING_WAIT_MS, this.timeoutMs), "the greeting", true);
    debug(greeting === null ? "no greeting within 2 s" : `greeting ignored: ${greeting}`);
  }

  async ask(text, n) {
    this.inbox.length = 0; // anything unsolicited before this message is not its reply
    if (this.failure) throw this.failure;
    this.conversation.sendUserMessage(text);
    return this.nextAgentMessage(this.timeoutMs, `the agent's reply to message ${n}`);
  }

  async end() {
    if (!this.conversation) return;
    this.ending = true;
    await withTimeout(this.conversation.endSession(), this.timeoutMs, "the session to end");
    if (this.socket) await waitClosed(this.socket, this.timeoutMs);
    debug(`session ${this.conversationId} ended; socket ${this.socket ? socketState(this.socket) : "unknown"}`);
  }
}

await runClient(
  async () => {
    const opts = parseArgs(process.argv.slice(2), { behaviours: BEHAVIOURS, defaultBehaviour: "one-socket" });
    debug = makeDebug(opts.verbose);
    const { baseUrl, agentId } = readEnv({ needApiKey: false });
    const timeoutMs = opts.timeoutSecs * 1000;
    const origin = wsOriginFromBaseUrl(baseUrl);

    // The SDK logs through console.*; keep stdout/stderr to the output contract.
    for (const level of ["log", "info", "warn", "error", "debug"]) {
      console[level] = (...args) => debug(`console.${level}:`, ...args.map((a) => (a instanceof Error ? a.message : a)));
    }

    class NodeWebSocket extends WS {
      constructor(url, protocols, options) {
        super(url, protocols, {
          handshakeTimeout: timeoutMs,
          closeTimeout: Math.min(timeoutMs, 5000),
          allowSynchronousEvents: false,
          ...options,
        });
        this.lastError = null;
        this.on("error", (e) => {
          this.lastError = e?.message ?? String(e);
          debug(`socket error: ${this.lastError}`);
        });
        sockets.push(this);
        debug(`socket #${sockets.length} -> ${url} protocols=${JSON.stringify(protocols ?? [])}`);
      }
    }
    globalThis.WebSocket = NodeWebSocket;

    const { Conversation } = await import("@elevenlabs/client");
    const sessionOpts = { agentId, origin, timeoutMs };

    if (opts.behaviour === "one-socket") {
      const session = new Session(Conversation, sessionOpts);
      await session.start();
      for await (const [n, text] of userMessages(opts)) {
        say(opts, await session.ask(text, n));
      }
      await session.end();
    } else {
      for await (const [n, text] of userMessages(opts)) {
        const session = new Session(Conversation, sessionOpts);
        await session.start();
        say(opts, await session.ask(text, n));
        await session.end();
      }
    }
    debug(`sockets opened: ${sockets.length}`);
  },
  {
    cleanup: async () => {
      // Anything still open (failure paths) is torn down without waiting.
      for (const ws of sockets) {
        if (ws.readyState !== WS.CLOSED) ws.terminate();
      }
      await sleep(0);
    },
  },
);
