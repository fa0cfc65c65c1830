// Groups (admins): the list and the rules editor (docs/console.md#groups).
//
// A rule names a route (one of the configured routes, read from the public
// OpenAPI document, or "*"), methods (checkboxes, or every method) and path
// globs (one per line).

import * as api from "./api.js";
import { ApiError, base } from "./api.js";
import { append, confirmDialog, dialog, field, flash, focusFirst, h, pageHeader, uid } from "./ui.js";

const METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"];

async function routeNames() {
  try {
    const doc = await api.call("GET", `${base}/openapi.json`);
    const names = doc.components.schemas.Rule.properties.route.enum;
    if (Array.isArray(names)) return names.filter((n) => n !== "*");
  } catch {
    // the editor still offers "*"
  }
  return [];
}

export async function renderGroups(ctx, main) {
  document.title = "Groups · keygate";
  const groups = (await api.get("/groups")).items;
  const create = h("button", { type: "button", class: "primary", id: "create-group" }, "New group");
  create.addEventListener("click", () => groupDialog(null, () => ctx.rerender()));
  main.append(pageHeader("Groups", create));
  main.append(
    h("div", { class: "cards" }, groups.map((g) => groupCard(ctx, g))),
  );
}

function ruleText(rule) {
  const methods = rule.methods.join(", ");
  return `${rule.route === "*" ? "any route" : rule.route}: ${methods === "*" ? "any method" : methods} on ${rule.paths.join(" ")}`;
}

function groupCard(ctx, group) {
  const actions = group.builtin
    ? [h("span", { class: "badge builtin" }, "built-in")]
    : [
        h("button", { type: "button", class: "secondary small", onclick: () => groupDialog(group, () => ctx.rerender()) }, "Edit"),
        h("button", { type: "button", class: "danger small", onclick: () => deleteGroup(ctx, group) }, "Delete…"),
      ];
  return h(
    "section",
    { class: "card group", dataset: { group: group.name } },
    h("div", { class: "card-head" }, h("h2", {}, group.name), h("div", { class: "button-row" }, actions)),
    group.description ? h("p", {}, group.description) : null,
    group.rules.length
      ? h("ul", { class: "rules" }, group.rules.map((r) => h("li", { class: "mono small" }, ruleText(r))))
      : h("p", { class: "muted small" }, "No proxy rules: it allows nothing at the proxy."),
  );
}

async function deleteGroup(ctx, group) {
  const ok = await confirmDialog({ title: `Delete group ${group.name}?`, text: "Keys and users lose what it allowed. This cannot be undone.", confirm: "Delete group" });
  if (!ok) return;
  try {
    await api.del(`/groups/${encodeURIComponent(group.name)}`);
  } catch (err) {
    if (!(err instanceof ApiError && err.code === "group_in_use")) {
      flash(err.message, "error");
      return;
    }
    flash(`Group ${group.name} is in use: users or keys hold it.`, "error");
    const force = await confirmDialog({
      title: `${group.name} is in use`,
      text: "Users or keys hold this group. Delete it anyway? It is removed from all of them. This cannot be undone.",
      confirm: "Delete anyway",
    });
    if (!force) return;
    try {
      await api.del(`/groups/${encodeURIComponent(group.name)}`, { force: "true" });
    } catch (again) {
      flash(again.message, "error");
      return;
    }
  }
  flash(`Group ${group.name} deleted.`);
  ctx.rerender();
}

