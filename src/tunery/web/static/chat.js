// The chat box of a completed run: talks to its GGUF through POST /v1/chat/completions
// (the OpenAI-compatible endpoint), streaming the answer as it is generated.

import { session } from "./api.js";
import { h } from "./dom.js";

const MAX_TOKENS = 256;

/** A chat box for `run` (completed, with a GGUF); the conversation lives in the box. */
export function chatBox(run) {
  const messages = [];
  const transcript = h("div", { class: "samples", role: "log", "aria-live": "polite" });
  const input = h("textarea", { rows: "2", required: true, "aria-label": "Message to the model",
    placeholder: "Ask the fine-tuned model something" });
  const send = h("button", { type: "submit", class: "primary" }, "Send");
  // JSON mode: the answer is constrained to a JSON object (response_format json_object).
  const json = h("input", { type: "checkbox" });
  const status = h("p", { class: "muted", role: "status" });

  async function ask(event) {
    event.preventDefault();
    const text = input.value.trim();
    if (!text) {
      status.textContent = "Type a message first: this one is empty.";
      input.focus();
      return;
    }
    input.value = "";
    messages.push({ role: "user", content: text });
    const reply = h("p", { class: "sample-response" });
    const turn = h("article", { class: "sample" },
      h("p", { class: "sample-prompt" }, h("strong", {}, "You: "), text), reply);
    transcript.append(turn);
    send.disabled = true;
    status.textContent = "The model is answering…";
    try {
      const answer = await streamAnswer(run.id, messages, json.checked,
        (piece) => reply.append(piece));
      messages.push({ role: "assistant", content: answer });
      status.textContent = "";
    } catch (error) {
      // The model never took this turn: the transcript drops it too, and the text goes back
      // into the box to be edited (an over-long message, say) rather than typed again.
      messages.pop();
      turn.remove();
      input.value = text;
      status.textContent = `The model could not answer: ${error.message}`;
    } finally {
      send.disabled = false;
      input.focus();
    }
  }

  return h("section", { class: "chat" },
    h("h3", {}, "Try the model"),
    h("p", { class: "muted" }, "Served from this run's GGUF with its own chat template. "
      + "From code: the OpenAI SDK with base_url …/v1 and this model id: ", h("code", {}, run.id)),
    transcript,
    h("form", { class: "stack", onsubmit: ask }, input,
      h("div", { class: "actions" }, h("label", {}, json, " JSON mode"), send)),
    status);
}

/** POST a streamed chat completion (a JSON object when `jsonMode`); calls `onPiece` per text
 * piece, resolves to the text. */
async function streamAnswer(model, messages, jsonMode, onPiece) {
  const request = { model, messages, stream: true, max_tokens: MAX_TOKENS };
  if (jsonMode) request.response_format = { type: "json_object" };
  const response = await fetch("/v1/chat/completions", {
    method: "POST",
    headers: { Authorization: `Bearer ${session.token}`, "Content-Type": "application/json" },
    body: JSON.stringify(request),
  });
  if (!response.ok) {
    const body = await response.json().catch(() => ({}));
    throw new Error(body.error?.message || body.detail?.message || `HTTP ${response.status}`);
  }
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  let answer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return answer;
    buffer += value;
    let boundary;
    while ((boundary = buffer.indexOf("\n\n")) >= 0) {
      const line = buffer.slice(0, boundary);
      buffer = buffer.slice(boundary + 2);
      if (!line.startsWith("data: ") || line === "data: [DONE]") continue;
      const chunk = JSON.parse(line.slice(6));
      if (chunk.error) throw new Error(chunk.error.message);  // failed midway
      const piece = chunk.choices[0]?.delta?.content;
      if (piece) {
        answer += piece;
        onPiece(piece);
      }
    }
  }
}
