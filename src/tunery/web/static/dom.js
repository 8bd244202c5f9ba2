// Building elements, the error banner and the confirmation dialog.
//
// Every string reaches the document as a text node (never as HTML): with the page's strict
// Content-Security-Policy this keeps a run name or a server message from running as script.

import { ApiError, UnreachableError } from "./api.js";

export const $ = (selector) => document.querySelector(selector);

/** The children worth drawing: none of null, undefined or false (which would read "null"). */
const drawable = (children) => children.flat(Infinity)
  .filter((child) => child !== null && child !== undefined && child !== false);

/** Create an element: h("p", {class: "x", onclick}, "text", child, …). */
export function h(tag, attributes = {}, ...children) {
  const element = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) {
    if (value === null || value === undefined || value === false) continue;
    if (name.startsWith("on")) element.addEventListener(name.slice(2), value);
    else if (name === "dataset") Object.assign(element.dataset, value);
    else element.setAttribute(name, value === true ? "" : value);
  }
  element.append(...drawable(children));
  return element;
}

/** Replace an element's children; null, undefined and false children are left out. */
export function fill(element, ...children) {
  element.replaceChildren(...drawable(children));
  return element;
}

/** Put `text` on the clipboard; resolves true when it got there. */
async function copyText(text) {
  try {
    await navigator.clipboard.writeText(text);
    return true;
  } catch {
    // Outside a secure context (a LAN address over http) there is no clipboard API: copy
    // from a selected field instead.
    const field = h("textarea", { "aria-hidden": "true", class: "offscreen" });
    field.value = text;
    document.body.append(field);
    field.select();
    const copied = document.execCommand("copy");
    field.remove();
    return copied;
  }
}

/** A button that copies `text` (a run id, a model id, a secret) and says it did. */
export function copyButton(text, what) {
  const button = h("button", { type: "button", class: "copy", "aria-label": `Copy ${what}`,
    dataset: { copy: text } }, "Copy");
  button.addEventListener("click", async () => {
    const copied = await copyText(text);
    button.textContent = copied ? "Copied" : "Copy failed";
    setTimeout(() => { button.textContent = "Copy"; }, 2000);
  });
  return button;
}

export function showBanner(message, kind = "error") {
  const banner = $("#banner");
  banner.textContent = message;
  banner.className = `banner banner-${kind}`;
  banner.hidden = false;
}

export function hideBanner() {
  $("#banner").hidden = true;
}

/** Report a failed action: unreachable server, or the server's message and hint. */
export function reportError(error, where = "") {
  // A rejected token is answered by the sign-in view, not by a banner.
  if (error instanceof ApiError && error.status === 401) return;
  const prefix = where ? `${where}: ` : "";
  if (error instanceof UnreachableError) {
    showBanner(`${prefix}the server cannot be reached. Your runs keep going on the server; `
      + "the studio reconnects by itself.");
  } else if (error instanceof ApiError) {
    showBanner(`${prefix}${error.message}${error.hint ? ` (${error.hint})` : ""}`);
  } else {
    showBanner(`${prefix}${error.message}`);
  }
}

/**
 * Ask before acting; resolves true only when the user confirms. `tone` "danger" (red) is
 * for what destroys or stops for good, "primary" for what only ends something early.
 */
export function confirmAction({ title, body, confirm, keep = "Keep", tone = "danger" }) {
  const dialog = $("#confirm-dialog");
  $("#confirm-title").textContent = title;
  $("#confirm-body").textContent = body;
  $("#confirm-go").textContent = confirm;
  $("#confirm-go").className = tone;
  $("#confirm-keep").textContent = keep;
  const opener = document.activeElement;
  dialog.returnValue = "";
  dialog.showModal();
  $("#confirm-keep").focus();
  return new Promise((resolve) => {
    dialog.addEventListener("close", () => {
      opener?.focus?.();
      resolve(dialog.returnValue === "confirm");
    }, { once: true });
  });
}

/** Keep the focus inside the open dialog: Tab from the last button wraps to the first. */
export function trapDialogFocus() {
  const dialog = $("#confirm-dialog");
  dialog.addEventListener("keydown", (event) => {
    if (event.key !== "Tab") return;
    const buttons = [...dialog.querySelectorAll("button")];
    const first = buttons[0];
    const last = buttons[buttons.length - 1];
    if (event.shiftKey && document.activeElement === first) {
      event.preventDefault();
      last.focus();
    } else if (!event.shiftKey && document.activeElement === last) {
      event.preventDefault();
      first.focus();
    }
  });
}
