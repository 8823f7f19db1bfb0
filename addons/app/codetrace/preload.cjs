// sessiontap's code trace for a Node client run by `sessiontap record`: where each connection and request came from.
//
// Loaded with `--require` (record adds it to NODE_OPTIONS, keeping the user's own options) when
// SESSIONTAP_CODE_TRACE names a file. At every TCP connect, and at the write of every plain HTTP
// request, it appends one JSON line: the local port, the time and the client's own frames (file,
// line, function; innermost first; node internals, node_modules and this file left out; paths
// relative to the working directory when under it). It records no variable or argument, prints
// nothing and never throws: the client behaves as without it.
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
  const fs = require("fs");
  const net = require("net");
  const path = require("path");
  const cwd = process.cwd();
  const METHOD = /^(GET|POST|PUT|PATCH|DELETE|HEAD|OPTIONS) /;

  function userFrames() {
    const frames = [];
    const lines = (new Error().stack || "").split("\n").slice(1);
    for (const line of lines) {
      const m = /at (?:(.*?) \()?(?:file:\/\/)?(\/[^():]+):(\d+):\d+\)?$/.exec(line.trim());
      if (!m) continue;
      const file = m[2];
      if (file === __filename || file.includes(`${path.sep}node_modules${path.sep}`)) continue;
      const rel = path.relative(cwd, file);
      frames.push([rel.startsWith("..") ? file : rel, Number(m[3]), m[1] || "<anonymous>"]);
      if (frames.length >= 12) break;
    }
    return frames;
  }

  function write(kind, socket, frames) {
    try {
      const port = socket.localPort;
      if (!port) return;
      const line = JSON.stringify({ kind, port, time: Date.now() / 1000, pid: process.pid, frames });
      fs.appendFileSync(trace, line + "\n");
    } catch (_) {
      // the trace must never be noticed
    }
  }

  const connect = net.Socket.prototype.connect;
  net.Socket.prototype.connect = function (...args) {
    const frames = userFrames();
    this.once("connect", () => write("connect", this, frames));
    return connect.apply(this, args);
  };
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
