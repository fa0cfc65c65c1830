// DOM helpers of the keygate console (docs/console.md).
//
// Every value that comes from the API is put into the page as text: h() turns
// strings into text nodes and sets attributes with setAttribute, and nothing
// here ever assigns innerHTML. A key named <img src=x onerror=alert(1)> shows
// as those characters.

/** An element: h("button", {class: "primary", onclick: fn}, "Save"). */
export function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (name.startsWith("on") && typeof value === "function") {
      el.addEventListener(name.slice(2), value);
    } else if (name === "dataset") {
      Object.assign(el.dataset, value);
    } else if (value === true) {
      el.setAttribute(name, "");
    } else {
      el.setAttribute(name, String(value));
    }
  }
  append(el, children);
  return el;
}

export function append(el, children) {
  for (const child of children.flat(Infinity)) {
    if (child === undefined || child === null || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

export function clear(el) {
  while (el.firstChild) el.firstChild.remove();
  return el;
}

let idCounter = 0;
export function uid(prefix = "kg") {
  idCounter += 1;
  return `${prefix}-${idCounter}`;
}

// --- time -------------------------------------------------------------------
const UNITS = [
  ["year", 365 * 86400],
  ["month", 30 * 86400],
  ["week", 7 * 86400],
  ["day", 86400],
  ["hour", 3600],
  ["minute", 60],
];
const relative = new Intl.RelativeTimeFormat(undefined, { numeric: "auto" });
const exact = new Intl.DateTimeFormat(undefined, {
  dateStyle: "medium",
  timeStyle: "long",
});

export function relativeTime(iso, now = Date.now()) {
  const seconds = (Date.parse(iso) - now) / 1000;
  for (const [unit, size] of UNITS) {
    if (Math.abs(seconds) >= size) return relative.format(Math.round(seconds / size), unit);
  }
  return Math.abs(seconds) < 45 ? (seconds < 0 ? "just now" : "in a moment") : relative.format(Math.round(seconds / 60), "minute");
}

/** A <time> with a relative text and the exact time on hover; `none` when null. */
export function time(iso, none = "never") {
  if (!iso) return h("span", { class: "muted" }, none);
  const title = `${exact.format(new Date(iso))} (${iso})`;
  return h("time", { datetime: iso, title }, relativeTime(iso));
}

// --- badges, avatars --------------------------------------------------------
export function statusBadge(status) {
  return h("span", { class: `badge status-${status}` }, status);
}

export function groupChips(groups, extraClass = "") {
  if (!groups.length) return h("span", { class: "muted" }, "none");
  return h("span", { class: `chips ${extraClass}` }, groups.map((g) => h("span", { class: "chip" }, g)));
}

function hashOf(text) {
  let n = 0;
  for (const ch of text) n = (n * 31 + ch.codePointAt(0)) >>> 0;
  return n;
}

export function initials(name) {
  const words = name.split(/[^\p{L}\p{N}]+/u).filter(Boolean);
  const letters = words.length > 1 ? words[0][0] + words[1][0] : (words[0] || "?").slice(0, 2);
  return letters.toUpperCase();
}

/** A key's avatar: its image (fetched with the token), else its initials;
 *  a red dot when the key is disabled. */
export function keyAvatar(key, loadImage, size = "") {
  const label = key.status === "disabled" ? `${key.name} (disabled)` : key.name;
  const box = h("span", { class: `avatar ${size} tone-${hashOf(key.id) % 8}`, role: "img", "aria-label": `Avatar of ${label}` });
  const fallback = h("span", { class: "initials", "aria-hidden": "true" }, initials(key.name));
  box.append(fallback);
  if (key.avatar_url && loadImage) {
    loadImage(key.avatar_url).then((url) => {
      if (!url) return;
      fallback.replaceWith(h("img", { src: url, alt: "" }));
    });
  }
  if (key.status === "disabled") {
    box.append(h("span", { class: "dot", title: "Disabled", "data-testid": "disabled-dot" }));
  }
  return box;
}

// --- messages ---------------------------------------------------------------
let flashRegion = null;
export function setFlashRegion(el) {
  flashRegion = el;
}

/** A success or error message at the top of the page. */
export function flash(text, kind = "success") {
  if (!flashRegion) return;
  clear(flashRegion);
  const box = h(
    "div",
    { class: `flash ${kind}`, role: kind === "error" ? "alert" : "status" },
    h("span", { class: "flash-text" }, text),
    h("button", { type: "button", class: "ghost small", "aria-label": "Dismiss message", onclick: () => clear(flashRegion) }, "×"),
  );
  flashRegion.append(box);
}

export function clearFlash() {
  if (flashRegion) clear(flashRegion);
}

// --- dialogs ----------------------------------------------------------------
const FOCUSABLE = 'a[href], button:not([disabled]), input:not([disabled]), select:not([disabled]), textarea:not([disabled]), [tabindex]:not([tabindex="-1"]), summary';

/**
 * A modal dialog that traps focus and closes on Escape (unless `locked()`
 * says otherwise). Returns {el, body, footer, close}.
 */
export function dialog({ title, onClose, locked = () => false, wide = false }) {
  const opener = document.activeElement;
  const titleId = uid("dlg-title");
  const body = h("div", { class: "dialog-body" });
  const footer = h("div", { class: "dialog-footer" });
  const closeButton = h("button", { type: "button", class: "ghost icon", "aria-label": "Close", onclick: () => tryClose() }, "×");
  const panel = h(
    "div",
    { class: `dialog ${wide ? "wide" : ""}`, role: "dialog", "aria-modal": "true", "aria-labelledby": titleId },
    h("header", { class: "dialog-header" }, h("h2", { id: titleId }, title), closeButton),
    body,
    footer,
  );
  const backdrop = h("div", { class: "backdrop" }, panel);
  let closed = false;

  function close() {
    if (closed) return;
    closed = true;
    document.removeEventListener("keydown", onKey, true);
    backdrop.remove();
    if (onClose) onClose();
    if (opener && opener.isConnected && typeof opener.focus === "function") opener.focus();
  }
  function tryClose() {
    if (!locked()) close();
  }
  function onKey(event) {
    if (event.key === "Escape") {
      event.preventDefault();
      tryClose();
      return;
    }
    if (event.key !== "Tab") return;
    const items = [...panel.querySelectorAll(FOCUSABLE)].filter((el) => el.offsetParent !== null || el === document.activeElement);
    if (!items.length) return;
    const first = items[0];
    const last = items[items.length - 1];
    if (!panel.contains(document.activeElement)) {
      event.preventDefault();
      first.focus();
    } else if (event.shiftKey && document.activeElement === first) {
      event.preventDefault();
      last.focus();
    } else if (!event.shiftKey && document.activeElement === last) {
      event.preventDefault();
      first.focus();
    }
  }
  backdrop.addEventListener("mousedown", (event) => {
    if (event.target === backdrop) tryClose();
  });
  document.addEventListener("keydown", onKey, true);
  document.body.append(backdrop);
  const setCloseVisible = (visible) => {
    closeButton.hidden = !visible;
  };
  return { el: panel, body, footer, close, setCloseVisible };
}

/** Focus the first field of a dialog once it is on the page. */
export function focusFirst(container) {
  const first = container.querySelector("input:not([type=hidden]):not([disabled]), select, textarea, button:not(.icon)");
  if (first) first.focus();
}

/** "Are you sure?": resolves true when confirmed. */
export function confirmDialog({ title, text, confirm, danger = true }) {
  return new Promise((resolve) => {
    let answered = false;
    const dlg = dialog({
      title,
      onClose: () => {
        if (!answered) resolve(false);
      },
    });
    dlg.body.append(h("p", {}, text));
    const ok = h("button", { type: "button", class: danger ? "danger" : "primary", onclick: () => { answered = true; dlg.close(); resolve(true); } }, confirm);
    dlg.footer.append(h("button", { type: "button", class: "secondary", onclick: () => dlg.close() }, "Cancel"), ok);
    ok.focus();
  });
}

// --- forms ------------------------------------------------------------------
/** A labelled field: {wrap, input, error(text)}. */
export function field(labelText, input, { hint, id } = {}) {
  const inputId = id || input.id || uid("f");
  input.id = inputId;
  const errorId = `${inputId}-error`;
  const hintId = `${inputId}-hint`;
  const errorEl = h("p", { class: "field-error", id: errorId, hidden: true });
  const described = [hint ? hintId : null, errorId].filter(Boolean).join(" ");
  input.setAttribute("aria-describedby", described);
  const wrap = h(
    "div",
    { class: "field" },
    h("label", { for: inputId }, labelText),
    input,
    hint ? h("p", { class: "hint", id: hintId }, hint) : null,
    errorEl,
  );
  function error(text) {
    errorEl.hidden = !text;
    errorEl.textContent = text || "";
    if (text) input.setAttribute("aria-invalid", "true");
    else input.removeAttribute("aria-invalid");
  }
  return { wrap, input, error };
}

/** A group of checkboxes in a fieldset: {wrap, values(), error(text)}. */
export function checkboxGroup(legend, options, checked = [], { name = uid("cb"), emptyText = "None available." } = {}) {
  const errorEl = h("p", { class: "field-error", hidden: true });
  const boxes = options.map((option) => {
    const id = uid(name);
    const input = h("input", { type: "checkbox", id, value: option.value, checked: checked.includes(option.value) });
    return { input, row: h("label", { class: "check", for: id }, input, h("span", {}, option.label || option.value), option.note ? h("span", { class: "muted small" }, ` ${option.note}`) : null) };
  });
  const wrap = h(
    "fieldset",
    { class: "field checks" },
    h("legend", {}, legend),
    boxes.length ? h("div", { class: "check-list" }, boxes.map((b) => b.row)) : h("p", { class: "muted" }, emptyText),
    errorEl,
  );
  return {
    wrap,
    values: () => boxes.filter((b) => b.input.checked).map((b) => b.input.value),
    error(text) {
      errorEl.hidden = !text;
      errorEl.textContent = text || "";
    },
  };
}

export function select(options, value, attrs = {}) {
  return h(
    "select",
    attrs,
    options.map((o) => h("option", { value: o.value, selected: o.value === value }, o.label ?? o.value)),
  );
}

/** Copy text to the clipboard; flash the outcome on the button. */
export async function copyText(text, button) {
  const label = button.textContent;
  try {
    await navigator.clipboard.writeText(text);
    button.textContent = "Copied";
  } catch {
    button.textContent = "Copy failed";
  }
  setTimeout(() => {
    button.textContent = label;
  }, 1500);
}

export function debounce(fn, ms) {
  let timer = null;
  return (...args) => {
    clearTimeout(timer);
    timer = setTimeout(() => fn(...args), ms);
  };
}

export function pageHeader(title, ...actions) {
  return h("div", { class: "page-header" }, h("h1", {}, title), h("div", { class: "page-actions" }, actions));
}
