// Words and numbers as the console shows them: one byte format, one date format, and the
// one-line summary of a tool call.

export const plural = (n, one, many) => `${n} ${n === 1 ? one : many}`;

/** Sizes in one unit family everywhere: bytes, then KiB and MiB. */
export function bytes(n) {
  if (n < 1024) return plural(n, "byte", "bytes");
  if (n < 1024 * 1024) return `${(n / 1024).toFixed(1)} KiB`;
  return `${(n / 1024 / 1024).toFixed(1)} MiB`;
}

/** A date, or null when there is none worth showing (a missing or epoch timestamp). */
export function date(value) {
  const when = typeof value === "number" ? new Date(value * 1000) : new Date(value);
  if (!value || Number.isNaN(when.getTime()) || when.getTime() <= 0) return null;
  return when.toLocaleString(undefined, {dateStyle: "medium", timeStyle: "short"});
}

export const seconds = (ms) => `${(ms / 1000).toFixed(1)} s`;

const WORKSPACE = "/workspace/";
const shortPath = (path) => (typeof path === "string" && path.startsWith(WORKSPACE) ? path.slice(WORKSPACE.length) || "." : path);
const oneLine = (text) => String(text).replace(/\s+/g, " ").trim();

/** `bash: ls -R /workspace`, `edit: create notes/plan.md`, `web_search: bisect`... */
export function toolLine(name, input = {}) {
  input = input || {};
  if (name === "bash") return input.restart ? "bash: restart the shell" : `bash: ${oneLine(input.command ?? "")}`;
  if (name === "str_replace_based_edit_tool") {
    const verb = {view: "view", create: "create", str_replace: "edit", insert: "insert into", undo_edit: "undo edit of"}[input.command] || input.command || "edit";
    return `edit: ${verb} ${shortPath(input.path ?? "")}`.trim();
  }
  if (name === "web_search" && input.query) return `web_search: ${oneLine(input.query)}`;
  if (name === "web_fetch" && input.url) return `web_fetch: ${input.url}`;
  const shown = Object.entries(input).map(([k, v]) => `${k}=${typeof v === "string" ? v : JSON.stringify(v)}`).join(" ");
  return oneLine(shown ? `${name}: ${shown}` : name);
}

/** What a finished call's result says on the summary line: its exit status, or that it failed. */
export function toolOutcome(name, content, isError) {
  const text = typeof content === "string" ? content : "";
  if (name === "bash") {
    const code = text.match(/\[exit code (\d+)\]\s*$/);
    if (isError) return {text: /timed out/.test(text) ? "timed out" : "failed", failed: true};
    return code ? {text: `exit ${code[1]}`, failed: code[1] !== "0"} : {text: "exit 0", failed: false};
  }
  return isError ? {text: "failed", failed: true} : {text: "done", failed: false};
}

/** A wait, as a quota's Retry-After gives it: `42 s`, `3 min`, `5 h 12 min`. */
export function duration(totalSeconds) {
  const s = Math.max(0, Math.round(totalSeconds));
  if (s < 60) return `${s} s`;
  const minutes = Math.ceil(s / 60);
  if (minutes < 60) return `${minutes} min`;
  return `${Math.floor(minutes / 60)} h${minutes % 60 ? ` ${minutes % 60} min` : ""}`;
}

/** Dollars: cents for sums, four decimals below a cent (one message often costs less). */
export const usd = (n) => `$${n > 0 && n < 0.01 ? n.toFixed(4) : n.toFixed(2)}`;
