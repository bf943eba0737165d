// Drives the real socket.io-client against a server, as the original's frontends do, and prints
// one JSON object: every event received, in order, plus what the scenario decided.
//   node socketio_scenario.mjs <scenario> '<json params>'
// Scenarios are bounded: each ends at its last expected event or fails after params.timeoutMs.
import { io } from "socket.io-client";

const [scenario, rawParams] = process.argv.slice(2);
const p = JSON.parse(rawParams || "{}");
const seen = [];
const out = { scenario, events: seen };

function record(socket, label = "") {
  socket.onAny((name, ...args) => seen.push({ on: label, event: name, data: args[0] ?? null }));
  socket.on("connect_error", (err) => seen.push({ on: label, event: "connect_error", data: { message: err.message, data: err.data ?? null } }));
}

function waitFor(socket, event, predicate = () => true) {
  return new Promise((resolve) => {
    const handler = (data) => { if (predicate(data)) { socket.off(event, handler); resolve(data); } };
    socket.on(event, handler);
  });
}

function finish(code = 0) {
  process.stdout.write(JSON.stringify(out) + "\n");
  process.exit(code);
}

setTimeout(() => { out.timedOut = true; finish(2); }, p.timeoutMs || 30000);

// Where the server is and how to reach it, for every connection of a scenario: python-socketio
// at /socket.io/, or (path /ws, websocket only) the Engine.IO framing of the Lambda handlers.
function edge(extra = {}) {
  return { transports: p.transports, path: p.path || "/socket.io/", addTrailingSlash: p.addTrailingSlash ?? true, ...extra };
}

function useAgentSocket() {
  // frontend/src/hooks/useAgent.ts at ba7fe00, server URL changed, credentials added.
  return io(p.url, {
    query: { sessionId: p.sessionId },
    transports: p.transports || ["websocket", "polling"],
    path: p.path || "/socket.io/",
    addTrailingSlash: p.addTrailingSlash ?? true,
    reconnection: true,
    reconnectionAttempts: 10,
    reconnectionDelay: 1000,
    auth: p.auth,
  });
}

