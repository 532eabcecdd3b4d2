// A run's stream drawn as a conversation: the input, the assistant's text as it arrives
// (Markdown), each tool call folded into a <details> with its result, status lines, and the
// final phase. Events come from sse.follow() in stream order; the same view takes the
// database's events for a run whose stream expired (whole `message` records, no deltas).

import { render } from "./markdown.js";

export const PHASES = {
  succeeded: "Succeeded", failed: "Failed", stopped: "Stopped", running: "Running", requeued: "Queued",
};

function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

function pretty(text) {
  if (typeof text !== "string") return JSON.stringify(text, null, 2);
  try {
    return JSON.stringify(JSON.parse(text), null, 2);
  } catch {
    return text;
  }
}

function oneLine(text, max = 80) {
  const flat = String(text ?? "").replace(/\s+/g, " ").trim();
  return flat.length > max ? flat.slice(0, max - 1) + "…" : flat;
}

export class Transcript {
  /** root: the element to draw in; onPhase(phase, final): the run's phase as the stream tells it. */
  constructor(root, onPhase = () => {}) {
    this.root = root;
    this.onPhase = onPhase;
    this.reset();
  }

  reset() {
    this.root.replaceChildren();
    this.turns = new Map(); // iteration -> {node, body, text}
    this.calls = new Map(); // tool call id -> {node, summary, state, result}
    this.dirty = new Set();
    this.frame = 0;
    this.input = null;
    this.ended = false;
  }

  /** The run's input, shown first (the stream does not carry it). */
  user(text) {
    this.input = text;
    const node = this.message("user", "Input");
    node.body.innerHTML = render(text);
  }

  message(role, label) {
    const node = el("article", `msg ${role}`);
    node.append(el("div", "role", label));
    const body = el("div", "body md");
    node.append(body);
    this.append(node);
    return { node, body };
  }

  append(node) {
    const scroller = this.root.closest(".run") || this.root;
    const atEnd = scroller.scrollHeight - scroller.scrollTop - scroller.clientHeight < 40;
    this.root.append(node);
    if (atEnd) scroller.scrollTop = scroller.scrollHeight;
  }

  turn(iteration) {
    let turn = this.turns.get(iteration);
    if (!turn) {
      const { node, body } = this.message("assistant", "Assistant");
      node.dataset.iteration = String(iteration);
      turn = { node, body, text: "" };
      this.turns.set(iteration, turn);
    }
    return turn;
  }

  /** Re-render changed turns once per frame, not once per token. */
  draw(turn) {
    this.dirty.add(turn);
    if (this.frame) return;
    this.frame = requestAnimationFrame(() => {
      this.frame = 0;
      for (const t of this.dirty) {
        t.body.innerHTML = render(t.text);
        t.node.classList.toggle("empty", !t.text.trim());
      }
      this.dirty.clear();
      const scroller = this.root.closest(".run") || this.root;
      if (scroller.scrollHeight - scroller.scrollTop - scroller.clientHeight < 200) scroller.scrollTop = scroller.scrollHeight;
    });
  }

  call(id, name) {
    let call = this.calls.get(id);
    if (!call) {
      const node = el("details", "tool");
      const summary = el("summary");
      const title = el("span", "tool-name", name || "tool");
      const args = el("span", "tool-args");
      const state = el("span", "tool-state", "running…");
      summary.append(el("span", "tool-label", "Tool call"), title, args, state);
      node.append(summary);
      const argsBlock = el("div", "tool-section");
      argsBlock.append(el("div", "tool-heading", "Arguments"));
      const argsPre = el("pre");
      argsBlock.append(argsPre);
      const resultBlock = el("div", "tool-section");
      resultBlock.append(el("div", "tool-heading", "Result"));
      const result = el("pre", "", "");
      resultBlock.append(result);
      resultBlock.hidden = true;
      node.append(argsBlock, resultBlock);
      node.dataset.id = id;
      this.append(node);
      call = { node, title, args, argsPre, state, result, resultBlock };
      this.calls.set(id, call);
    }
    if (name) call.title.textContent = name;
    return call;
  }

