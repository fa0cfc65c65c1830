// Users (admins): the list, a new user, and a user's page with its "API keys"
// tab (docs/console.md#users).

import * as api from "./api.js";
import { ApiError } from "./api.js";
import { keyList } from "./keys.js";
import { keyRoom } from "./keyforms.js";
import { checkboxGroup, confirmDialog, dialog, field, flash, focusFirst, groupChips, h, pageHeader, select, statusBadge, time } from "./ui.js";

async function allGroupNames() {
  return (await api.get("/groups")).items.map((g) => g.name);
}

export async function renderUsers(ctx, main) {
  document.title = "Users · keygate";
  const users = await api.all("/users");
  const create = h("button", { type: "button", class: "primary", id: "create-user" }, "New user");
  create.addEventListener("click", () => userDialog(ctx, null, () => ctx.rerender()));
  main.append(pageHeader("Users", create));
  if (!users.length) {
    main.append(h("div", { class: "empty" }, h("h2", {}, "No users"), h("p", {}, "Create one to give it keys.")));
    return;
  }
  main.append(
    h("div", { class: "table-wrap" },
      h("table", { class: "users" },
        h("caption", { class: "sr-only" }, "Users"),
        h("thead", {}, h("tr", {}, ["User", "Role", "Status", "May hold", "Created"].map((c) => h("th", { scope: "col" }, c)))),
        h("tbody", {}, users.map((u) =>
          h("tr", { dataset: { username: u.username } },
            h("td", { "data-label": "User" }, h("a", { href: `#/users/${encodeURIComponent(u.username)}` }, u.username)),
            h("td", { "data-label": "Role" }, h("span", { class: `badge role-${u.role}` }, u.role)),
            h("td", { "data-label": "Status" }, statusBadge(u.status)),
            h("td", { "data-label": "May hold" }, u.role === "admin" ? h("span", { class: "muted" }, "every group") : groupChips(u.groups)),
            h("td", { "data-label": "Created" }, time(u.created_at)),
          ),
        )),
      ),
    ),
  );
}

/** New user (`user` null) or change one. */
async function userDialog(ctx, user, onDone) {
  const dlg = dialog({ title: user ? `Change ${user.username}` : "New user" });
  const groups = (await allGroupNames()).filter((g) => g !== "admin");
  const form = h("form", { class: "form", novalidate: true, id: "user-form" });
  const fields = {};
  if (!user) fields.username = field("Username", h("input", { type: "text", autocomplete: "off", required: true }));
  fields.role = field("Role", select([{ value: "member", label: "member: holds the groups below" }, { value: "admin", label: "admin: every group and the admin API" }], user ? user.role : "member"));
  fields.groups = checkboxGroup("May hold (members)", groups.map((g) => ({ value: g })), user ? user.groups : ["self-service", "default"].filter((g) => groups.includes(g)));
  form.append(...Object.values(fields).map((f) => f.wrap));
  dlg.body.append(form);
  const save = h("button", { type: "submit", class: "primary", form: "user-form" }, user ? "Save" : "Create user");
  dlg.footer.append(h("button", { type: "button", class: "secondary", onclick: () => dlg.close() }, "Cancel"), save);
  focusFirst(form);
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const body = { role: fields.role.input.value, groups: fields.role.input.value === "admin" ? [] : fields.groups.values() };
    try {
      if (user) await api.patch(`/users/${encodeURIComponent(user.username)}`, body);
      else await api.post("/users", { username: fields.username.input.value.trim(), ...body });
    } catch (err) {
      if (err instanceof ApiError && err.details) {
        for (const [name, reason] of Object.entries(err.details)) if (fields[name]) fields[name].error(reason);
      }
      if (err instanceof ApiError && err.code === "username_taken") fields.username.error("That username is taken.");
      flash(err.message, "error");
      return;
    }
    dlg.close();
    flash(user ? `User ${user.username} saved.` : "User created.");
    onDone();
  });
}

