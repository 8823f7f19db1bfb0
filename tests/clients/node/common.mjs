// Shared helpers for the scripted Node.js ElevenLabs test clients.
//
// Output contract of every client:
//   stdout: one line `agent: <text>` per agent reply to a user message (with --stdin, the
//           user messages are read from stdin, one a line, and each reply is the bare line:
//           sessiontap probe's --client contract);
//   exit 0 on success; on any failure exit 1 with ONE line `error: ...` on stderr;
//   every wait is bounded (default 15 s, --timeout SECONDS).

import { createInterface } from "node:readline";

export const DEFAULT_MESSAGES = [
  "I need to classify cotton t-shirts for import.",
  "They are made in Vietnam.",
  "The fabric is 100% cotton, knitted.",
  "The declared value is $12,000 for 2,000 units.",
  "The customs officer says the shirts have a printed logo; does that change the HS code?",
];

export const DEFAULT_AGENT_ID = "agent_customs_demo";

export class UsageError extends Error {}

/** Collapse any line breaks so that one reply is one output line. */
export function oneLine(text) {
  return String(text ?? "").replace(/\r\n|\r|\n|\u2028|\u2029/g, " ");
}

/**
 * Parse `--flag value` / `--flag=value` arguments.
 * Returns {behaviour, messages, stdin, timeoutSecs, verbose}.
 */
export function parseArgs(argv, { behaviours, defaultBehaviour }) {
  const out = {
    behaviour: defaultBehaviour,
    messages: DEFAULT_MESSAGES,
    stdin: false,
    timeoutSecs: 15,
    verbose: false,
  };
  const takesValue = new Set(["--behaviour", "--behavior", "--messages", "--timeout"]);
  for (let i = 0; i < argv.length; i++) {
    let arg = argv[i];
    let value;
    const eq = arg.indexOf("=");
    if (arg.startsWith("--") && eq > 0) {
      value = arg.slice(eq + 1);
      arg = arg.slice(0, eq);
    }
    if (arg === "--verbose" || arg === "-v") {
      out.verbose = true;
      continue;
    }
    if (arg === "--stdin") {
      out.stdin = true;
      continue;
    }
    if (arg === "--help" || arg === "-h") {
      throw new UsageError(
        `usage: [--behaviour ${behaviours.join("|")}] [--messages '<JSON list of strings>'] ` +
          "[--stdin] [--timeout SECONDS] [--verbose]",
      );
    }
    if (!takesValue.has(arg)) throw new UsageError(`unknown argument: ${argv[i]}`);
    if (value === undefined) {
      if (i + 1 >= argv.length) throw new UsageError(`${arg} needs a value`);
      value = argv[++i];
    }
    switch (arg) {
      case "--behaviour":
      case "--behavior":
        if (!behaviours.includes(value)) {
          throw new UsageError(`--behaviour must be one of ${behaviours.join(", ")}, not ${JSON.stringify(value)}`);
        }
        out.behaviour = value;
        break;
      case "--messages": {
        let parsed;
        try {
          parsed = JSON.parse(value);
        } catch (e) {
          throw new UsageError(`--messages is not valid JSON: ${e.message}`);
        }
        if (!Array.isArray(parsed) || parsed.length === 0 || !parsed.every((m) => typeof m === "string")) {
          throw new UsageError("--messages must be a non-empty JSON list of strings");
        }
        out.messages = parsed;
        break;
      }
      case "--timeout": {
        const n = Number(value);
        if (!Number.isFinite(n) || n <= 0) throw new UsageError(`--timeout must be a positive number, not ${JSON.stringify(value)}`);
        out.timeoutSecs = n;
        break;
      }
    }
  }
  return out;
}

/**
 * The user messages in order, with their 1-based number: the --messages list, or with --stdin each
 * non-empty stdin line as it arrives (so a reply goes out before the next line is read).
 */
export async function* userMessages(opts) {
  if (!opts.stdin) {
    yield* opts.messages.map((text, i) => [i + 1, text]);
    return;
  }
  const lines = createInterface({ input: process.stdin, crlfDelay: Infinity });
  let n = 0;
  for await (const line of lines) {
    if (line.trim()) yield [++n, line];
  }
}

