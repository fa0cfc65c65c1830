// Audit (admins): every admin change, newest first, paged, filtered by target
// and actor (docs/console.md#audit).

import * as api from "./api.js";
import { clear, debounce, h, pageHeader, select, time, uid } from "./ui.js";

export async function renderAudit(ctx, main) {
  document.title = "Audit · keygate";
  const state = { target_type: "", target: "", actor: "", cursor: null };
  const typeSelect = select([{ value: "", label: "Any target" }, { value: "key" }, { value: "user" }, { value: "group" }], "", { id: uid("type") });
  const target = h("input", { type: "search", id: uid("target"), placeholder: "Key id, username or group", autocomplete: "off" });
  const actor = h("input", { type: "search", id: uid("actor"), placeholder: "Username", autocomplete: "off" });
  const body = h("tbody");
  const table = h(
    "table",
    { class: "audit" },
    h("caption", { class: "sr-only" }, "Audit records"),
    h("thead", {}, h("tr", {}, ["When", "Who", "Action", "Target", "From", "Changes"].map((c) => h("th", { scope: "col" }, c)))),
    body,
  );
  const more = h("button", { type: "button", class: "secondary", hidden: true }, "Load more");
  const empty = h("p", { class: "empty", hidden: true }, "No audit records match.");
  main.append(
    pageHeader("Audit"),
    h("div", { class: "toolbar", role: "search" },
      h("div", { class: "field" }, h("label", { for: typeSelect.id }, "Target type"), typeSelect),
      h("div", { class: "field" }, h("label", { for: target.id }, "Target"), target),
      h("div", { class: "field" }, h("label", { for: actor.id }, "Actor"), actor),
    ),
    h("div", { class: "table-wrap" }, table),
    empty,
    h("div", { class: "list-footer" }, more),
  );

  function targetCell(t) {
    const label = `${t.type} ${t.id}`;
    if (t.type === "key") return h("a", { href: `#/keys/${encodeURIComponent(t.id)}` }, label);
    if (t.type === "user") return h("a", { href: `#/users/${encodeURIComponent(t.id)}` }, label);
    return label;
  }

  async function load(append) {
    const query = { target_type: state.target_type, target: state.target, actor: state.actor, limit: 50 };
    if (append) query.cursor = state.cursor;
    const asked = JSON.stringify(query);
    load.latest = asked;
    const page = await api.get("/audit", query);
    if (load.latest !== asked) return;
    if (!append) clear(body);
    for (const a of page.items) {
      body.append(
        h("tr", {},
          h("td", { "data-label": "When" }, time(a.at)),
          h("td", { "data-label": "Who" }, a.actor.username || "unknown", a.actor.key_id ? h("span", { class: "muted small mono" }, ` ${a.actor.key_id}`) : null),
          h("td", { "data-label": "Action" }, h("span", { class: "badge action" }, a.action)),
          h("td", { "data-label": "Target" }, targetCell(a.target)),
          h("td", { "data-label": "From" }, a.client_addr || ""),
          h("td", { "data-label": "Changes", class: "mono small changes" }, Object.keys(a.changes).length ? JSON.stringify(a.changes) : ""),
        ),
      );
    }
    state.cursor = page.next_cursor;
    more.hidden = !state.cursor;
    empty.hidden = body.children.length > 0;
    table.hidden = body.children.length === 0;
  }
  const refilter = debounce(() => {
    state.target_type = typeSelect.value;
    state.target = target.value.trim();
    state.actor = actor.value.trim();
    load(false);
  }, 250);
  typeSelect.addEventListener("change", refilter);
  target.addEventListener("input", refilter);
  actor.addEventListener("input", refilter);
  more.addEventListener("click", () => load(true));
  await load(false);
}
