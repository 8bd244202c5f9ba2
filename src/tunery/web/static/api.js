// Talking to the tunery API: bearer-token requests and the account's event stream.
//
// The token lives in localStorage under TOKEN_KEY. Every request sends it; a 401 means it
// was revoked or never valid, and is reported through onUnauthorized so the page can ask
// for a new one instead of showing a blank screen.

const TOKEN_KEY = "tunery.token";

export class ApiError extends Error {
  /** An answer the server gave: `status`, `code`, `message`, `hint`, `problems`. */
  constructor(status, detail) {
    super(detail.message || `HTTP ${status}`);
    this.status = status;
    this.code = detail.code || "error";
    this.hint = detail.hint || "";
    this.problems = detail.problems || [];
  }
}

export class UnreachableError extends Error {
  /** The server did not answer at all (stopped, restarting, or the network is down). */
}

export const session = {
  onUnauthorized: () => {},
  get token() {
    return localStorage.getItem(TOKEN_KEY);
  },
  set token(value) {
    if (value) localStorage.setItem(TOKEN_KEY, value);
    else localStorage.removeItem(TOKEN_KEY);
  },
};

function authHeaders(extra = {}) {
  return { Authorization: `Bearer ${session.token}`, ...extra };
}

async function errorFrom(response) {
  let detail = {};
  try {
    const body = await response.json();
    detail = typeof body.detail === "object" && body.detail !== null
      ? body.detail
      : { message: String(body.detail ?? response.statusText) };
  } catch {
    detail = { message: `${response.status} ${response.statusText}` };
  }
  return new ApiError(response.status, detail);
}

/** fetch, with the studio's answers to failure: UnreachableError, 401 reported, ApiError. */
async function send(url, init) {
  let response;
  try {
    response = await fetch(url, init);
  } catch (error) {
    throw new UnreachableError(`cannot reach the server (${error.message})`);
  }
  if (response.status === 401) {
    const error = await errorFrom(response);
    session.onUnauthorized(error);
    throw error;
  }
  if (!response.ok) throw await errorFrom(response);
  return response;
}

/** Call the API; resolves to the parsed body (or text), rejects with ApiError/UnreachableError. */
export async function api(path, { method = "GET", json, form, text = false, headers = {} } = {}) {
  const init = { method, headers: authHeaders(headers) };
  if (json !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(json);
  } else if (form !== undefined) {
    init.body = form;
  }
  const response = await send(`/api/v1${path}`, init);
  if (response.status === 204) return null;
  return text ? response.text() : response.json();
}

/**
 * Follows GET /api/v1/events: every run of the account, live.
 *
 * Reads Server-Sent Events over fetch (EventSource cannot send a bearer token), remembers
 * the last event id and, when the connection drops, reconnects with back-off sending
 * Last-Event-ID so nothing is missed or repeated. `onEvent(kind, data)` gets each event,
 * `onState("live" | "reconnecting", detail)` the connection's state.
 */
export class AccountStream {
  constructor({ onEvent, onState }) {
    this.onEvent = onEvent;
    this.onState = onState;
    this.lastEventId = null;
    this.stopped = false;
    this.controller = null;
  }

  start() {
    this.stop();
    this.stopped = false;
    // A loop still sleeping from an earlier start sees a newer generation and ends.
    this.generation = (this.generation || 0) + 1;
    this.loop(this.generation);
  }

  stop() {
    this.stopped = true;
    this.controller?.abort();
  }

  async loop(generation) {
    const current = () => !this.stopped && this.generation === generation;
    let failures = 0;
    while (current()) {
      try {
        await this.connect(() => {
          failures = 0;
        });
        if (!current()) return;
        failures += 1;
        this.onState("reconnecting", "the server closed the event stream");
      } catch (error) {
        if (!current()) return;
        if (error instanceof ApiError && error.status === 401) return;
        failures += 1;
        this.onState("reconnecting", error.message);
      }
      const delay = Math.min(10000, 500 * 2 ** Math.min(failures, 5));
      await new Promise((resolve) => setTimeout(resolve, delay));
    }
  }

  async connect(onOpen) {
    this.controller = new AbortController();
    const headers = authHeaders({ Accept: "text/event-stream" });
    if (this.lastEventId !== null) headers["Last-Event-ID"] = this.lastEventId;
    const response = await send("/api/v1/events", { headers, signal: this.controller.signal });
    const resumed = this.lastEventId !== null;
    onOpen();
    this.onState("live", resumed ? "resumed" : "connected");
    const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      buffer += value;
      let boundary;
      while ((boundary = buffer.indexOf("\n\n")) >= 0) {
        this.dispatch(buffer.slice(0, boundary));
        buffer = buffer.slice(boundary + 2);
      }
    }
  }

  dispatch(block) {
    let kind = "message";
    let id = null;
    const data = [];
    for (const line of block.split("\n")) {
      if (line.startsWith(":")) continue;
      const colon = line.indexOf(":");
      const field = colon < 0 ? line : line.slice(0, colon);
      const value = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
      if (field === "event") kind = value;
      else if (field === "data") data.push(value);
      else if (field === "id") id = value;
    }
    if (id !== null) this.lastEventId = id;
    if (data.length) this.onEvent(kind, JSON.parse(data.join("\n")));
  }
}

/** Save text or a Blob under `filename` through a temporary link. */
export function saveBlob(blob, filename) {
  const url = URL.createObjectURL(blob);
  followLink(url, filename);
  setTimeout(() => URL.revokeObjectURL(url), 10000);
}

/** Start a browser download of `url` (a signed Hub URL needs no token). */
export function followLink(url, filename = "") {
  const link = document.createElement("a");
  link.href = url;
  link.download = filename;
  link.hidden = true;
  document.body.append(link);
  link.click();
  link.remove();
}
