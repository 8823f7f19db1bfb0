// sessiontap's code trace for a Node client run by `sessiontap record`: where each connection and request came from.
//
// Loaded with `--require` (record adds it to NODE_OPTIONS, keeping the user's own options) when
// SESSIONTAP_CODE_TRACE names a file. At every TCP connect, and at the write of every plain HTTP
// request, it appends one JSON line: the local port, the time and the client's own frames (file,
// line, function; innermost first; node internals, node_modules and sessiontap's own preloads left
// out; paths relative to the working directory when under it). Over proxy.cjs's tunnel the port is
// that of the tunnel's socket to the proxy, the one the proxy sees. When the client itself looks up
// or connects to an ElevenLabs host (`*.elevenlabs.io`), which a client going through the proxy
// never does, it appends a `resolve` line (the host, the time, the frames; no port) so that `record`
// can say the traffic went around the proxy. It records no variable or argument, prints nothing and
// never throws: the client behaves as without it.
"use strict";

const trace = process.env.SESSIONTAP_CODE_TRACE;
if (trace) {
  try {
    install();
  } catch (_) {
    // never break the client
  }
}

function install() {
  const dns = require("dns");
  const fs = require("fs");
  const net = require("net");
  const path = require("path");
  const cwd = process.cwd();
  const METHOD = /^(GET|POST|PUT|PATCH|DELETE|HEAD|OPTIONS) /;
  const ELEVENLABS = /(^|\.)elevenlabs\.io\.?$/i;
  const TUNNEL = Symbol.for("sessiontap.tunnel"); // proxy.cjs: a tunnelled TLS socket's proxy-side TCP socket
  const STACK_DEPTH = 64; // frames read: a fetch reaches the connect 35 frames below the caller (Node keeps 10)

  function stack() {
    const limit = Error.stackTraceLimit;
    try {
      Error.stackTraceLimit = Math.max(limit || 0, STACK_DEPTH);
      return new Error().stack || "";
    } finally {
      Error.stackTraceLimit = limit;
    }
  }

  function userFrames() {
    const frames = [];
    const lines = stack().split("\n").slice(1);
    for (const line of lines) {
      const m = /at (?:(.*?) \()?(?:file:\/\/)?(\/[^():]+):(\d+):\d+\)?$/.exec(line.trim());
      if (!m) continue;
      const file = m[2];
      if (path.dirname(file) === __dirname || file.includes(`${path.sep}node_modules${path.sep}`)) continue;
      const rel = path.relative(cwd, file);
      frames.push([rel.startsWith("..") ? file : rel, Number(m[3]), m[1] || "<anonymous>"]);
      if (frames.length >= 12) break;
    }
    return frames;
  }

  function append(record) {
    try {
      fs.appendFileSync(trace, JSON.stringify({ ...record, time: Date.now() / 1000, pid: process.pid }) + "\n");
    } catch (_) {
      // the trace must never be noticed
    }
  }

  function write(kind, socket, frames) {
    try {
      const port = socket.localPort || (socket[TUNNEL] && socket[TUNNEL].localPort);
      if (port) append({ kind, port, frames });
    } catch (_) {
      // ignore
    }
  }

  function resolved(host, frames) {
    try {
      if (typeof host === "string" && ELEVENLABS.test(host)) {
        append({ kind: "resolve", host, frames: frames || userFrames() });
      }
    } catch (_) {
      // ignore
    }
  }

  function connectHost(args) {
    const options = Array.isArray(args[0]) ? args[0][0] : net._normalizeArgs(args)[0];
    return options && !options.path ? options.host : "";
  }

  let connecting = 0; // inside a connect: its own lookup is not a second resolve
  const connect = net.Socket.prototype.connect;
  net.Socket.prototype.connect = function (...args) {
    const frames = userFrames();
    this.once("connect", () => write("connect", this, frames));
    try {
      resolved(connectHost(args), frames); // a connect by name resolves it, by dns.lookup or its own lookup option
    } catch (_) {
      // ignore
    }
    connecting += 1;
    try {
      return connect.apply(this, args);
    } finally {
      connecting -= 1;
    }
  };
  const lookup = dns.lookup;
  dns.lookup = function (hostname, ...args) {
    if (!connecting) resolved(hostname);
    return lookup.call(this, hostname, ...args);
  };
  const lookupPromise = dns.promises.lookup;
  dns.promises.lookup = function (hostname, ...args) {
    resolved(hostname);
    return lookupPromise.call(this, hostname, ...args);
  };
  require("module").syncBuiltinESMExports(); // `import { lookup } from "dns"` sees the patched one too
  const socketWrite = net.Socket.prototype.write;
  net.Socket.prototype.write = function (chunk, ...args) {
    try {
      const head = typeof chunk === "string" ? chunk.slice(0, 8) : Buffer.isBuffer(chunk) ? chunk.subarray(0, 8).toString("latin1") : "";
      if (METHOD.test(head)) write("request", this, userFrames());
    } catch (_) {
      // ignore
    }
    return socketWrite.call(this, chunk, ...args);
  };
}
