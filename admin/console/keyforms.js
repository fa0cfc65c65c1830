// The key dialogs: create, edit, roll, and the token shown once.
//
// A token is put in exactly one read-only field of the dialog that shows it;
// "I have stored it" removes that dialog from the page and drops the last
// reference, so afterwards the token is in no DOM node and no storage
// (docs/console.md#tokens).

import * as api from "./api.js";
import { ApiError } from "./api.js";
import { append, checkboxGroup, confirmDialog, copyText, dialog, field, flash, focusFirst, h, uid } from "./ui.js";

const IMAGE_TYPES = "image/png,image/jpeg,image/gif,image/webp";
const DAY = 86400;
export const EXPIRY_PRESETS = [
  ["7d", "7 days", 7 * DAY],
  ["30d", "30 days", 30 * DAY],
  ["90d", "90 days", 90 * DAY],
  ["1y", "1 year", 365 * DAY],
];

// --- what an owner may do -------------------------------------------------------
/** The groups `owner` (a user record) may hold, from the list of all groups. */
export function holdable(owner, allGroups) {
  if (owner.role === "admin") return allGroups;
  return allGroups.filter((g) => g !== "admin" && owner.groups.includes(g));
}

/** Every group name the caller may see: all (admins) or the caller's own. */
export async function groupNames(ctx) {
  if (ctx.admin) {
    const page = await api.get("/groups");
    return page.items.map((g) => g.name);
  }
  return ctx.me.user.role === "admin" ? ctx.me.key.groups : ctx.me.user.groups.filter((g) => g !== "admin");
}

/** How many keys that are not revoked `username` holds, and whether that is the limit. */
export async function keyRoom(ctx, username) {
  const query = ctx.admin ? { owner: username } : {};
  const keys = await api.all("/keys", query);
  const held = keys.filter((k) => k.status !== "revoked").length;
  const full = ctx.limit !== null && held >= ctx.limit;
  return { held, full, reason: full ? `${username} already holds ${held} of ${ctx.limit} keys (revoke or delete one first)` : "" };
}

export async function userRecord(ctx, username) {
  if (!ctx.admin || username === ctx.me.user.username) return ctx.me.user;
  return api.get(`/users/${encodeURIComponent(username)}`);
}

// --- expiry ---------------------------------------------------------------------
/** Radio presets, a date, or never. `current` (RFC 3339) adds "Keep". */
function expiryPicker({ current, defaultChoice = "90d" } = {}) {
  const name = uid("expiry");
  const dateInput = h("input", { type: "date", "aria-label": "Expiry date", min: new Date(Date.now() + DAY * 1000).toISOString().slice(0, 10), disabled: true });
  const choices = [];
  if (current !== undefined) choices.push(["keep", current ? `Keep (${new Date(current).toLocaleDateString()})` : "Keep (never)"]);
  for (const [value, label] of EXPIRY_PRESETS) choices.push([value, label]);
  choices.push(["date", "On a date"], ["never", "Never"]);
  const initial = current !== undefined ? "keep" : defaultChoice;
  const radios = choices.map(([value, label]) => {
    const id = uid(name);
    const input = h("input", { type: "radio", name, id, value, checked: value === initial });
    input.addEventListener("change", () => {
      dateInput.disabled = value !== "date";
      if (value === "date") dateInput.focus();
    });
    return h("label", { class: "check", for: id }, input, h("span", {}, label));
  });
  const errorEl = h("p", { class: "field-error", hidden: true });
  const wrap = h("fieldset", { class: "field checks" }, h("legend", {}, "Expires"), h("div", { class: "radio-row" }, radios, dateInput), errorEl);
  return {
    wrap,
    /** {} to leave unchanged, {expires_in}, {expires_at}, or {expires_at: null}. */
    value() {
      const chosen = wrap.querySelector(`input[name="${name}"]:checked`).value;
      if (chosen === "keep") return {};
      if (chosen === "never") return { expires_at: null };
      if (chosen === "date") {
        if (!dateInput.value) throw new FieldError("expires_at", "Pick a date.");
        return { expires_at: new Date(`${dateInput.value}T23:59:59`).toISOString().replace(/\.\d+Z$/, "Z") };
      }
      return { expires_in: EXPIRY_PRESETS.find(([v]) => v === chosen)[2] };
    },
    error(text) {
      errorEl.hidden = !text;
      errorEl.textContent = text || "";
    },
  };
}

