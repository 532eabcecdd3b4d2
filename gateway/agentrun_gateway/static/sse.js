// A run's Server-Sent Events read with fetch() and a ReadableStream.
//
// EventSource cannot send an Authorization header, and the gateway never takes a token in a
// URL, so the page parses the stream itself. After a drop (network, gateway restart, or the
// gateway's own `error` event) it reconnects with the Last-Event-ID header: the gateway then
// sends exactly the entries after that id, so nothing is lost or shown twice.

import * as api from "./api.js";

const TERMINAL = new Set(["succeeded", "failed", "stopped", "deleted"]);

/** Whether an event ends the stream: the gateway closes the response after it. */
export function isTerminal(event) {
  return event.type === "status" && TERMINAL.has(event.status);
}

/** Split SSE text into events; returns [events, rest] where rest is an incomplete tail. */
export function parse(text, state) {
  const events = [];
  let start = 0;
  for (;;) {
    const lf = text.indexOf("\n", start);
    const cr = text.indexOf("\r", start);
    let end = lf < 0 ? cr : cr < 0 ? lf : Math.min(lf, cr);
    if (end < 0) break;
    if (text[end] === "\r" && end === text.length - 1) break; // maybe a \r\n split across chunks
    const line = text.slice(start, end);
    start = end + (text[end] === "\r" && text[end + 1] === "\n" ? 2 : 1);
    if (line === "") {
      if (state.data.length) events.push({ id: state.lastId, event: state.event || "message", data: state.data.join("\n") });
      state.data = [];
      state.event = "";
      continue;
    }
    if (line.startsWith(":")) continue; // comment: the heartbeat
    const colon = line.indexOf(":");
    const field = colon < 0 ? line : line.slice(0, colon);
    let value = colon < 0 ? "" : line.slice(colon + 1);
    if (value.startsWith(" ")) value = value.slice(1);
    if (field === "data") state.data.push(value);
    else if (field === "event") state.event = value;
    else if (field === "id" && !value.includes("\0")) state.lastId = value;
  }
  return [events, text.slice(start)];
}

/**
 * Follow a run's stream until its terminal event or until `signal` aborts.
 * onEvent(event) gets each event's parsed data; onState(state, detail) hears "live",
 * "reconnecting" (detail: why) and "ended"; a 4xx answer other than 401 ends with "failed".
 */
export async function follow(namespace, name, { onEvent, onState = () => {}, signal }) {
  const state = { lastId: "", event: "", data: [] };
  let resumeFrom = ""; // the id of the last event handed on: where a reconnect starts
  let delay = 250;
  while (!signal.aborted) {
    let why = "the connection dropped";
    try {
      const headers = { Accept: "text/event-stream" };
      if (resumeFrom) headers["Last-Event-ID"] = resumeFrom;
      const response = await api.request(api.runsPath(namespace, name, "stream"), { headers, signal });
      if (!response.ok) {
        const error = await api.errorOf(response);
        if (response.status < 500 && response.status !== 429) {
          onState("failed", error.message);
          return;
        }
        throw new Error(error.message);
      }
      onState("live");
      const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
      let buffer = "";
      let lost = null;
      state.lastId = resumeFrom;
      state.event = "";
      state.data = [];
      while (lost === null) {
        const { value, done } = await reader.read();
        if (done) {
          lost = "the gateway closed the stream";
          break;
        }
        let events;
        [events, buffer] = parse(buffer + value, state);
        for (const raw of events) {
          let event;
          try {
            event = JSON.parse(raw.data);
          } catch {
            continue;
          }
          delay = 250;
          if (raw.event === "error") { // the gateway lost Redis: it says so, then closes
            lost = event.message || "the gateway lost the stream";
            break;
          }
          if (raw.id) resumeFrom = raw.id;
          onEvent(event);
          if (isTerminal(event)) {
            reader.cancel().catch(() => {});
            onState("ended");
            return;
          }
        }
      }
      why = lost;
      reader.cancel().catch(() => {});
    } catch (error) {
      if (signal.aborted) return;
      why = error && error.message ? error.message : String(error);
    }
    if (signal.aborted) return;
    onState("reconnecting", why);
    await sleep(delay, signal);
    delay = Math.min(delay * 2, 8000);
  }
}

function sleep(ms, signal) {
  return new Promise((resolve) => {
    const done = () => {
      clearTimeout(timer);
      signal.removeEventListener("abort", done);
      resolve();
    };
    const timer = setTimeout(done, ms);
    signal.addEventListener("abort", done);
  });
}
