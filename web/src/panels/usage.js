// Usage and limits: what the loaded user used today (GET /users/{id}/usage) against the limits
// in effect for them (GET /users/{id}/limits: the server's USER_* settings or the operator's
// overrides). At the top of the Settings panel: one click away, not always on screen. A quota
// refusal in the chat points here.
import {api, userPath} from "../api.js";
import {$, el} from "../dom.js";
import {bytes, duration, plural, usd} from "../format.js";
import {state} from "../state.js";
import {showView} from "../views.js";

const SETTING = {max_sessions: "sessions at once", messages_per_minute: "messages a minute",
                 daily_budget_usd: "daily budget", storage_mb: "storage"};
const MIB = 1024 * 1024;

/** Reads the user's usage today and their limits, and shows them. */
export async function loadUsage() {
  const user = state.user;
  const [usage, limits] = await Promise.all([api("GET", `${userPath()}/usage`), api("GET", `${userPath()}/limits`)]);
  if (user !== state.user) return;  // another user was loaded meanwhile
  state.usage = {usage, limits, at: new Date()};
  renderUsage();
}

/** Refreshes the usage if it is on screen (after a turn); a failure is said in the panel. */
export function refreshUsage({always = false} = {}) {
  if (!state.loadedUser || (!always && $("views").dataset.view !== "settings-panel")) return;
  loadUsage().catch((err) => { $("usage-info").textContent = `Usage could not be read: ${err.message}`; });
}

function row(term, text, {used, limit, label} = {}) {
  const dd = el("dd", {}, el("span", {textContent: text}));
  if (limit) {
    const meter = el("meter", {min: 0, max: limit, value: Math.min(used, limit), high: limit * 0.8, optimum: 0});
    meter.setAttribute("aria-label", label);
    dd.append(meter);
    if (used >= limit) dd.firstChild.className = "over";
  }
  return [el("dt", {textContent: term}), dd];
}

export function renderUsage() {
  const list = $("usage-list");
  list.replaceChildren();
  $("usage-refresh").disabled = !state.loadedUser;
  if (!state.usage) { $("usage-info").textContent = "Load a user to see their usage and limits."; return; }
  const {usage, limits, at} = state.usage;
  const today = usage.days[usage.days.length - 1] || {messages: 0, turns: 0, inputTokens: 0, outputTokens: 0, costUsd: 0, unpricedMessages: 0};
  const who = state.caller?.role === "user" ? `Signed in as ${usage.userId} with a user token` : `${usage.userId}, as the operator`;
  $("usage-info").textContent = `${who} · as of ${at.toLocaleTimeString([], {hour: "2-digit", minute: "2-digit"})}.`;
  const budget = limits.dailyBudgetUsd;
  const cost = budget == null ? `${usd(today.costUsd)} · no daily budget`
    : `${usd(today.costUsd)} of ${usd(budget)} · ${usd(Math.max(0, budget - today.costUsd))} left`;
  const storageLimit = limits.storageMb == null ? null : limits.storageMb * MIB;
  const storage = storageLimit == null ? `${bytes(usage.storageBytes)} · no limit`
    : `${bytes(usage.storageBytes)} of ${bytes(storageLimit)} · ${bytes(Math.max(0, storageLimit - usage.storageBytes))} left`;
  list.append(
    ...row("Cost", cost, {used: today.costUsd, limit: budget, label: "Share of today's budget spent"}),
    ...row("Messages", `${today.messages}${limits.messagesPerMinute == null ? "" : ` · at most ${limits.messagesPerMinute} a minute`}`),
    ...row("Tokens", `${today.inputTokens.toLocaleString()} in · ${today.outputTokens.toLocaleString()} out`),
    ...row("Storage", storage, {used: usage.storageBytes, limit: storageLimit, label: "Share of the storage limit used"}),
    ...row("Sessions", limits.maxSessions == null ? "no limit" : `at most ${plural(limits.maxSessions, "live session", "live sessions")} at once`),
  );
  if (today.unpricedMessages) {
    list.append(el("p", {className: "usage-note", textContent: `${plural(today.unpricedMessages, "message", "messages")} of a model without a price are not in the cost.`}));
  }
  if (limits.overridden.length) {
    list.append(el("p", {className: "usage-note", textContent: `Set for this user by the operator: ${limits.overridden.map((k) => SETTING[k] || k).join(", ")}.`}));
  }
}

/** A quota refusal in the chat: the way to the usage, and (the day's budget, whose message
 * names the hour) how long that is from now. */
export function explainQuota(card, frame) {
  if (frame.code === "daily_budget_reached" && frame.retryAfter) {
    card.append(el("p", {className: "tip", textContent: `That is in ${duration(frame.retryAfter)}.`}));
  }
  const open = el("button", {type: "button", className: "secondary small-button", textContent: "See usage and limits"});
  open.addEventListener("click", () => { showView("settings-panel"); refreshUsage({always: true}); $("usage-title").scrollIntoView({block: "nearest"}); });
  card.append(open);
  refreshUsage();
}

export function wireUsage() {
  $("usage-refresh").addEventListener("click", () => refreshUsage({always: true}));
}
