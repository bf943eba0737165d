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
  return error;
}

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
