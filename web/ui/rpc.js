// JSON-RPC 2.0 over the daemon's WebSocket, with reconnection.
//
// The page is served by the daemon itself, so the socket is always ws://<this host>/ws: the
// browser sends the HttpOnly token cookie that `thrum ui`'s link set, and the Origin the daemon
// expects. The daemon keeps its token across restarts (.thrum/var/ws.token), so after a restart
// the same page simply reconnects; only if the token was replaced do we have to send the person
// back to `thrum ui`.

export class RpcError extends Error {
  constructor(code, message, data) {
    super(message);
    this.code = code;
    this.data = data;
  }
}

const REQUEST_TIMEOUT_MS = 30000;
const MAX_BATCH = 100;
const BACKOFF_MS = [500, 1000, 2000, 4000, 8000, 10000];

/**
 * Events (EventTarget): "state" {state, detail}, "notification" {method, params}, "ready".
 * States: connecting -> connected -> reconnecting -> connected ...; "unauthorized" when the
 * token is no longer accepted; "failed" when the post-connect setup was refused.
 */
export class Connection extends EventTarget {
  constructor(setup) {
    super();
    this.setup = setup;        // async (conn) => void, run after every (re)connect
    this.ws = null;
    this.nextId = 1;
    this.pending = new Map();  // id -> {resolve, reject, timer}
    this.state = "connecting";
    this.attempt = 0;
    this.retryTimer = null;
    this.everConnected = false;
  }

  start() {
    this._open();
    // A laptop waking up or a tab coming back: try at once instead of waiting out the backoff.
    window.addEventListener("online", () => this.retryNow());
    document.addEventListener("visibilitychange", () => {
      if (document.visibilityState === "visible" && this.state !== "connected") this.retryNow();
    });
  }

  retryNow() {
    if (this.ws && this.ws.readyState <= WebSocket.OPEN) return;
    clearTimeout(this.retryTimer);
    this._open();
  }

  _setState(state, detail = {}) {
    this.state = state;
    this.dispatchEvent(new CustomEvent("state", { detail: { state, ...detail } }));
  }

  _open() {
    const scheme = location.protocol === "https:" ? "wss:" : "ws:";
    let ws;
    try {
      ws = new WebSocket(`${scheme}//${location.host}/ws`);
    } catch (err) {
      this._scheduleRetry(String(err));
      return;
    }
    this.ws = ws;
    if (this.everConnected) this._setState("reconnecting", { attempt: this.attempt, connecting: true });
    ws.onopen = async () => {
      try {
        await this.setup(this);
      } catch (err) {
        // A refused setup (e.g. user.register) is not cured by retrying quickly: say why, retry slowly.
        this._setState("failed", { message: err.message || String(err) });
        this.attempt = BACKOFF_MS.length - 1;
        ws.close(4000, "setup failed");
        return;
      }
      if (this.ws !== ws) return;
      this.attempt = 0;
      const wasConnected = this.everConnected;
      this.everConnected = true;
      this._setState("connected", { reconnected: wasConnected });
      this.dispatchEvent(new CustomEvent("ready", { detail: { reconnected: wasConnected } }));
    };
    ws.onmessage = (ev) => this._onMessage(ev.data);
    ws.onclose = (ev) => {
      if (this.ws !== ws) return;
      this.ws = null;
      this._failPending("the connection to the daemon was lost");
      if (this.state === "failed") {
        this._scheduleRetry(this.lastReason);
        return;
      }
      const reason = ev.code === 1001 ? "the daemon stopped" : "the daemon is not reachable";
      this._checkAccess().then((unauthorized) => {
        if (unauthorized) this._setState("unauthorized");
        this._scheduleRetry(reason, unauthorized);
      });
    };
  }

  // A WebSocket handshake refused with 401 looks exactly like a daemon that is down, so ask
  // over plain HTTP: 401 means our token is gone; a network error means the daemon is.
  async _checkAccess() {
    try {
      const res = await fetch("/", { method: "HEAD", cache: "no-store", credentials: "same-origin" });
      return res.status === 401;
    } catch {
      return false;
    }
  }

  _scheduleRetry(reason, unauthorized = false) {
    const base = BACKOFF_MS[Math.min(this.attempt, BACKOFF_MS.length - 1)];
    const delay = Math.round(base * (0.8 + Math.random() * 0.4)); // jitter: tabs do not stampede a restart
    this.attempt += 1;
    this.lastReason = reason;
    if (!unauthorized && this.state !== "failed") {
      this._setState("reconnecting", { attempt: this.attempt, reason, retryAt: Date.now() + delay });
    }
    clearTimeout(this.retryTimer);
    this.retryTimer = setTimeout(() => this._open(), delay);
  }

  _failPending(message) {
    for (const [, p] of this.pending) {
      clearTimeout(p.timer);
      p.reject(new RpcError(-1, message));
    }
    this.pending.clear();
  }

  _onMessage(text) {
    let msg;
    try {
      msg = JSON.parse(text);
    } catch {
      return;
    }
    for (const item of Array.isArray(msg) ? msg : [msg]) {
      if (item && item.id !== undefined && item.id !== null && this.pending.has(item.id)) {
        const p = this.pending.get(item.id);
        this.pending.delete(item.id);
        clearTimeout(p.timer);
        if (item.error) p.reject(new RpcError(item.error.code, item.error.message, item.error.data));
        else p.resolve(item.result);
      } else if (item && item.method) {
        this.dispatchEvent(new CustomEvent("notification", { detail: item }));
      }
    }
  }

  _request(method, params) {
    const id = this.nextId++;
    const promise = new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.pending.delete(id);
        reject(new RpcError(-2, `no answer from the daemon to ${method}`));
      }, REQUEST_TIMEOUT_MS);
      this.pending.set(id, { resolve, reject, timer });
    });
    return [{ jsonrpc: "2.0", id, method, params: params || {} }, promise];
  }

  /** One request; resolves with its result, rejects with an RpcError. */
  call(method, params) {
    if (!this.ws || this.ws.readyState !== WebSocket.OPEN) {
      return Promise.reject(new RpcError(-1, "not connected to the daemon"));
    }
    const [req, promise] = this._request(method, params);
    this.ws.send(JSON.stringify(req));
    return promise;
  }

  /**
   * Several requests in one frame (one round trip). Resolves with [{result} | {error}] in order;
   * a failure of one request does not fail the others.
   */
  batch(calls) {
    if (!calls.length) return Promise.resolve([]);
    if (!this.ws || this.ws.readyState !== WebSocket.OPEN) {
      return Promise.reject(new RpcError(-1, "not connected to the daemon"));
    }
    const promises = [];
    for (let i = 0; i < calls.length; i += MAX_BATCH) { // the daemon takes at most 100 per batch
      const reqs = [];
      for (const [method, params] of calls.slice(i, i + MAX_BATCH)) {
        const [req, promise] = this._request(method, params);
        reqs.push(req);
        promises.push(promise.then((result) => ({ result }), (error) => ({ error })));
      }
      this.ws.send(JSON.stringify(reqs));
    }
    return Promise.all(promises);
  }
}