class FieldError extends Error {
  constructor(fieldName, message) {
    super(message);
    this.field = fieldName;
  }
}

function avatarInput() {
  const input = h("input", { type: "file", accept: IMAGE_TYPES });
  return field("Avatar image (optional)", input, { hint: "PNG, JPEG, GIF or WebP, at most 1 MiB. Shown as a 256×256 picture." });
}

/** Put API field errors (422 details, 409 name_taken) at their fields. */
function showErrors(err, fields) {
  for (const f of Object.values(fields)) f.error("");
  if (!(err instanceof ApiError)) return false;
  if (err.code === "name_taken" && fields.name) {
    fields.name.error("This owner already has a key with that name. Choose another name.");
    fields.name.input.focus();
    return true;
  }
  let shown = false;
  for (const [name, reason] of Object.entries(err.details || {})) {
    const target = fields[name] || (name.startsWith("expires") ? fields.expires : null);
    if (target) {
      target.error(`${reason[0].toUpperCase()}${reason.slice(1)}.`);
      shown = true;
    }
  }
  return shown;
}

async function uploadAvatar(keyId, file) {
  if (!file) return null;
  return api.put(`/keys/${keyId}/avatar`, file);
}

// --- the token, shown once --------------------------------------------------------
/**
 * Replace the dialog's content with the token: a read-only field, Copy, the
 * warning, and "I have stored it" as the only way out.
 */
function showToken(dlg, token, { heading, onStored, webhookSecret = null }) {
  let secret = token;
  let signing = webhookSecret;
  dlg.setCloseVisible(false);
  dlg.body.replaceChildren();
  dlg.footer.replaceChildren();
  const output = token === null ? null : h("input", { id: "new-token", type: "text", readonly: true, class: "token", value: secret, "aria-describedby": "token-warning", spellcheck: "false" });
  const copy = output && h("button", { type: "button", class: "secondary", id: "copy-token", onclick: () => copyText(secret, copy) }, "Copy");
  const stored = h("button", { type: "button", class: "primary", id: "token-stored" }, "I have stored it");
  dlg.body.append(h("p", { class: "success-line" }, heading));
  if (output) dlg.body.append(h("label", { for: "new-token" }, "Your new API key"), h("div", { class: "token-row" }, output, copy));
  // The key's webhook signing secret (docs/webhooks.md#secrets): shown once, like a token.
  const hook = signing === null ? null : h("input", { id: "new-webhook-secret", type: "text", readonly: true, class: "token", value: signing, "aria-describedby": "token-warning", spellcheck: "false" });
  if (hook) {
    const copyHook = h("button", { type: "button", class: "secondary", id: "copy-webhook-secret", "aria-label": "Copy the webhook secret", onclick: () => copyText(signing, copyHook) }, "Copy");
    dlg.body.append(h("label", { for: "new-webhook-secret" }, "Webhook signing secret"), h("div", { class: "token-row" }, hook, copyHook));
  }
  dlg.body.append(h("p", { class: "warning", id: "token-warning", role: "note" }, "Copy it now and keep it somewhere safe: this is the only time keygate shows it."));
  dlg.footer.append(stored);
  stored.addEventListener("click", () => {
    for (const input of [output, hook]) {
      if (!input) continue;
      input.value = "";
      input.removeAttribute("value");
    }
    secret = null;
    signing = null;
    dlg.close();
    onStored();
  });
  const first = output || hook;
  first.addEventListener("focus", () => first.select());
  first.focus();
}

/** A webhook signing secret alone (set by an edit, or rotated), shown once. */
export function showWebhookSecret(title, heading, webhookSecret, onStored) {
  const dlg = dialog({ title, locked: () => true });
  showToken(dlg, null, { heading, onStored, webhookSecret });
}

