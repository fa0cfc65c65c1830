// The Keys page, a user's "API keys" tab, and a key's details (docs/console.md#keys).

import * as api from "./api.js";
import { ApiError } from "./api.js";
import {
  createKeyDialog,
  deleteKey,
  editKeyDialog,
  groupNames,
  holdable,
  keyRoom,
  revokeKey,
  rollDialog,
  setEnabled,
  showWebhookSecret,
  userRecord,
} from "./keyforms.js";
import { confirmDialog, copyText, debounce, flash, groupChips, h, keyAvatar, pageHeader, select, statusBadge, time, uid } from "./ui.js";

const PAGE_SIZE = 50;
const STATUSES = ["active", "disabled", "revoked", "expired"];

export async function renderKeysPage(ctx, main) {
  document.title = `${ctx.admin ? "Keys" : "My keys"} · keygate`;
  await keyList(ctx, main, { title: ctx.admin ? "API keys" : "My keys" });
}

/**
 * The keys table with its toolbar. `owner`: only that user's keys (a user's
 * page; the owner filter is fixed and Generate creates keys for them).
 */
export async function keyList(ctx, container, { title, owner = null, heading = "h1" }) {
  const state = { search: "", status: "", owner: owner || "", group: "", items: [], cursor: null };
  const createButton = h("button", { type: "button", class: "primary", id: "create-key" }, owner ? "Generate key" : "Create key");
  const limitNote = h("p", { class: "limit-note", id: uid("limit"), hidden: true });
  createButton.setAttribute("aria-describedby", limitNote.id);
  const searchInput = h("input", { type: "search", id: uid("search"), placeholder: "Search by name, description or id", autocomplete: "off" });
  const statusSelect = select([{ value: "", label: "Any status" }, ...STATUSES.map((s) => ({ value: s }))], "", { id: uid("status") });
  const groupSelect = select([{ value: "", label: "Any group" }], "", { id: uid("group") });
  const filters = [
    h("div", { class: "field search" }, h("label", { for: searchInput.id, class: "sr-only" }, "Search keys"), searchInput),
    h("div", { class: "field" }, h("label", { for: statusSelect.id, class: "sr-only" }, "Status"), statusSelect),
  ];
  let ownerSelect = null;
  if (ctx.admin && !owner) {
    ownerSelect = select([{ value: "", label: "Any owner" }], "", { id: uid("owner") });
    filters.push(h("div", { class: "field" }, h("label", { for: ownerSelect.id, class: "sr-only" }, "Owner"), ownerSelect));
  }
  filters.push(h("div", { class: "field" }, h("label", { for: groupSelect.id, class: "sr-only" }, "Group"), groupSelect));

  const tableBody = h("tbody");
  const columns = ["", "Name", "Key", "Status", "Groups", ctx.admin && !owner ? "Owner" : null, "Created by", "Created", "Last used", "Expires", ""].filter((c) => c !== null);
  const table = h(
    "table",
    { class: "keys" },
    h("caption", { class: "sr-only" }, title),
    h("thead", {}, h("tr", {}, columns.map((c, i) => h("th", { scope: "col", class: i === 0 ? "col-avatar" : "" }, c || h("span", { class: "sr-only" }, i === 0 ? "Avatar" : "Actions"))))),
    tableBody,
  );
  const more = h("button", { type: "button", class: "secondary", hidden: true, id: "load-more" }, "Load more");
  const empty = h("div", { class: "empty", hidden: true });
  const count = h("p", { class: "muted small count", "aria-live": "polite" });
  const Heading = heading;
  container.append(
    h("div", { class: "page-header" }, h(Heading, {}, title), h("div", { class: "page-actions" }, limitNote, createButton)),
    h("div", { class: "toolbar", role: "search" }, filters),
    h("div", { class: "table-wrap" }, table),
    empty,
    h("div", { class: "list-footer" }, count, more),
  );

  async function updateRoom() {
    // Self-service callers and a user's page have one owner: say so before a 409 does.
    const who = owner || (ctx.admin ? null : ctx.me.user.username);
    if (!who) return;
    const room = await keyRoom(ctx, who);
    createButton.disabled = room.full;
    limitNote.hidden = !room.full;
    limitNote.textContent = room.full ? `Key limit reached: ${room.reason}.` : "";
  }

  async function load(append = false) {
    const query = { search: state.search, status: state.status, owner: state.owner, group: state.group, limit: PAGE_SIZE };
    if (append) query.cursor = state.cursor;
    const asked = JSON.stringify(query);
    load.latest = asked;
    let page;
    try {
      page = await api.get("/keys", query);
    } catch (err) {
      if (!(err instanceof ApiError && err.status === 401)) empty.replaceChildren(h("p", {}, err.message));
      return;
    }
    if (load.latest !== asked) return; // a newer search answered first
    state.items = append ? [...state.items, ...page.items] : page.items;
    state.cursor = page.next_cursor;
    if (!append) tableBody.replaceChildren();
    for (const key of page.items) tableBody.append(row(key));
    const filtered = state.search || state.status || state.group || (state.owner && !owner);
    table.hidden = state.items.length === 0;
    empty.hidden = state.items.length > 0;
    if (!state.items.length) {
      empty.replaceChildren(
        ...(filtered
          ? [h("h2", {}, "No keys match"), h("p", {}, "Try another search or clear the filters.")]
          : [
              h("h2", {}, owner ? `${owner} has no API keys yet` : "No API keys yet"),
              h("p", {}, "A key lets an application call the services behind keygate. Create the first one; its token is shown once."),
              h("button", { type: "button", class: "primary", onclick: () => createButton.click(), disabled: createButton.disabled }, owner ? "Generate the first key" : "Create your first key"),
            ]),
      );
    }
    more.hidden = !state.cursor;
    count.textContent = state.items.length ? `${state.items.length} key${state.items.length === 1 ? "" : "s"} shown${state.cursor ? "; more below" : ""}` : "";
  }

  const reload = async () => {
    await Promise.all([load(false), updateRoom()]);
  };

  function row(key) {
    const cells = [];
    cells.push(h("td", { class: "col-avatar" }, keyAvatar(key, api.loadImage)));
    cells.push(
      h("td", { "data-label": "Name", class: "col-name" },
        h("a", { href: `#/keys/${encodeURIComponent(key.id)}`, class: "key-name" }, key.name),
        key.description ? h("span", { class: "muted small description" }, key.description) : null,
      ),
    );
    const copyId = h("button", { type: "button", class: "ghost small", "aria-label": `Copy the key id of ${key.name}`, title: "Copy key id" }, "Copy id");
    copyId.addEventListener("click", () => copyText(key.id, copyId));
    cells.push(h("td", { "data-label": "Key" }, h("span", { class: "key-cell" }, h("span", { class: "mono display" }, key.display), copyId)));
    cells.push(h("td", { "data-label": "Status" }, h("span", { class: "status-cell" }, statusBadge(key.status), statusSwitch(key))));
    cells.push(h("td", { "data-label": "Groups" }, groupChips(key.groups)));
    if (ctx.admin && !owner) {
      cells.push(h("td", { "data-label": "Owner" }, h("a", { href: `#/users/${encodeURIComponent(key.owner.username)}` }, key.owner.username)));
    }
    cells.push(h("td", { "data-label": "Created by" }, key.created_by ? key.created_by.username : h("span", { class: "muted" }, "CLI")));
    cells.push(h("td", { "data-label": "Created" }, time(key.created_at)));
    cells.push(h("td", { "data-label": "Last used" }, time(key.last_used_at, "never")));
    cells.push(h("td", { "data-label": "Expires" }, time(key.expires_at, "never")));
    cells.push(h("td", { class: "col-actions" }, actionsMenu(ctx, key, reload)));
    return h("tr", { dataset: { keyId: key.id, status: key.status } }, cells);
  }

  function statusSwitch(key) {
    const changeable = key.status === "active" || key.status === "disabled";
    const input = h("input", {
      type: "checkbox",
      role: "switch",
      class: "switch",
      checked: key.status === "active",
      disabled: !changeable,
      "aria-label": `Enabled: ${key.name}`,
      title: changeable ? (key.status === "active" ? "Block this key" : "Enable this key") : `A ${key.status} key cannot be switched`,
    });
    input.addEventListener("change", async () => {
      const wanted = input.checked;
      input.disabled = true;
      const done = await setEnabled(key, wanted);
      if (!done) {
        input.checked = !wanted;
        input.disabled = false;
        return;
      }
      await reload();
    });
    return input;
  }

  createButton.addEventListener("click", () => createKeyDialog(ctx, { owner, onDone: reload }));
  searchInput.addEventListener("input", debounce(() => {
    state.search = searchInput.value.trim();
    load(false);
  }, 200));
  for (const [control, name] of [[statusSelect, "status"], [groupSelect, "group"], [ownerSelect, "owner"]]) {
    if (!control) continue;
    control.addEventListener("change", () => {
      state[name] = control.value;
      load(false);
    });
  }
  more.addEventListener("click", () => load(true));

  // Filter choices: every group (or the caller's), every user for admins.
  const [groups, users] = await Promise.all([
    groupNames(ctx).catch(() => []),
    ownerSelect ? api.all("/users").catch(() => []) : Promise.resolve([]),
  ]);
  groupSelect.append(...groups.map((g) => h("option", { value: g }, g)));
  if (ownerSelect) ownerSelect.append(...users.map((u) => h("option", { value: u.username }, u.username)));
  await reload();
  return { reload };
}