  callArguments(id, name, argumentsText) {
    const call = this.call(id, name);
    call.args.textContent = `(${oneLine(argumentsText, 60)})`;
    call.argsPre.textContent = pretty(argumentsText);
  }

  callResult(id, name, content, error) {
    const call = this.call(id, name);
    call.resultBlock.hidden = false;
    call.result.textContent = pretty(content);
    call.state.textContent = error ? "error" : "done";
    call.node.classList.toggle("error", Boolean(error));
  }

  line(className, text) {
    this.append(el("div", `event ${className}`, text));
  }

  /** One event of the stream. */
  handle(event) {
    switch (event.type) {
      case "assistant": {
        const turn = this.turn(event.iteration ?? 0);
        turn.text += event.delta ?? "";
        this.draw(turn);
        break;
      }
      case "message":
        this.handleMessage(event);
        break;
      case "tool_call":
        this.callArguments(event.id, event.name, event.arguments ?? "");
        break;
      case "tool_result":
        this.callResult(event.id, event.name, event.content ?? "", event.error);
        break;
      case "status":
        this.handleStatus(event);
        break;
      case "expired":
        this.line("note", event.message || "The stream has expired; what follows comes from the database.");
        break;
      default:
        break; // usage, run, and types added later: nothing to draw
    }
  }

  handleMessage(event) {
    // live: {role, content, tool_calls?, iteration}; from the database: {role, content, seq}
    const content = event.content;
    if (event.role === "user") {
      const text = typeof content === "string" ? content : JSON.stringify(content);
      if (text !== this.input) this.message("user", "User").body.innerHTML = render(text);
      return;
    }
    if (event.role === "tool") {
      const body = content && typeof content === "object" ? content : { content };
      if (body.tool_call_id) this.callResult(body.tool_call_id, "", body.content ?? "", false);
      return;
    }
    if (event.role !== "assistant") return;
    const text = typeof content === "string" ? content : (content && content.content) || "";
    const calls = event.tool_calls || (content && typeof content === "object" ? content.tool_calls : null) || [];
    const key = event.iteration ?? `seq-${event.seq}`;
    const turn = this.turn(key);
    if (text && turn.text !== text) {
      turn.text = text; // the whole message is authoritative over the deltas
      this.draw(turn);
    } else if (!text && !turn.text) {
      turn.node.classList.add("empty");
    }
    for (const c of calls) {
      if (c && c.id) this.callArguments(c.id, c.function?.name, c.function?.arguments ?? "");
    }
  }

  handleStatus(event) {
    const status = event.status;
    if (status === "running") {
      this.line("status", `Running (attempt ${event.attempt ?? 1})`);
      this.onPhase("Running", false);
    } else if (status === "requeued") {
      this.line("status", `Requeued: ${event.reason || "handed back"} (attempt ${event.attempt ?? "?"})`);
      this.onPhase("Queued", false);
    } else if (status === "deleted") {
      this.line("final", "The run was deleted.");
      this.ended = true;
    } else if (PHASES[status]) {
      const phase = PHASES[status];
      const parts = [phase];
      if (event.reason) parts.push(event.message ? `${event.reason}: ${event.message}` : event.reason);
      if (event.iterations !== undefined) parts.push(`${event.iterations} turn${event.iterations === 1 ? "" : "s"}`);
      if (event.usage && event.usage.totalTokens !== undefined) parts.push(`${event.usage.totalTokens} tokens`);
      const line = el("div", `event final phase-${status}`);
      const badge = el("span", "phase", phase);
      badge.dataset.phase = status;
      line.append(badge, el("span", "", parts.slice(1).join(" · ")));
      this.append(line);
      for (const call of this.calls.values()) {
        if (call.state.textContent === "running…") call.state.textContent = "cut short";
      }
      this.ended = true;
      this.onPhase(phase, true);
    }
  }
}
