// sessiontap's proxy preload for a Node client run by `sessiontap record` in regular mode: HTTPS_PROXY honoured.
//
// Node 20's own fetch (its bundled undici), `https.request` and the `ws` package ignore
// HTTPS_PROXY, so without this a Node client would talk to ElevenLabs around the proxy, unrecorded.
// All of them open their TLS connections with `tls.connect` at call time, so this patches that one
// function: a TLS connection to a host that NO_PROXY does not exempt (and not to this machine),
// made without a socket of its own, runs instead over an HTTP CONNECT tunnel through the proxy.
// Clients that already use a proxy (an agent, undici's ProxyAgent, NODE_USE_ENV_PROXY on newer
// Node) pass their own tunnelled socket and are left alone. Plain http:// and ws:// are not
// tunnelled: the ElevenLabs API is HTTPS only. Loaded with `--require` (record adds it to
// NODE_OPTIONS, keeping the user's own options); with no proxy variable set it installs nothing.
// It prints nothing and never throws: a connection it cannot tunnel fails as a connection does.
"use strict";

const PROXY_VARS = ["https_proxy", "HTTPS_PROXY", "http_proxy", "HTTP_PROXY"];
// The proxy-side TCP socket of a tunnelled TLS socket, for the code trace (preload.cjs): its local port is the
// client port the proxy sees, where the TLS socket over a tunnel has no port of its own.
const TUNNEL = Symbol.for("sessiontap.tunnel");
const MAX_HEAD = 16384; // bytes of the proxy's CONNECT reply we wait for before giving up

if (PROXY_VARS.some((name) => process.env[name])) {
  try {
    install();
  } catch (_) {
    // never break the client
  }
}