// --- create -----------------------------------------------------------------------
/**
 * The create dialog. `owner`: a fixed owner (a user's page), else the caller,
 * changeable by admins. Calls `onDone()` once the token was acknowledged.
 */
export async function createKeyDialog(ctx, { owner: fixedOwner, onDone }) {
  let tokenShown = false;
  const dlg = dialog({ title: fixedOwner ? `New key for ${fixedOwner}` : "Create an API key", locked: () => tokenShown, wide: true });
  const loading = h("p", { class: "muted" }, "Loading…");
  dlg.body.append(loading);
  const allGroups = await groupNames(ctx);
  const users = ctx.admin && !fixedOwner ? await api.all("/users") : [];
  loading.remove();

  const form = h("form", { class: "form", novalidate: true, id: "create-key-form" });
  const fields = {};
  fields.name = field("Name", h("input", { type: "text", name: "name", maxlength: 100, required: true, autocomplete: "off" }), { hint: "Unique for its owner; letters, digits and punctuation." });
  fields.description = field("Description", h("textarea", { name: "description", rows: 2 }));
  let ownerSelect = null;
  if (ctx.admin && !fixedOwner) {
    ownerSelect = h("select", { name: "owner" }, users.filter((u) => u.status === "active").map((u) => h("option", { value: u.username, selected: u.username === ctx.me.user.username }, `${u.username} (${u.role})`)));
    fields.owner = field("Owner", ownerSelect, { hint: "Create the key for another user." });
  }
  const groupsBox = h("div", { class: "groups-slot" });
  const expiry = expiryPicker();
  fields.expires = expiry;
  fields.webhook_url = field("Webhook URL (optional)", h("input", { type: "url", name: "webhook_url", placeholder: "https://…", autocomplete: "off" }));
  fields.avatar = avatarInput();
  const limitNote = h("p", { class: "limit-note", role: "status", hidden: true });
  const submit = h("button", { type: "submit", class: "primary", form: "create-key-form", id: "create-key-submit" }, "Create key");

  let groupPicker = null;
  async function ownerChanged() {
    const username = fixedOwner || (ownerSelect ? ownerSelect.value : ctx.me.user.username);
    const [user, room] = await Promise.all([userRecord(ctx, username), keyRoom(ctx, username)]);
    const options = holdable(user, allGroups).map((g) => ({ value: g }));
    const preferred = options.some((o) => o.value === "default") ? ["default"] : [];
    groupPicker = checkboxGroup("Groups", options, preferred, { emptyText: `${username} may hold no group yet.` });
    fields.groups = groupPicker;
    groupsBox.replaceChildren(groupPicker.wrap);
    fields.name.input.value = suggestName(username, room.held);
    submit.disabled = room.full;
    limitNote.hidden = !room.full;
    limitNote.textContent = room.full ? `You cannot create a key: ${room.reason}.` : "";
  }
  if (ownerSelect) ownerSelect.addEventListener("change", ownerChanged);
  await ownerChanged();

  append(form, [fields.name.wrap, fields.description.wrap, fields.owner ? fields.owner.wrap : null, groupsBox, expiry.wrap, fields.webhook_url.wrap, fields.avatar.wrap, limitNote]);
  dlg.body.append(form);
  dlg.footer.append(h("button", { type: "button", class: "secondary", onclick: () => dlg.close() }, "Cancel"), submit);
  focusFirst(form);
  fields.name.input.select();

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    if (submit.disabled) return;
    let body;
    try {
      body = {
        name: fields.name.input.value.trim(),
        description: fields.description.input.value,
        groups: groupPicker.values(),
        ...expiry.value(),
      };
    } catch (err) {
      if (err instanceof FieldError) expiry.error(err.message);
      return;
    }
    if (!body.name) {
      fields.name.error("A name is required.");
      fields.name.input.focus();
      return;
    }
    if (!body.groups.length) {
      groupPicker.error("Choose at least one group.");
      return;
    }
    if (!body.expires_in && !body.expires_at) delete body.expires_at;
    const webhook = fields.webhook_url.input.value.trim();
    if (webhook) body.webhook_url = webhook;
    if (ownerSelect) body.owner = ownerSelect.value;
    else if (fixedOwner) body.owner = fixedOwner;
    submit.disabled = true;
    let created;
    try {
      created = await api.post("/keys", body);
    } catch (err) {
      submit.disabled = false;
      if (!showErrors(err, fields)) flash(err.message, "error");
      return;
    }
    let avatarProblem = "";
    try {
      await uploadAvatar(created.key.id, fields.avatar.input.files[0]);
    } catch (err) {
      avatarProblem = ` The avatar was not saved: ${err.message}`;
    }
    tokenShown = true;
    showToken(dlg, created.token, {
      webhookSecret: created.webhook_secret || null,
      heading: `Key “${created.key.name}” was created for ${created.key.owner.username}.`,
      onStored: () => {
        flash(`Key “${created.key.name}” created.${avatarProblem}`, avatarProblem ? "error" : "success");
        onDone(created.key);
      },
    });
    created.token = null;
    created.webhook_secret = null;
  });
}

