// The keygate console: sign-in, the page frame and the router (docs/console.md).
//
// GET /me decides what is shown: a key whose effective groups include admin
// sees Keys, Users, Groups and Audit; a self-service key sees only its
// owner's keys ("My keys").

import { ApiError, call, session, setUnauthorizedHandler } from "./api.js";
import { renderAudit } from "./audit.js";
import { renderGroups } from "./groups.js";
import { renderKeyDetails, renderKeysPage } from "./keys.js";
import { clear, clearFlash, flash, h, setFlashRegion } from "./ui.js";
import { renderUser, renderUsers } from "./users.js";

const root = document.getElementById("app");

function signInReason(error) {
  if (error.status === 401) {
    const why = {
      missing_api_key: "Paste a keygate API key to sign in.",
      invalid_api_key: "That key is not valid (unknown, revoked, or its owner is disabled).",
      key_disabled: "That key is disabled.",
      key_expired: "That key has expired.",
    };
    return why[error.code] || error.message;
  }
  if (error.status === 403) {
    return "That key has neither the admin nor the self-service group, so it cannot use the console.";
  }
  return error.message;
}

// --- sign-in ------------------------------------------------------------------
function renderSignIn(reason) {
  clear(root);
  document.title = "Sign in · keygate";
  const input = h("input", {
    id: "token",
    name: "token",
    type: "password",
    autocomplete: "off",
    spellcheck: "false",
    required: true,
    placeholder: "kg_…",
    "aria-describedby": "token-hint signin-error",
  });
  const error = h("p", { id: "signin-error", class: "field-error", role: "alert", hidden: !reason }, reason || "");
  const button = h("button", { type: "submit", class: "primary wide" }, "Sign in");
  const form = h(
    "form",
    { class: "signin-card", novalidate: true },
    h("div", { class: "brand large" }, h("img", { src: "logo.svg", alt: "", class: "logo" }), h("span", {}, "keygate")),
    h("h1", {}, "Sign in to the console"),
    h("div", { class: "field" },
      h("label", { for: "token" }, "API key"),
      input,
      h("p", { class: "hint", id: "token-hint" }, "A key with the admin or self-service group. It is kept in this tab only and forgotten when you sign out or close the tab."),
    ),
    error,
    button,
  );
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const token = input.value.trim();
    if (!token) {
      error.hidden = false;
      error.textContent = "Paste a keygate API key to sign in.";
      input.focus();
      return;
    }
    button.disabled = true;
    try {
      const me = await call("GET", "/me", { token });
      session.signIn(token);
      input.value = "";
      start(me);
    } catch (err) {
      error.hidden = false;
      error.textContent = err instanceof ApiError ? signInReason(err) : String(err);
      button.disabled = false;
      input.select();
    }
  });
  root.append(h("main", { class: "signin" }, form));
  input.focus();
}

// --- the frame ------------------------------------------------------------------
const ADMIN_PAGES = [
  ["#/keys", "Keys"],
  ["#/users", "Users"],
  ["#/groups", "Groups"],
  ["#/audit", "Audit"],
];

function isAdmin(me) {
  return me.user.role === "admin" && me.key.groups.includes("admin");
}

let ctx = null;

function frame() {
  const pages = ctx.admin ? ADMIN_PAGES : [["#/keys", "My keys"]];
  const nav = h(
    "nav",
    { class: "nav", "aria-label": "Console" },
    pages.map(([href, label]) => h("a", { href, dataset: { page: href } }, label)),
  );
  const who = h(
    "div",
    { class: "who" },
    h("span", { class: "who-name", title: `Signed in with key ${ctx.me.key.display}` }, ctx.me.user.username),
    h("span", { class: `badge role-${ctx.admin ? "admin" : "member"}` }, ctx.admin ? "admin" : "self-service"),
    h("button", { type: "button", class: "secondary small", id: "sign-out", onclick: () => signOut() }, "Sign out"),
  );
  const header = h(
    "header",
    { class: "topbar" },
    h("a", { class: "brand", href: "#/keys" }, h("img", { src: "logo.svg", alt: "", class: "logo" }), h("span", {}, "keygate")),
    nav,
    who,
  );
  const flashes = h("div", { class: "flashes", "aria-live": "polite" });
  const main = h("main", { id: "main", class: "content", tabindex: "-1" });
  clear(root);
  root.append(header, h("div", { class: "shell" }, flashes, main));
  setFlashRegion(flashes);
  return { nav, main };
}

let shell = null;

function start(me) {
  ctx = {
    me,
    admin: isAdmin(me),
    limit: me.limits ? me.limits.max_keys_per_user : null,
    rerender: () => route(),
    refreshMe: async () => {
      ctx.me = await call("GET", "/me");
      return ctx.me;
    },
  };
  shell = frame();
  if (!location.hash || location.hash === "#" || location.hash === "#/") {
    history.replaceState(null, "", "#/keys");
  }
  route();
}

function signOut(reason) {
  session.signOut();
  ctx = null;
  shell = null;
  history.replaceState(null, "", location.pathname);
  renderSignIn(reason);
}

async function route() {
  if (!ctx || !shell) return;
  const hash = location.hash || "#/keys";
  const parts = hash.replace(/^#\/?/, "").split("/").map(decodeURIComponent);
  for (const link of shell.nav.querySelectorAll("a")) {
    const current = hash === link.dataset.page || hash.startsWith(`${link.dataset.page}/`);
    if (current) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
  const main = shell.main;
  clear(main);
  const [page, id, tab] = parts;
  const adminOnly = ["users", "groups", "audit"].includes(page);
  if (adminOnly && !ctx.admin) {
    flash("That page is for admins only.", "error");
    history.replaceState(null, "", "#/keys");
    return route();
  }
  try {
    if (page === "keys" && id) await renderKeyDetails(ctx, main, id);
    else if (page === "users" && id) await renderUser(ctx, main, id, tab);
    else if (page === "users") await renderUsers(ctx, main);
    else if (page === "groups") await renderGroups(ctx, main);
    else if (page === "audit") await renderAudit(ctx, main);
    else await renderKeysPage(ctx, main);
  } catch (err) {
    if (err instanceof ApiError && err.status === 401) return; // back at sign-in already
    main.append(h("div", { class: "empty" }, h("h2", {}, "This page could not be shown"), h("p", {}, err.message)));
  }
}

window.addEventListener("hashchange", () => {
  clearFlash();
  route();
});

setUnauthorizedHandler((error) => {
  if (!ctx) return;
  signOut(`Your session ended: ${signInReason(error)}`);
});

async function boot() {
  const token = session.token();
  if (!token) {
    renderSignIn(null);
    return;
  }
  try {
    start(await call("GET", "/me", { token }));
  } catch (err) {
    session.signOut();
    renderSignIn(err instanceof ApiError ? `Your session ended: ${signInReason(err)}` : String(err));
  }
}

boot();