function ruleEditor(routes, rule, onRemove) {
  const id = uid("rule");
  const route = h("select", { id: `${id}-route` }, [h("option", { value: "*" }, "* (any route)"), ...routes.map((r) => h("option", { value: r }, r))]);
  if (rule) {
    if (![...route.options].some((o) => o.value === rule.route)) route.append(h("option", { value: rule.route }, rule.route));
    route.value = rule.route;
  }
  const any = rule ? rule.methods.includes("*") : false;
  const anyBox = h("input", { type: "checkbox", id: `${id}-any`, checked: any });
  const boxes = METHODS.map((m) => {
    const box = h("input", { type: "checkbox", id: `${id}-${m}`, value: m, checked: rule ? rule.methods.includes(m) : m === "GET", disabled: any });
    return { box, label: h("label", { class: "check", for: box.id }, box, h("span", {}, m)) };
  });
  anyBox.addEventListener("change", () => boxes.forEach((b) => { b.box.disabled = anyBox.checked; }));
  const paths = h("textarea", { id: `${id}-paths`, rows: 2, spellcheck: "false", placeholder: "/billing/**" });
  paths.value = rule ? rule.paths.join("\n") : "/**";
  const el = h(
    "fieldset",
    { class: "rule-editor" },
    h("legend", {}, "Rule"),
    h("div", { class: "field" }, h("label", { for: route.id }, "Route"), route),
    h("div", { class: "field checks" }, h("span", { class: "label" }, "Methods"), h("div", { class: "check-row" }, h("label", { class: "check", for: anyBox.id }, anyBox, h("span", {}, "any")), boxes.map((b) => b.label))),
    h("div", { class: "field" }, h("label", { for: paths.id }, "Paths (one glob a line: * one segment, ** any depth)"), paths),
    h("button", { type: "button", class: "ghost small", onclick: () => { el.remove(); onRemove(); } }, "Remove rule"),
  );
  return {
    el,
    value: () => ({
      route: route.value,
      methods: anyBox.checked ? ["*"] : boxes.filter((b) => b.box.checked).map((b) => b.box.value),
      paths: paths.value.split(/[\n,]+/).map((p) => p.trim()).filter(Boolean),
    }),
  };
}

async function groupDialog(group, onDone) {
  const dlg = dialog({ title: group ? `Edit group ${group.name}` : "New group", wide: true });
  const routes = await routeNames();
  const form = h("form", { class: "form", novalidate: true, id: "group-form" });
  const name = group ? null : field("Name", h("input", { type: "text", autocomplete: "off", pattern: "[a-z0-9][a-z0-9_-]{0,63}" }), { hint: "Lower-case letters, digits, - and _." });
  const description = field("Description", h("input", { type: "text", autocomplete: "off", value: group ? group.description : "" }));
  const rulesBox = h("div", { class: "rules-editor" });
  const rules = [];
  const rulesError = h("p", { class: "field-error", hidden: true });
  const addRule = (rule) => {
    const editor = ruleEditor(routes, rule, () => rules.splice(rules.indexOf(editor), 1));
    rules.push(editor);
    rulesBox.append(editor.el);
  };
  (group ? group.rules : [null]).forEach(addRule);
  append(form, [
    name ? name.wrap : null,
    description.wrap,
    h("h3", {}, "Rules"),
    h("p", { class: "muted small" }, "A request is allowed when any rule matches its route, method and path."),
    rulesBox,
    rulesError,
    h("button", { type: "button", class: "secondary small", onclick: () => addRule(null) }, "Add rule"),
  ]);
  dlg.body.append(form);
  const save = h("button", { type: "submit", class: "primary", form: "group-form" }, group ? "Save" : "Create group");
  dlg.footer.append(h("button", { type: "button", class: "secondary", onclick: () => dlg.close() }, "Cancel"), save);
  focusFirst(form);
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const body = { description: description.input.value, rules: rules.map((r) => r.value()) };
    try {
      if (group) await api.patch(`/groups/${encodeURIComponent(group.name)}`, body);
      else await api.post("/groups", { name: name.input.value.trim(), ...body });
    } catch (err) {
      const details = err instanceof ApiError ? err.details : {};
      if (name) name.error(details.name || (err.code === "group_exists" ? "A group with that name exists." : ""));
      const ruleProblems = Object.entries(details).filter(([k]) => k.startsWith("rules"));
      rulesError.hidden = !ruleProblems.length;
      rulesError.textContent = ruleProblems.map(([k, v]) => `${k}: ${v}`).join("; ");
      flash(err.message, "error");
      return;
    }
    dlg.close();
    flash(group ? `Group ${group.name} saved.` : "Group created.");
    onDone();
  });
}