function install() {
  const net = require("net");
  const tls = require("tls");
  const { Duplex } = require("stream");

  /** The proxy for TLS connections as {host, port, auth}, or null (unset, or not an http:// proxy). */
  function proxyFor() {
    // like undici's EnvHttpProxyAgent: https_proxy, else http_proxy; lower case first
    const value = PROXY_VARS.map((name) => process.env[name]).find((v) => v && v.trim());
    if (!value) return null;
    let url;
    try {
      url = new URL(/^[a-z][a-z0-9+.-]*:\/\//i.test(value.trim()) ? value.trim() : `http://${value.trim()}`);
    } catch (_) {
      return null;
    }
    if (url.protocol !== "http:" || !url.hostname) return null; // an https:// or socks proxy: not ours to speak
    const auth = url.username ? `${decodeURIComponent(url.username)}:${decodeURIComponent(url.password)}` : "";
    return { host: url.hostname.replace(/^\[|\]$/g, ""), port: Number(url.port) || 80, auth };
  }

  function isLocal(host) {
    const h = host.toLowerCase().replace(/^\[|\]$/g, "").replace(/\.$/, "");
    return h === "localhost" || h.endsWith(".localhost") || h === "::1" || /^127\./.test(h) || h === "0.0.0.0";
  }

  /** NO_PROXY as curl and undici read it: `*`, or names matching the host or a parent domain, optionally `:port`. */
  function exempt(host, port) {
    const value = process.env.no_proxy || process.env.NO_PROXY || "";
    const h = host.toLowerCase().replace(/^\[|\]$/g, "").replace(/\.$/, "");
    for (const raw of value.split(/[\s,]+/)) {
      let entry = raw.trim().toLowerCase();
      if (!entry) continue;
      if (entry === "*") return true;
      const m = /^(.*?)(?::(\d+))?$/.exec(entry.replace(/^\[([^\]]*)\](?=:|$)/, "$1"));
      if (m && m[2] && !net.isIP(entry)) {
        if (Number(m[2]) !== port) continue;
        entry = m[1];
      }
      entry = entry.replace(/^\*?\./, "").replace(/\.$/, "");
      if (h === entry || h.endsWith(`.${entry}`)) return true;
    }
    return false;
  }

  /** A Duplex that is a byte stream to host:port through the proxy's CONNECT; writes wait until the tunnel is up. */
  class Tunnel extends Duplex {
    constructor(proxy, host, port, options) {
      super({ allowHalfOpen: false });
      this.authority = `${net.isIPv6(host) ? `[${host}]` : host}:${port}`;
      this.proxyName = `${proxy.host}:${proxy.port}`;
      this.open = false;
      this.held = null; // the write waiting for the tunnel ([chunk, callback]); the stream queues the rest
      this.head = Buffer.alloc(0);
      this.raw = net.connect({
        host: proxy.host,
        port: proxy.port,
        noDelay: options.noDelay,
        keepAlive: options.keepAlive,
        keepAliveInitialDelay: options.keepAliveInitialDelay,
      });
      const auth = proxy.auth ? `Proxy-Authorization: Basic ${Buffer.from(proxy.auth).toString("base64")}\r\n` : "";
      this.raw.once("connect", () => {
        this.raw.write(`CONNECT ${this.authority} HTTP/1.1\r\nHost: ${this.authority}\r\n${auth}\r\n`);
      });
      this.onHead = (chunk) => this.readHead(chunk);
      this.raw.on("data", this.onHead);
      this.raw.on("error", (err) => this.destroy(this.open ? err : this.unreachable(err)));
      this.ended = false; // the proxy's end of the tunnel was passed on: the stream ends by itself
      this.raw.on("end", () => {
        if (!this.open) return this.destroy(this.refused("closed the connection"));
        this.ended = true;
        this.push(null);
      });
      this.raw.on("close", () => {
        if (!this.ended) this.destroy(this.open ? undefined : this.refused("closed the connection"));
      });
    }

    unreachable(err) {
      const e = new Error(`cannot reach the proxy ${this.proxyName} for ${this.authority}: ${err.message}`);
      e.code = err.code;
      e.cause = err;
      return e;
    }

    refused(why) {
      const e = new Error(`the proxy ${this.proxyName} refused CONNECT ${this.authority}: ${why}`);
      e.code = "ERR_PROXY_TUNNEL";
      return e;
    }

    readHead(chunk) {
      this.head = Buffer.concat([this.head, chunk]);
      const end = this.head.indexOf("\r\n\r\n");
      if (end < 0) {
        if (this.head.length > MAX_HEAD) this.destroy(this.refused("reply header too large"));
        return;
      }
      const status = this.head.subarray(0, this.head.indexOf("\r\n")).toString("latin1");
      if (!/^HTTP\/1\.[01] 2\d\d\b/.test(status)) {
        this.destroy(this.refused(status || "empty reply"));
        return;
      }
      const rest = this.head.subarray(end + 4);
      this.head = null;
      this.open = true;
      this.raw.off("data", this.onHead);
      this.raw.on("data", (data) => {
        if (!this.push(data)) this.raw.pause();
      });
      if (rest.length) this.push(rest);
      if (this.held) {
        const [data, callback] = this.held;
        this.held = null;
        this.raw.write(data, callback);
      }
    }

    _read() {
      if (this.open) this.raw.resume();
    }

    _write(chunk, encoding, callback) {
      if (this.open) this.raw.write(chunk, encoding, callback);
      else this.held = [chunk, callback];
    }

    _final(callback) {
      this.raw.end();
      callback();
    }

    _destroy(err, callback) {
      this.raw.destroy();
      if (this.held) this.held[1](err || this.refused("closed before the tunnel was up"));
      this.held = null;
      callback(err);
    }
  }

  /** tls.connect's arguments as it reads them: [options, callback] (its options merged over port and host). */
  function connectArgs(args) {
    const [options, callback] = net._normalizeArgs(args);
    const extra = [args[1], args[2]].find((a) => a !== null && typeof a === "object");
    return [extra ? { ...options, ...extra } : options, callback];
  }

  /** [the options to connect with instead, over a tunnel, or null to connect as asked; the callback]. */
  function tunnelled([options, callback]) {
    if (!options || typeof options !== "object" || options.socket || options.path) return [null, callback];
    const host = typeof options.host === "string" && options.host ? options.host : "localhost";
    const port = Number(options.port) || 443;
    const proxy = isLocal(host) || exempt(host, port) ? null : proxyFor();
    if (!proxy) return [null, callback];
    const socket = new Tunnel(proxy, host, port, options);
    const servername = options.servername || (net.isIP(host) ? undefined : host);
    return [{ ...options, host, port, socket, servername }, callback];
  }

  const connect = tls.connect;
  tls.connect = function (...args) {
    let through = null;
    let callback;
    try {
      [through, callback] = tunnelled(connectArgs(args));
    } catch (_) {
      through = null;
    }
    if (!through) return connect.apply(this, args);
    let tlsSocket;
    try {
      tlsSocket = callback ? connect.call(this, through, callback) : connect.call(this, through);
    } catch (err) {
      through.socket.destroy(); // as a direct connect would have, it throws; the tunnel goes too
      throw err;
    }
    tlsSocket[TUNNEL] = through.socket.raw;
    if (through.timeout) tlsSocket.setTimeout(through.timeout); // tls.connect applies it only to sockets it opens
    forward(tlsSocket, through.socket.raw);
    return tlsSocket;
  };

  /** The TCP settings a client makes on its TLS socket reach the proxy-side socket, as they would a direct one's.
   *
   * A TLS socket over a stream has no TCP handle: without this an idle keep-alive socket that the client
   * unrefs (Node's agent, undici) would keep the process alive, and setNoDelay would not disable Nagle. */
  function forward(tlsSocket, raw) {
    for (const name of ["ref", "unref", "setNoDelay", "setKeepAlive"]) {
      const own = tlsSocket[name];
      tlsSocket[name] = function (...args) {
        try {
          raw[name](...args);
        } catch (_) {
          // the raw socket is gone: nothing to set
        }
        return own.apply(this, args);
      };
    }
  }
  require("module").syncBuiltinESMExports(); // `import { connect } from "tls"` sees the patched one too
}