/** The row's menu: details, edit, roll, revoke, delete (a native <details>). */
function actionsMenu(ctx, key, reload) {
  const live = key.status !== "revoked";
  const items = [
    h("a", { href: `#/keys/${encodeURIComponent(key.id)}`, role: "menuitem" }, "Details"),
    live ? h("button", { type: "button", role: "menuitem", onclick: () => editKeyDialog(ctx, key, { onDone: reload }) }, "Edit") : null,
    live ? h("button", { type: "button", role: "menuitem", onclick: () => rollDialog(key, { onDone: reload }) }, "Roll…") : null,
    live ? h("button", { type: "button", role: "menuitem", class: "danger-text", onclick: async () => (await revokeKey(key)) && reload() }, "Revoke…") : null,
    h("button", { type: "button", role: "menuitem", class: "danger-text", onclick: async () => (await deleteKey(key)) && reload() }, "Delete…"),
  ];
  const menu = h("details", { class: "menu" }, h("summary", { "aria-label": `Actions for ${key.name}`, title: "Actions" }, "⋯"), h("div", { class: "menu-items", role: "menu" }, items));
  menu.addEventListener("click", (event) => {
    if (event.target.closest("[role=menuitem]")) menu.open = false;
  });
  menu.addEventListener("keydown", (event) => {
    if (event.key === "Escape" && menu.open) {
      menu.open = false;
      menu.querySelector("summary").focus();
      event.stopPropagation();
    }
  });
  return menu;
}

