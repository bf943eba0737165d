// The REST API: JSON requests, and raw requests for the files API (bytes, not JSON).
import {state} from "./state.js";

export const base = () => state.api.replace(/\/$/, "");
export const userPath = () => `/users/${encodeURIComponent(state.user)}`;

async function request(method, path, {body, headers = {}} = {}) {
  const all = {...headers};
  if (state.key) all.Authorization = `Bearer ${state.key}`;
  try {
    return await fetch(base() + path, {method, headers: all, body});
  } catch (err) {
    const error = new Error(`Cannot reach ${state.api} (${err.message}). Is the server running, and does it allow this origin (CORS)?`);
    error.code = "unreachable";
    throw error;
  }
}

async function failure(response, data) {
  const error = new Error(data.error || `HTTP ${response.status}`);
  error.code = data.code;
  error.status = response.status;
  // A quota's 429 says when to try again (CORS exposes the header).
  const retryAfter = Number(response.headers.get("Retry-After"));
  if (retryAfter > 0) error.retryAfter = retryAfter;
  return error;
}

/** A JWT's shape (three base64url segments): a user token rather than an API key. The server
 * decides (an API key of that shape is still the key); this only decides what the form shows. */
export const looksLikeToken = (text) => /^[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*$/.test(text.trim());

/** Who the credential signs in as: {role: "operator"} (the API key: any user) or
 * {role: "user", userId} (a user token: only that user, whichever claim names it). */
export const whoAmI = () => api("GET", "/me");

/** A JSON request; rejects with an Error carrying the API's `code` and the HTTP status. */
export async function api(method, path, body, headers = {}) {
  const response = await request(method, path, {
    body: body === undefined ? undefined : JSON.stringify(body),
    headers: body === undefined ? headers : {...headers, "Content-Type": "application/json"},
  });
  const text = await response.text();
  let data = {};
  try { data = text ? JSON.parse(text) : {}; } catch { data = {error: `HTTP ${response.status}: ${text.slice(0, 200)}`}; }
  if (!response.ok) throw await failure(response, data);
  return data;
}

/** A request whose body or answer is bytes; its errors are JSON like every other route's. */
export async function rawRequest(method, path, options = {}) {
  const response = await request(method, path, options);
  if (!response.ok) throw await failure(response, await response.json().catch(() => ({})));
  return response;
}

/** /health is open: whether the server runs, and whether the model is the offline stand-in. */
export async function health() {
  try {
    const response = await fetch(`${base()}/health`);
    return await response.json();
  } catch {
    return null;
  }
}
