// The chat box of a completed run: talks to its GGUF through POST /v1/chat/completions
// (the OpenAI-compatible endpoint), streaming the answer as it is generated. Enter sends,
// Shift+Enter starts a new line; the conversation is kept per run in this browser.

import { session } from "./api.js";
import { copyButton, h } from "./dom.js";

const HISTORY_KEY = "tunery.chat.";
const MAX_KEPT_MESSAGES = 100;
const DEFAULTS = { temperature: 0.7, max_tokens: 256 };

const loadHistory = (runId) => JSON.parse(localStorage.getItem(HISTORY_KEY + runId) || "[]");
const saveHistory = (runId, messages) => localStorage.setItem(HISTORY_KEY + runId,
  JSON.stringify(messages.slice(-MAX_KEPT_MESSAGES)));

function turn(text, reply = "") {
  return h("article", { class: "sample" },
    h("p", { class: "sample-prompt" }, h("strong", {}, "You: "), text),
    h("p", { class: "sample-response" }, reply));
}

/** A chat box for `run` (completed, with a GGUF served as `run.openai_model`). */
export function chatBox(run) {
  const messages = loadHistory(run.id);
  const transcript = h("div", { class: "samples", role: "log", "aria-live": "polite" });
  for (let index = 0; index + 1 < messages.length; index += 2) {
    transcript.append(turn(messages[index].content, messages[index + 1].content));
  }
  const input = h("textarea", { rows: "2", required: true, "aria-label": "Message to the model",
    placeholder: "Ask the fine-tuned model something (Enter sends, Shift+Enter for a new line)" });
  const temperature = h("input", { type: "number", min: "0", max: "2", step: "0.1",
    value: String(DEFAULTS.temperature), id: `chat-temperature-${run.id}` });
  const maxTokens = h("input", { type: "number", min: "1", max: "4096", step: "1",
    value: String(DEFAULTS.max_tokens), id: `chat-max-tokens-${run.id}` });
  const send = h("button", { type: "submit", class: "primary" }, "Send");
  // JSON mode: the answer is constrained to a JSON object (response_format json_object).
  const json = h("input", { type: "checkbox" });
  const clear = h("button", { type: "button" }, "Clear conversation");
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
    const shown = turn(text);
    const reply = shown.querySelector(".sample-response");
    transcript.append(shown);
    send.disabled = true;
    status.textContent = "The model is answering…";
    try {
      const options = { temperature: Number(temperature.value),
        max_tokens: Math.round(Number(maxTokens.value)) };
      if (json.checked) options.response_format = { type: "json_object" };
      const answer = await streamAnswer(run.openai_model, messages, options,
        (piece) => reply.append(piece));
      messages.push({ role: "assistant", content: answer });
      saveHistory(run.id, messages);
      status.textContent = "";
    } catch (error) {
      // The model never took this turn: the transcript drops it too, and the text goes back
      // into the box to be edited (an over-long message, say) rather than typed again.
      messages.pop();
      shown.remove();
      input.value = text;
      status.textContent = `The model could not answer: ${error.message}`;
    } finally {
      send.disabled = false;
      input.focus();
    }
  }

  const form = h("form", { class: "stack", onsubmit: ask }, input,
    h("div", { class: "chat-options" },
      h("label", { for: temperature.id }, "Temperature ", temperature),
      h("label", { for: maxTokens.id }, "Max tokens ", maxTokens)),
    h("div", { class: "actions" }, h("label", {}, json, " JSON mode"), send, clear));
  input.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      form.requestSubmit();
    }
  });
  clear.addEventListener("click", () => {
    messages.splice(0);
    localStorage.removeItem(HISTORY_KEY + run.id);
    transcript.replaceChildren();
    input.focus();
  });

  return h("section", { class: "chat" },
    h("h3", {}, "Try the model"),
    h("p", { class: "muted" }, "Served from this run's GGUF with its own chat template. "
      + "From code: the OpenAI SDK with base_url …/v1 and this model id:"),
    h("p", { class: "model-id" }, h("code", {}, run.openai_model), " ",
      copyButton(run.openai_model, "the model id")),
    transcript, form, status);
}

/** POST a streamed chat completion with `options` (temperature, max_tokens, response_format);
 * calls `onPiece` per text piece, resolves to the text. */
async function streamAnswer(model, messages, options, onPiece) {
  const response = await fetch("/v1/chat/completions", {
    method: "POST",
    headers: { Authorization: `Bearer ${session.token}`, "Content-Type": "application/json" },
    body: JSON.stringify({ model, messages, stream: true, ...options }),
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