// --- webhook deliveries (docs/webhooks.md) ------------------------------------------------
const DELIVERY_REFRESH_MS = 2000;

function deliveryTable(key, items, show) {
  if (!items.length) {
    return h("p", { class: "muted" }, key.webhook_url ? "No deliveries yet." : "No webhook URL: nothing is delivered for this key.");
  }
  const rows = items.map((d) => h("tr", {},
    h("td", { class: "mono" }, d.event),
    h("td", {}, d.target === "key" ? "webhook URL" : "operator endpoint"),
    h("td", {}, h("span", { class: `badge delivery-${d.status}` }, d.status)),
    h("td", {}, String(d.attempts)),
    h("td", { class: "small" }, d.last_status_code ? String(d.last_status_code) : (d.last_error || "—")),
    h("td", {}, d.status === "pending" ? time(d.next_attempt_at, "—") : time(d.last_attempt_at, "—")),
    h("td", {}, h("button", { type: "button", class: "secondary small", "aria-label": `Redeliver ${d.event}`, onclick: async () => {
      try {
        await api.post(`/keys/${encodeURIComponent(key.id)}/webhook-deliveries/${encodeURIComponent(d.id)}/redeliver`, {});
        flash(`${d.event} will be delivered again.`);
        await show();
      } catch (err) {
        flash(err.message, "error");
      }
    } }, "Redeliver")),
  ));
  return h("div", { class: "table-wrap" }, h("table", { class: "deliveries" },
    h("thead", {}, h("tr", {}, ["Event", "To", "Status", "Attempts", "Last answer", "When", ""].map((t) => h("th", { scope: "col" }, t)))),
    h("tbody", {}, rows),
  ));
}
async function webhookCard(key, refresh) {
  const card = h("section", { class: "card", id: "webhook-deliveries", "aria-labelledby": "webhook-heading" }, h("h2", { id: "webhook-heading" }, "Webhook deliveries"));
  const live = key.status !== "revoked";
  const buttons = h("div", { class: "page-actions" });
  if (live && key.webhook_url) {
    buttons.append(h("button", { type: "button", class: "secondary", id: "webhook-test", onclick: async () => {
      try {
        await api.post(`/keys/${encodeURIComponent(key.id)}/webhook-test`, {});
        flash("A key.test event is on its way.");
      } catch (err) {
        flash(err.message, "error");
      }
    } }, "Send a test"));
    buttons.append(h("button", { type: "button", class: "secondary", id: "webhook-rotate", onclick: async () => {
      const ok = await confirmDialog({ title: "Rotate the webhook secret?", text: "Deliveries carry a signature by the new secret and, for 24 hours, by the old one too.", confirm: "Rotate", danger: false });
      if (!ok) return;
      try {
        const rotated = await api.post(`/keys/${encodeURIComponent(key.id)}/webhook-secret`, {});
        showWebhookSecret("New webhook secret", "The old secret keeps signing beside it for 24 hours.", rotated.webhook_secret, refresh);
        rotated.webhook_secret = null;
      } catch (err) {
        flash(err.message, "error");
      }
    } }, "Rotate secret…"));
  }
  card.append(buttons);
  const list = h("div", {});
  card.append(list);
  const show = async () => {
    const page = await api.get(`/keys/${encodeURIComponent(key.id)}/webhook-deliveries`, { limit: 20 });
    list.replaceChildren(deliveryTable(key, page.items, show));
  };
  await show();
  // Deliveries move on their own (a new event is queued, an attempt ends):
  // look again while the card is on the page.
  const again = () => setTimeout(async () => {
    if (!card.isConnected) return;
    try {
      await show();
    } catch {
      return; // a 401 or an outage: the next action says so
    }
    again();
  }, DELIVERY_REFRESH_MS);
  again();
  return card;
}

