// The JSON admin API as the console calls it (docs/admin-api.md).
//
// The signed-in token lives in sessionStorage only (never a cookie, never
// localStorage) and goes out as Authorization: Bearer. Any 401 ends the
// session: the token is forgotten and the sign-in page shows the reason.

const TOKEN = "keygate.console.token";

export const base = location.pathname.replace(/\/console(\/.*)?$/, "");
export const apiBase = `${base}/api/v1`;

export class ApiError extends Error {
  constructor(status, code, message, details) {
    super(message);
    this.status = status;
    this.code = code;
    this.details = details || {};
  }
}

let onUnauthorized = () => {};
export function setUnauthorizedHandler(fn) {
  onUnauthorized = fn;
}

export const session = {
  token: () => sessionStorage.getItem(TOKEN),
  signIn(token) {
    sessionStorage.setItem(TOKEN, token);
  },
  signOut() {
    sessionStorage.removeItem(TOKEN);
    forgetImages();
  },
};

async function errorOf(response) {
  let code = `http_${response.status}`;
  let message = `The server answered ${response.status}.`;
  let details = {};
  try {
    const body = await response.json();
    if (body && body.error) {
      code = body.error.code || code;
      message = body.error.message || message;
      details = body.error.details || {};
    }
  } catch {
    // not JSON: keep the generic wording
  }
  return new ApiError(response.status, code, message, details);
}

/** One API call. `body`: an object (JSON) or a Blob (sent as it is). */
export async function call(method, path, { body, query, token } = {}) {
  const headers = { Accept: "application/json" };
  const bearer = token || session.token();
  if (bearer) headers.Authorization = `Bearer ${bearer}`;
  let payload;
  if (body instanceof Blob) {
    payload = body;
    headers["Content-Type"] = body.type || "application/octet-stream";
  } else if (body !== undefined) {
    payload = JSON.stringify(body);
    headers["Content-Type"] = "application/json";
  }
  let url = path.startsWith(base + "/") ? path : apiBase + path;
  if (query) {
    const params = new URLSearchParams();
    for (const [name, value] of Object.entries(query)) {
      if (value !== undefined && value !== null && value !== "") params.set(name, String(value));
    }
    const text = params.toString();
    if (text) url += `?${text}`;
  }
  let response;
  try {
    response = await fetch(url, { method, headers, body: payload, cache: "no-store", credentials: "omit" });
  } catch {
    throw new ApiError(0, "network_error", "keygate did not answer. Check that it is running.");
  }
  if (response.status === 401) {
    const error = await errorOf(response);
    if (!token) onUnauthorized(error);
    throw error;
  }
  if (!response.ok) throw await errorOf(response);
  if (response.status === 204) return null;
  const type = response.headers.get("Content-Type") || "";
  return type.startsWith("application/json") ? response.json() : response.blob();
}

export const get = (path, query) => call("GET", path, { query });
export const post = (path, body) => call("POST", path, { body: body ?? {} });
export const patch = (path, body) => call("PATCH", path, { body });
export const put = (path, body) => call("PUT", path, { body });
export const del = (path, query) => call("DELETE", path, { query });

// --- avatars: fetched with the token, shown as blob: URLs ---------------------
const images = new Map();

/** The object URL of an avatar (cached by avatar_url, which changes with the image). */
export function loadImage(url) {
  if (!images.has(url)) {
    images.set(
      url,
      call("GET", url)
        .then((blob) => URL.createObjectURL(blob))
        .catch(() => null),
    );
  }
  return images.get(url);
}

function forgetImages() {
  for (const pending of images.values()) {
    pending.then((url) => url && URL.revokeObjectURL(url));
  }
  images.clear();
}

/** Every page of a list endpoint (users; keys of one owner for the limit). */
export async function all(path, query = {}) {
  const items = [];
  let cursor;
  do {
    const page = await get(path, { ...query, limit: 500, cursor });
    items.push(...page.items);
    cursor = page.next_cursor;
  } while (cursor);
  return items;
}