function suggestName(owner, held) {
  const stem = owner.replace(/^cli:/, "").toLowerCase().replace(/[^a-z0-9]+/g, "-").replace(/^-|-$/g, "") || "key";
  return `${stem}-key-${held + 1}`;
}

// --- edit -----------------------------------------------------------------------------
export async function editKeyDialog(ctx, key, { onDone }) {
  const dlg = dialog({ title: `Edit “${key.name}”`, wide: true });
  const allGroups = await groupNames(ctx);
  const owner = ctx.admin ? await userRecord(ctx, key.owner.username) : ctx.me.user;
  const form = h("form", { class: "form", novalidate: true, id: "edit-key-form" });
  const fields = {};
  fields.name = field("Name", h("input", { type: "text", name: "name", maxlength: 100, value: key.name, autocomplete: "off" }));
  fields.description = field("Description", h("textarea", { name: "description", rows: 2 }));
  fields.description.input.value = key.description;
  const options = [...new Set([...holdable(owner, allGroups), ...key.groups])].map((g) => ({ value: g }));
  fields.groups = checkboxGroup("Groups", options, key.groups);
  const expiry = expiryPicker({ current: key.expires_at });
  fields.expires = expiry;
  fields.webhook_url = field("Webhook URL", h("input", { type: "url", name: "webhook_url", value: key.webhook_url || "", placeholder: "https://…", autocomplete: "off" }), { hint: "Empty: no webhook." });
  fields.avatar = avatarInput();
  let removeAvatar = null;
  if (key.avatar_url) {
    removeAvatar = h("input", { type: "checkbox", id: uid("rm-avatar") });
    fields.avatar.wrap.append(h("label", { class: "check", for: removeAvatar.id }, removeAvatar, h("span", {}, "Remove the current avatar")));
  }
  form.append(fields.name.wrap, fields.description.wrap, fields.groups.wrap, expiry.wrap, fields.webhook_url.wrap, fields.avatar.wrap);
  dlg.body.append(form);
  const save = h("button", { type: "submit", class: "primary", form: "edit-key-form", id: "edit-key-submit" }, "Save changes");
  dlg.footer.append(h("button", { type: "button", class: "secondary", onclick: () => dlg.close() }, "Cancel"), save);
  focusFirst(form);

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const body = {};
    const name = fields.name.input.value.trim();
    if (name !== key.name) body.name = name;
    if (fields.description.input.value !== key.description) body.description = fields.description.input.value;
    const groups = fields.groups.values();
    if (groups.join("\n") !== key.groups.join("\n")) body.groups = groups;
    try {
      Object.assign(body, expiry.value());
    } catch (err) {
      if (err instanceof FieldError) expiry.error(err.message);
      return;
    }
    const webhook = fields.webhook_url.input.value.trim() || null;
    if (webhook !== key.webhook_url) body.webhook_url = webhook;
    save.disabled = true;
    let signing = null;
    try {
      if (Object.keys(body).length) signing = (await api.patch(`/keys/${key.id}`, body)).webhook_secret || null;
      const file = fields.avatar.input.files[0];
      if (file) await uploadAvatar(key.id, file);
      else if (removeAvatar && removeAvatar.checked) await api.del(`/keys/${key.id}/avatar`);
    } catch (err) {
      save.disabled = false;
      if (!showErrors(err, fields)) flash(err.message, "error");
      return;
    }
    dlg.close();
    flash(`Key “${name}” saved.`);
    if (signing) {
      showWebhookSecret(`Webhook for “${name}”`, "Receivers verify deliveries with this secret.", signing, onDone);
      signing = null;
      return;
    }
    onDone();
  });
}

