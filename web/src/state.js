// The console's one state object, and the values it is configured with.

const KEY_REMEMBERED = localStorage.getItem("console.rememberKey") === "1";

export const keyRemembered = KEY_REMEMBERED;
export const CONVERSATIONS_PAGE = 10;
// Reconnecting backs off from a quarter second to 10 s between tries, and keeps trying for this
// long: enough for a server restart or a laptop waking up.
export const RECONNECT_FOR_MS = 3 * 60 * 1000;
export const RECONNECT_MAX_DELAY_MS = 10000;

export const state = {
  api: localStorage.getItem("console.api") || window.location.origin,
  // The API key or user token stays in this tab (sessionStorage) unless the user asks to
  // remember it (localStorage); a token passed in the URL fragment is kept the same way.
  key: (KEY_REMEMBERED ? localStorage : sessionStorage).getItem("console.key") || "",
  user: localStorage.getItem("console.user") || "",
  caller: null,        // GET /me's answer for the credential: {role: "operator" | "user", userId}
  requestedUser: null, // the user an app's link named (#user=) beside its token: checked, not trusted
  usage: null,         // {usage, limits}: the loaded user's usage today and the limits in effect
  loadedUser: null,    // the user whose skills, settings and conversations are shown
  skills: {},          // name -> detail (for folder files)
  session: null,       // the /setup answer
  ws: null,
  opened: false,       // whether the current socket ever opened (a refusal never does)
  lastSeq: 0,
  pending: false,      // a message was sent and its turn has not ended
  unacked: null,       // the last message frame sent whose `queued` answer has not come (resent on reconnect)
  turnActive: false,   // a turn is running on the server
  awaitingPermission: 0,  // permission cards waiting for the user's answer
  reconnect: null,     // {since, attempt}: reconnecting after a dropped socket
  readOnly: null,      // {conversationId}: a saved conversation is shown instead of the session
  model: null,         // the model of the running turn, shown on each assistant turn
  current: null,       // {el, text}: the assistant reply receiving stream deltas
  thinking: null,      // {el, text}: the reply's thinking, collapsed
  tools: {},           // tool_use_id -> {el, name, input, started}
  permissions: {},     // toolUseId -> the Approve / Deny card
  conversations: [],   // the listed page(s): {conversationId, size, updated}
  conversationsCursor: null,
  summaries: new Map(),  // conversationId -> {updated, prompt, count}: fetched once per version
  webTools: null,
  loadError: null,     // the user whose data could not be loaded (the page says so)
  turnStart: null,     // the first assistant node of the running turn (labelled with its model)
};