/** Print one agent reply as one stdout line: `agent: <text>`, or the bare text under --stdin. */
export function say(opts, reply) {
  process.stdout.write(`${opts.stdin ? "" : "agent: "}${oneLine(reply)}\n`);
}

/** Read ELEVENLABS_BASE_URL / ELEVENLABS_API_KEY / ELEVENLABS_AGENT_ID. */
export function readEnv({ needApiKey }) {
  const baseUrl = (process.env.ELEVENLABS_BASE_URL ?? "").trim();
  if (!baseUrl) throw new UsageError("ELEVENLABS_BASE_URL is not set");
  let parsed;
  try {
    parsed = new URL(baseUrl);
  } catch {
    throw new UsageError(`ELEVENLABS_BASE_URL is not a URL: ${baseUrl}`);
  }
  if (parsed.protocol !== "http:" && parsed.protocol !== "https:") {
    throw new UsageError(`ELEVENLABS_BASE_URL must be http:// or https://, not ${baseUrl}`);
  }
  const apiKey = process.env.ELEVENLABS_API_KEY ?? "";
  if (needApiKey && !apiKey) throw new UsageError("ELEVENLABS_API_KEY is not set");
  const agentId = (process.env.ELEVENLABS_AGENT_ID ?? "").trim() || DEFAULT_AGENT_ID;
  return { baseUrl, apiKey, agentId };
}

/** http(s)://host:port[/prefix] -> ws(s)://host:port[/prefix] (no trailing slash). */
export function wsOriginFromBaseUrl(baseUrl) {
  const u = new URL(baseUrl);
  const scheme = u.protocol === "https:" ? "wss:" : "ws:";
  const path = u.pathname.replace(/\/+$/, "");
  return `${scheme}//${u.host}${path}`;
}

/** Reject after `ms` with an Error(`timed out after Ns waiting for <what>`). */
export function withTimeout(promise, ms, what) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out after ${ms / 1000}s waiting for ${what}`)), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

export function sleep(ms) {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

function describeError(err) {
  if (err == null) return "unknown error";
  if (typeof err !== "object") return String(err);
  let msg = err.message || String(err);
  // elevenlabs-js errors carry statusCode/body
  if (err.statusCode !== undefined && !String(msg).includes(String(err.statusCode))) {
    msg = `HTTP ${err.statusCode}: ${msg}`;
  }
  // Append what the cause chain adds (e.g. fetch failed <- connect ECONNREFUSED 127.0.0.1:PORT).
  const seen = new Set();
  for (let c = err.cause, depth = 0; c && depth < 5; c = c.cause, depth++) {
    const text = typeof c === "object" ? c.message || c.code || "" : String(c);
    if (text && !msg.includes(text) && !seen.has(text)) {
      seen.add(text);
      msg += ` (${text})`;
    }
  }
  return msg.replace(/\s+/g, " ").trim();
}

/**
 * Run `main` with the common failure contract. `cleanup` is always awaited
 * (bounded), then the process is left to exit by itself; a last-resort
 * watchdog (unref'd, so it never keeps the process alive) forces the exit if
 * some handle still lingers.
 */
export async function runClient(main, { cleanup = async () => {}, graceMs = 5000 } = {}) {
  let failed = null;
  try {
    await main();
  } catch (err) {
    failed = err;
  }
  try {
    await withTimeout(Promise.resolve().then(cleanup), graceMs, "cleanup");
  } catch (err) {
    if (!failed) failed = err;
  }
  if (failed) {
    process.stderr.write(`error: ${oneLine(describeError(failed))}\n`);
    process.exitCode = 1;
  } else {
    process.exitCode = 0;
  }
  // Last resort, never keeps the process alive: if a handle still lingers
  // (elevenlabs-js 2.73.0 leaves its request-timeout timer armed when fetch
  // itself throws, e.g. on ECONNREFUSED), exit anyway.
  const code = process.exitCode;
  setTimeout(() => process.exit(code), failed ? 500 : graceMs).unref();
}

/** Debug logger (stderr) only active with --verbose. */
export function makeDebug(verbose) {
  return verbose
    ? (...parts) => process.stderr.write(`debug: ${parts.map((p) => (typeof p === "string" ? p : JSON.stringify(p))).join(" ")}\n`)
    : () => {};
}
