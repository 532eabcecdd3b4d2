// Requests to the gateway's /v1 API with the bearer token of this tab.
//
// The token lives in sessionStorage (this tab only, gone when it closes) and travels only in
// the Authorization header, never in a URL: the gateway refuses tokens in query strings
// because URLs end up in logs. A gateway in dev mode (AGENTRUN_GATEWAY_INSECURE_NO_AUTH)
// answers without one, so the page asks for a token only when a request comes back 401;
// requests that hit a 401 wait for the new token and are sent again.

const TOKEN_KEY = "agentrun.token";

let asking = null; // the pending prompt: concurrent 401s share one
let prompt = async () => { throw new Error("no way to ask for a token"); };

/** Install the function that asks the user for a token: (reason) => Promise<string>. */
export function onTokenNeeded(ask) {
  prompt = ask;
}

export function token() {
  return sessionStorage.getItem(TOKEN_KEY);
}

export function forgetToken() {
  sessionStorage.removeItem(TOKEN_KEY);
}

/** The token's claims, unverified (the gateway verifies): only to suggest namespaces and show who. */
export function claims() {
  const value = token();
  if (!value) return null;
  try {
    const part = value.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
    const json = decodeURIComponent(Array.from(atob(part), (c) => "%" + c.charCodeAt(0).toString(16).padStart(2, "0")).join(""));
    const parsed = JSON.parse(json);
    return parsed && typeof parsed === "object" ? parsed : null;
  } catch {
    return null;
  }
}

/** The URL of an API path, relative to the page, so that a gateway behind a path prefix works. */
export function url(path) {
  return new URL(path, document.baseURI).toString();
}

export function runsPath(namespace, name = "", action = "") {
  let path = `v1/namespaces/${encodeURIComponent(namespace)}/runs`;
  if (name) path += `/${encodeURIComponent(name)}`;
  if (action) path += `/${action}`;
  return path;
}

/** The gateway's error body ({error, message, errors?}), or one made from the status. */
export async function errorOf(response) {
  try {
    const body = await response.json();
    if (body && typeof body.message === "string") return body;
  } catch {
    // not JSON: a proxy's page
  }
  return { error: String(response.status), message: `${response.status} ${response.statusText}`.trim() };
}

async function ask(reason) {
  if (!asking) {
    asking = (async () => {
      try {
        const value = (await prompt(reason)).trim();
        sessionStorage.setItem(TOKEN_KEY, value);
      } finally {
        asking = null;
      }
    })();
  }
  return asking;
}

/**
 * fetch() with the token; on 401 forget the token, ask for another and send again.
 * Resolves with the Response of any other status; rejects only on network errors or abort.
 */
export async function request(path, { method = "GET", body, headers = {}, signal } = {}) {
  for (;;) {
    if (asking) await asking;
    const sent = token();
    const h = new Headers(headers);
    if (sent) h.set("Authorization", `Bearer ${sent}`);
    if (body !== undefined) h.set("Content-Type", "application/json");
    const response = await fetch(url(path), {
      method, headers: h, signal, body: body === undefined ? undefined : JSON.stringify(body),
      cache: "no-store", credentials: "omit", referrerPolicy: "no-referrer",
    });
    if (response.status !== 401) return response;
    const error = await errorOf(response);
    if (token() === sent) forgetToken(); // another request may have stored a new one meanwhile
    if (token() === null) await ask(error.message);
    if (signal && signal.aborted) throw new DOMException("aborted", "AbortError");
  }
}

/** request() that expects JSON: resolves with the body, rejects with an Error carrying the gateway's. */
export async function json(path, options) {
  const response = await request(path, options);
  if (!response.ok) {
    const error = await errorOf(response);
    throw Object.assign(new Error(error.message), { status: response.status, body: error });
  }
  return response.json();
}