export async function renderUser(ctx, main, username, tab = "keys") {
  let user;
  try {
    user = await api.get(`/users/${encodeURIComponent(username)}`);
  } catch (err) {
    if (err instanceof ApiError && err.status === 404) {
      main.append(h("div", { class: "empty" }, h("h2", {}, "No such user"), h("a", { href: "#/users" }, "Back to the users")));
      return;
    }
    throw err;
  }
  document.title = `${user.username} · keygate`;
  const base = `#/users/${encodeURIComponent(user.username)}`;
  main.append(
    h("nav", { class: "crumbs", "aria-label": "Breadcrumb" }, h("a", { href: "#/users" }, "Users"), h("span", { "aria-hidden": "true" }, " / "), h("span", {}, user.username)),
    h("div", { class: "page-header" },
      h("div", {}, h("h1", {}, user.username), h("p", { class: "muted" }, h("span", { class: `badge role-${user.role}` }, user.role), " ", statusBadge(user.status), " · created ", time(user.created_at))),
    ),
    h("div", { class: "tabs", role: "tablist", "aria-label": "User" },
      h("a", { role: "tab", href: base, "aria-selected": String(tab !== "profile"), id: "tab-keys" }, "API keys"),
      h("a", { role: "tab", href: `${base}/profile`, "aria-selected": String(tab === "profile"), id: "tab-profile" }, "Profile"),
    ),
  );
  const panel = h("section", { class: "tab-panel", role: "tabpanel", "aria-labelledby": tab === "profile" ? "tab-profile" : "tab-keys" });
  main.append(panel);
  if (tab === "profile") await profile(ctx, panel, user);
  else await keyList(ctx, panel, { title: `${user.username}'s API keys`, owner: user.username, heading: "h2" });
}

async function profile(ctx, panel, user) {
  const rows = [
    ["Role", user.role],
    ["Status", statusBadge(user.status)],
    ["May hold", user.role === "admin" ? "every group" : groupChips(user.groups)],
    ["Created", time(user.created_at)],
    ["Updated", time(user.updated_at)],
  ];
  const refresh = () => ctx.rerender();
  const change = h("button", { type: "button", class: "secondary" }, "Change role and groups");
  change.addEventListener("click", () => userDialog(ctx, user, refresh));
  const disabled = user.status === "disabled";
  const toggle = h("button", { type: "button", class: "secondary" }, disabled ? "Enable user" : "Disable user");
  toggle.addEventListener("click", async () => {
    if (!disabled) {
      const ok = await confirmDialog({ title: `Disable ${user.username}?`, text: "Every key of this user stops working until the user is enabled again.", confirm: "Disable user" });
      if (!ok) return;
    }
    try {
      await api.patch(`/users/${encodeURIComponent(user.username)}`, { status: disabled ? "active" : "disabled" });
    } catch (err) {
      flash(err.message, "error");
      return;
    }
    flash(`User ${user.username} ${disabled ? "enabled" : "disabled"}.`);
    refresh();
  });
  const remove = h("button", { type: "button", class: "danger" }, "Delete user…");
  remove.addEventListener("click", async () => {
    const { held } = await keyRoom(ctx, user.username);
    const ok = await confirmDialog({
      title: `Delete ${user.username}?`,
      text: `The user is removed and ${held} key${held === 1 ? "" : "s"} of theirs ${held === 1 ? "is" : "are"} revoked. This cannot be undone.`,
      confirm: "Delete user",
    });
    if (!ok) return;
    try {
      await api.del(`/users/${encodeURIComponent(user.username)}`);
    } catch (err) {
      flash(err.message, "error");
      return;
    }
    flash(`User ${user.username} deleted; ${held} key${held === 1 ? "" : "s"} revoked.`);
    location.hash = "#/users";
  });
  panel.append(
    h("section", { class: "card" },
      h("h2", {}, "Profile"),
      h("dl", { class: "fields" }, rows.map(([label, value]) => [h("dt", {}, label), h("dd", {}, value)])),
      h("div", { class: "button-row" }, change, toggle, remove),
    ),
  );
}