// --- details ----------------------------------------------------------------------------
export async function renderKeyDetails(ctx, main, id) {
  let key;
  try {
    key = await api.get(`/keys/${encodeURIComponent(id)}`);
  } catch (err) {
    if (err instanceof ApiError && err.status === 404) {
      main.append(h("div", { class: "empty" }, h("h2", {}, "No such key"), h("p", {}, "It may have been deleted."), h("a", { href: "#/keys" }, "Back to the keys")));
      return;
    }
    throw err;
  }
  document.title = `${key.name} · keygate`;
  const refresh = async () => {
    main.replaceChildren();
    await renderKeyDetails(ctx, main, id);
  };
  const owner = await userRecord(ctx, key.owner.username).catch(() => null);
  const allGroups = await groupNames(ctx).catch(() => key.groups);
  const effective = owner && owner.status === "active" ? key.groups.filter((g) => holdable(owner, allGroups.concat(key.groups)).includes(g)) : [];

  const live = key.status !== "revoked";
  const actions = h(
    "div",
    { class: "page-actions" },
    live ? h("button", { type: "button", class: "secondary", onclick: () => editKeyDialog(ctx, key, { onDone: refresh }) }, "Edit") : null,
    key.status === "active" ? h("button", { type: "button", class: "secondary", onclick: async () => (await setEnabled(key, false)) && refresh() }, "Block") : null,
    key.status === "disabled" ? h("button", { type: "button", class: "secondary", onclick: async () => (await setEnabled(key, true)) && refresh() }, "Enable") : null,
    live ? h("button", { type: "button", class: "secondary", onclick: () => rollDialog(key, { onDone: refresh }) }, "Roll…") : null,
    live ? h("button", { type: "button", class: "secondary danger-text", onclick: async () => (await revokeKey(key)) && refresh() }, "Revoke…") : null,
    h("button", { type: "button", class: "danger", onclick: async () => { if (await deleteKey(key)) location.hash = "#/keys"; } }, "Delete…"),
  );
  main.append(
    h("nav", { class: "crumbs", "aria-label": "Breadcrumb" }, h("a", { href: "#/keys" }, ctx.admin ? "Keys" : "My keys"), h("span", { "aria-hidden": "true" }, " / "), h("span", {}, key.name)),
    h("div", { class: "page-header detail-head" },
      h("div", { class: "title-with-avatar" }, keyAvatar(key, api.loadImage, "large"), h("div", {}, h("h1", {}, key.name), h("p", { class: "mono muted" }, key.display))),
      actions,
    ),
  );
  const rows = [
    ["Status", h("span", {}, statusBadge(key.status), key.disabled_by ? h("span", { class: "muted small" }, ` by ${key.disabled_by.username}`) : null)],
    ["Key id", h("span", { class: "mono" }, key.id)],
    ["Description", key.description || h("span", { class: "muted" }, "none")],
    ["Owner", ctx.admin ? h("a", { href: `#/users/${encodeURIComponent(key.owner.username)}` }, key.owner.username) : key.owner.username],
    ["Created by", key.created_by ? key.created_by.username : "the CLI"],
    ["Created", time(key.created_at)],
    ["Updated", time(key.updated_at)],
    ["Last used", time(key.last_used_at, "never")],
    ["Expires", time(key.expires_at, "never")],
    ["Webhook URL", key.webhook_url ? h("span", { class: "mono wrap" }, key.webhook_url) : h("span", { class: "muted" }, "none")],
    ["Metadata", Object.keys(key.metadata).length ? h("pre", { class: "mono small" }, JSON.stringify(key.metadata, null, 2)) : h("span", { class: "muted" }, "none")],
  ];
  const notEffective = key.groups.filter((g) => !effective.includes(g));
  main.append(
    h("div", { class: "detail-grid" },
      h("section", { class: "card" }, h("h2", {}, "Details"), h("dl", { class: "fields" }, rows.map(([label, value]) => [h("dt", {}, label), h("dd", {}, value)]))),
      h("section", { class: "card" },
        h("h2", {}, "Groups"),
        h("dl", { class: "fields" },
          h("dt", {}, "Assigned"), h("dd", { id: "assigned-groups" }, groupChips(key.groups)),
          h("dt", {}, "Effective"), h("dd", { id: "effective-groups" }, groupChips(effective)),
        ),
        notEffective.length
          ? h("p", { class: "muted small" }, `Not in effect because the owner may not hold ${notEffective.length === 1 ? "it" : "them"} now: ${notEffective.join(", ")}.`)
          : h("p", { class: "muted small" }, "Effective groups are the assigned groups the owner may hold now."),
      ),
    ),
  );
  main.append(await webhookCard(key, refresh));
  const history = h("section", { class: "card" }, h("h2", {}, "Recent activity"));
  main.append(history);
  if (!ctx.admin) {
    history.append(h("p", { class: "muted" }, "The audit trail is visible to admins."));
    return;
  }
  const page = await api.get("/audit", { target_type: "key", target: key.id, limit: 10 });
  if (!page.items.length) {
    history.append(h("p", { class: "muted" }, "No changes recorded."));
    return;
  }
  history.append(
    h("ul", { class: "timeline" }, page.items.map((a) =>
      h("li", {}, h("span", { class: "action" }, a.action), " by ", h("strong", {}, a.actor.username || "unknown"), " · ", time(a.at), Object.keys(a.changes).length ? h("span", { class: "muted small mono changes" }, JSON.stringify(a.changes)) : null),
    )),
    h("a", { href: "#/audit" }, "The whole audit trail"),
  );
}
