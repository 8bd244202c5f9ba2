// The Webhooks tab: endpoints (add, with the signing secret shown once and a copy button;
// send a test event; delete after asking) and the delivery log (GET/POST/DELETE
// /api/v1/webhooks).

import { ApiError, api } from "./api.js";
import { $, confirmAction, copyButton, fill, h, reportError } from "./dom.js";
import { formatTime } from "./format.js";

// The secret of the endpoint added last: shown until the page reloads (the server never
// shows a secret again), or until that endpoint is deleted.
let secret = null;  // {endpoint, url, value}
let notice = "";

export async function renderWebhooks() {
  const box = $("#webhooks");
  try {
    const [endpoints, deliveries] = await Promise.all([
      api("/webhooks"), api("/webhooks/deliveries")]);
    fill(box,
      h("p", { class: "muted" }, "Job events (fine_tuning.job.succeeded, failed, cancelled, "
        + "paused, resumed) "
        + "are posted to these URLs, signed as OpenAI signs them (Standard Webhooks)."),
      endpoints.length
        ? h("ul", { class: "endpoint-list" }, endpoints.map(endpointRow))
        : h("p", { class: "muted", id: "webhooks-empty" }, "No endpoints yet: add one below."),
      addForm(),
      secretNote(),
      h("p", { class: "muted", id: "webhook-notice", role: "status" }, notice),
      deliveryLog(deliveries));
  } catch (error) {
    reportError(error, "Webhooks");
  }
}

function secretNote() {
  if (!secret) return h("div", { id: "webhook-secret", role: "status" });
  return h("div", { id: "webhook-secret", class: "secret", role: "status" },
    h("p", {}, h("strong", {}, `Signing secret for ${secret.url}`),
      " (shown once: keep it now, it verifies every delivery)"),
    h("p", {}, h("code", { class: "secret-value" }, secret.value), " ",
      copyButton(secret.value, "the signing secret")));
}

function endpointRow(endpoint) {
  return h("li", { dataset: { endpoint: endpoint.id } }, h("code", {}, endpoint.url), " ",
    h("button", { type: "button", onclick: () => sendTest(endpoint) }, "Send a test event"),
    h("button", { type: "button", class: "danger-outline", onclick: () => remove(endpoint) },
      "Delete"));
}

async function sendTest(endpoint) {
  try {
    await api(`/webhooks/${endpoint.id}/test`, { method: "POST" });
    notice = `Sent a test event to ${endpoint.url}; its answer shows in the delivery log.`;
  } catch (error) {
    if (!(error instanceof ApiError)) {
      reportError(error, "Send a test event");
      return;
    }
    notice = error.message;
  }
  await renderWebhooks();
  // The delivery goes out a moment later: look again for its answer.
  setTimeout(renderWebhooks, 1500);
}

async function remove(endpoint) {
  const confirmed = await confirmAction({
    title: `Delete the webhook ${endpoint.url}?`,
    body: "Nothing more is sent to it, and its delivery log is deleted with it.",
    confirm: "Delete webhook",
  });
  if (!confirmed) return;
  try {
    await api(`/webhooks/${endpoint.id}`, { method: "DELETE" });
    if (secret?.endpoint === endpoint.id) secret = null;
    notice = `Deleted the webhook ${endpoint.url}.`;
    renderWebhooks();
  } catch (error) {
    reportError(error, "Delete webhook");
  }
}

function addForm() {
  const url = h("input", { type: "url", required: true, placeholder: "https://example.com/hooks",
    "aria-label": "Webhook URL" });
  // The server's reason for refusing a URL, under the field (the banner is a screen away).
  const problem = h("p", { class: "field-error", id: "webhook-url-error", hidden: true });
  return h("form", { class: "stack", onsubmit: async (event) => {
    event.preventDefault();
    try {
      const endpoint = await api("/webhooks", { method: "POST", json: { url: url.value } });
      secret = { endpoint: endpoint.id, url: endpoint.url, value: endpoint.secret };
      notice = "";
      await renderWebhooks();
    } catch (error) {
      if (!(error instanceof ApiError && error.status === 422)) {
        reportError(error, "Add webhook");
        return;
      }
      problem.textContent = error.problems.map((each) => each.message).join("; ")
        || error.message;
      problem.hidden = false;
      url.setAttribute("aria-invalid", "true");
      url.setAttribute("aria-describedby", problem.id);
      url.focus();
    }
  } }, url, problem,
  h("div", { class: "actions" }, h("button", { type: "submit", class: "primary" }, "Add webhook")));
}

function deliveryLog(deliveries) {
  const refresh = h("button", { type: "button", onclick: renderWebhooks }, "Refresh");
  if (!deliveries.length) {
    return h("section", { "aria-label": "Delivery log" }, h("h2", {}, "Delivery log"),
      h("p", { class: "muted" }, "No deliveries yet: job events and test events show here "
        + "with each endpoint's answer."), refresh);
  }
  return h("section", { "aria-label": "Delivery log" }, h("h2", {}, "Delivery log"), refresh,
    h("div", { class: "table-wrap" }, h("table", { class: "ledger", id: "deliveries" },
      h("caption", {}, "Newest first"),
      h("thead", {}, h("tr", {}, ["When", "Event", "Job", "Status", "Tries", "Last answer"]
        .map((name) => h("th", { scope: "col" }, name)))),
      h("tbody", {}, deliveries.map((row) => h("tr", {},
        h("td", {}, formatTime(row.created_at)), h("td", {}, row.event_type),
        h("td", {}, row.job_id ?? "–"), h("td", {}, row.status),
        h("td", {}, String(row.attempts)),
        h("td", {}, row.last_error || String(row.last_status_code ?? "–"))))))));
}