const scenarios = {
  // WS_FRAMES_PER_SECOND and WS_CONNECTIONS_PER_SESSION, set low by the test: a second
  // connection to the session is refused; a flood of events is refused, then disconnected.
  async limits() {
    const options = { query: { sessionId: p.sessionId }, auth: p.auth, reconnection: false };
    const first = io(p.url, edge(options));
    record(first, "first");
    await waitFor(first, "connect");
    const second = io(p.url, edge(options));
    record(second, "second");
    await waitFor(second, "connect_error");
    second.close();
    const closed = waitFor(first, "disconnect");
    for (let i = 0; i < p.flood; i++) first.emit("get_history");
    out.disconnectReason = await closed;
  },
  // The guide's section "4. Connect to Agent", verbatim but for the URL.
  async guide() {
    const socket = io(p.guideUrl);
    record(socket);

    socket.on('connect', () => {
      console.error('Connected to agent');

      socket.emit('start', {
        maxTurns: 50,
        model: 'claude-sonnet-4-5-20250929'
      });
    });

    socket.on('message', (data) => {
      console.error('Agent message:', data);
    });

    // Send user message
    socket.emit('message', {
      prompt: 'Help me debug this issue',
      options: {}
    });
    await waitFor(socket, "result");
    out.namespace = socket.nsp;
    out.transport = socket.io.engine.transport.name;
  },

  // useAgent's flow: connect -> get_history -> message -> stream/message -> result.
  async useAgent() {
    const socket = useAgentSocket();
    record(socket);
    socket.on("connect", () => socket.emit("get_history"));
    socket.on("hook_request", (data, callback) => callback({ action: "continue" }));
    await waitFor(socket, "connect");
    if (p.expectHistory) await waitFor(socket, "history");
    out.transport = socket.io.engine.transport.name;
    socket.emit("message", { prompt: p.prompt || "Hello", options: {} });
    await waitFor(socket, "result");
    if (p.thenStart) {
      socket.emit("start", p.thenStart);
      await waitFor(socket, "status", (d) => d && d.status === "ready");
    }
    socket.disconnect();
  },

  async interrupt() {
    const socket = useAgentSocket();
    record(socket);
    await waitFor(socket, "connect");
    socket.emit("message", { prompt: "Tell me a long story", options: {} });
    await waitFor(socket, "stream");
    socket.emit("interrupt");
    await waitFor(socket, "result");
    socket.disconnect();
  },

  async clear() {
    const socket = useAgentSocket();
    record(socket);
    await waitFor(socket, "connect");
    socket.emit("message", "Remember this");
    await waitFor(socket, "result");
    socket.emit("clear");
    await waitFor(socket, "cleared");
    socket.emit("get_history");
    await waitFor(socket, "history");
    socket.disconnect();
  },

  // Two connections with the same sessionId, one after the other, as a page reload does.
  async reconnect() {
    const first = useAgentSocket();
    record(first, "first");
    await waitFor(first, "connect");
    first.emit("message", { prompt: "First question", options: {} });
    await waitFor(first, "result");
    first.disconnect();
    const second = useAgentSocket();
    record(second, "second");
    second.on("connect", () => second.emit("get_history"));
    // status "Session resumed", the history it sends at once, then the one asked for.
    let histories = 0;
    await waitFor(second, "history", () => ++histories === 2);
    second.emit("message", { prompt: "Second question", options: {} });
    await waitFor(second, "result");
    second.emit("get_history");
    await waitFor(second, "history");
    second.disconnect();
  },

  // A permission ask answered through the hook_request acknowledgement.
  async permission() {
    const socket = useAgentSocket();
    record(socket);
    socket.on("hook_request", (data, callback) => callback(p.answer));
    await waitFor(socket, "connect");
    socket.emit("message", { prompt: "Run it", options: {} });
    await waitFor(socket, "result");
    socket.disconnect();
  },

  // start(options), then a message: the options apply to the turn.
  async startThenMessage() {
    const socket = useAgentSocket();
    record(socket);
    await waitFor(socket, "connect");
    socket.emit("start", p.start);
    await waitFor(socket, "status", (d) => d && d.status === "ready");
    socket.emit("message", { prompt: "Go", options: {} });
    await waitFor(socket, "result");
    socket.disconnect();
  },

  // One connection attempt: connected, or refused with connect_error.
  async connectOnly() {
    const socket = io(p.url, edge({ query: { sessionId: p.sessionId, ...(p.query || {}) }, auth: p.auth, reconnection: false }));
    record(socket);
    await Promise.race([waitFor(socket, "connect"), waitFor(socket, "connect_error")]);
    out.connected = socket.connected;
    socket.disconnect();
  },

  // Refused connections and a bad event.
  async errors() {
    const bare = io(p.url, edge({ query: { sessionId: p.sessionId }, reconnection: false }));
    record(bare, "no-credentials");
    await waitFor(bare, "connect_error");
    const wrong = io(p.url, edge({ query: { sessionId: p.sessionId }, auth: { token: "not-the-token" }, reconnection: false }));
    record(wrong, "wrong-token");
    await waitFor(wrong, "connect_error");
    const socket = useAgentSocket();
    record(socket, "ok");
    await waitFor(socket, "connect");
    socket.emit("message", { prompt: "" });
    await waitFor(socket, "error");
    socket.emit("launch_missiles", {});
    await waitFor(socket, "error");
    socket.emit("start", { maxTurns: 5, cwd: "/tmp", frobnicate: true });
    await waitFor(socket, "status", (d) => d && d.status === "ready");
    socket.disconnect();
  },
};

try {
  await scenarios[scenario]();
  finish(0);
} catch (err) {
  out.error = String(err && err.stack || err);
  finish(1);
}