// --- roll -----------------------------------------------------------------------------
const GRACE = [
  [0, "Now: the old token stops working at once"],
  [3600, "In 1 hour"],
  [86400, "In 24 hours"],
];

export function rollDialog(key, { onDone }) {
  let tokenShown = false;
  const dlg = dialog({ title: `Roll “${key.name}”`, locked: () => tokenShown });
  const name = uid("grace");
  const radios = GRACE.map(([value, label], i) => {
    const id = uid(name);
    return h("label", { class: "check", for: id }, h("input", { type: "radio", name, id, value, checked: i === 0 }), h("span", {}, label));
  });
  const form = h(
    "form",
    { class: "form", id: "roll-form" },
    h("p", {}, "Rolling gives this key a new token. Clients must switch to it before the old one ends."),
    h("fieldset", { class: "field checks" }, h("legend", {}, "When the old token stops working"), h("div", { class: "check-list" }, radios)),
  );
  const submit = h("button", { type: "submit", class: "primary", form: "roll-form", id: "roll-submit" }, "Roll key");
  dlg.body.append(form);
  dlg.footer.append(h("button", { type: "button", class: "secondary", onclick: () => dlg.close() }, "Cancel"), submit);
  focusFirst(form);
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const grace = Number(form.querySelector(`input[name="${name}"]:checked`).value);
    submit.disabled = true;
    let rolled;
    try {
      rolled = await api.post(`/keys/${key.id}/roll`, { grace_seconds: grace });
    } catch (err) {
      submit.disabled = false;
      flash(err.message, "error");
      return;
    }
    tokenShown = true;
    showToken(dlg, rolled.token, {
      heading: grace ? `Key “${key.name}” has a new token; the old one works for ${grace / 3600} more hour${grace === 3600 ? "" : "s"}.` : `Key “${key.name}” has a new token; the old one no longer works.`,
      onStored: () => {
        flash(`Key “${key.name}” rolled.`);
        onDone();
      },
    });
    rolled.token = null;
  });
}

// --- status, revoke, delete ------------------------------------------------------------
export async function setEnabled(key, enabled) {
  if (!enabled) {
    const ok = await confirmDialog({
      title: "Block this key?",
      text: `Requests with “${key.name}” will be refused (401 key_disabled) until it is enabled again.`,
      confirm: "Block key",
    });
    if (!ok) return false;
  }
  try {
    await api.patch(`/keys/${key.id}`, { status: enabled ? "active" : "disabled" });
  } catch (err) {
    flash(err.message, "error");
    return false;
  }
  flash(enabled ? `Key “${key.name}” enabled.` : `Key “${key.name}” blocked.`);
  return true;
}

export async function revokeKey(key) {
  const ok = await confirmDialog({
    title: "Revoke this key?",
    text: `“${key.name}” will stop working for good. This cannot be undone.`,
    confirm: "Revoke key",
  });
  if (!ok) return false;
  try {
    await api.post(`/keys/${key.id}/revoke`);
  } catch (err) {
    flash(err.message, "error");
    return false;
  }
  flash(`Key “${key.name}” revoked.`);
  return true;
}

export async function deleteKey(key) {
  const ok = await confirmDialog({
    title: "Delete this key?",
    text: `The record of “${key.name}” and its avatar will be removed. This cannot be undone.`,
    confirm: "Delete key",
  });
  if (!ok) return false;
  try {
    await api.del(`/keys/${key.id}`);
  } catch (err) {
    flash(err.message, "error");
    return false;
  }
  flash(`Key “${key.name}” deleted.`);
  return true;
}
