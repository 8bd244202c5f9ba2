// Building elements, the error banner and the confirmation dialog.
//
// Every string reaches the document as a text node (never as HTML): with the page's strict
// Content-Security-Policy this keeps a run name or a server message from running as script.

import { ApiError, UnreachableError } from "./api.js";

export const $ = (selector) => document.querySelector(selector);

/** Create an element: h("p", {class: "x", onclick}, "text", child, …). */
export function h(tag, attributes = {}, ...children) {
  const element = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) {
    if (value === null || value === undefined || value === false) continue;
    if (name.startsWith("on")) element.addEventListener(name.slice(2), value);
    else if (name === "dataset") Object.assign(element.dataset, value);
    else element.setAttribute(name, value === true ? "" : value);
  }
  element.append(...children.flat(Infinity).filter((child) => child !== null && child !== undefined));
  return element;
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

/** Ask before something irreversible; resolves true only when the user confirms. */
export function confirmAction({ title, body, confirm, keep = "Keep" }) {
  const dialog = $("#confirm-dialog");
  $("#confirm-title").textContent = title;
  $("#confirm-body").textContent = body;
  $("#confirm-go").textContent = confirm;
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
