// The staff console: live sessions of every worker process, from the WebSocket at /console/live.
// Plain JavaScript, no framework and no CDN, so the console works on a machine with no internet.
// Every piece of text from a session (transcripts included) goes in with textContent, never as HTML.
"use strict";

(() => {
  const STALE_MS = 15000; // three heartbeats without word: the session's process is gone
  const MAX_RETRY_MS = 10000;

  const sessions = new Map(); // session_id -> {session, receivedAt, row}
  let socket = null;
  let following = null;
  let retryMs = 500;

  const $ = (id) => document.getElementById(id);
  // What the signed-in staff member may do (the server checks again for every action).
  const may = (what) => document.body.dataset[what] === "1";
  const tbody = () => $("sessions").querySelector("tbody");

  function send(message) {
    if (socket && socket.readyState === WebSocket.OPEN) socket.send(JSON.stringify(message));
  }

  function setConnection(state, text) {
    const el = $("connection");
    el.dataset.state = state;
    el.textContent = text;
  }

  function duration(entry) {
    const seconds = Math.floor(entry.session.duration_s + (performance.now() - entry.receivedAt) / 1000);
    const m = Math.floor(seconds / 60);
    const s = String(seconds % 60).padStart(2, "0");
    return `${m}:${s}`;
  }

  function level(rms) {
    // RMS of float samples in [-1, 1] as dBFS, and a 0..1 meter over the last 60 dB.
    if (!rms) return { db: "silent", meter: 0 };
    const db = 20 * Math.log10(rms);
    return { db: `${db.toFixed(1)} dBFS`, meter: Math.max(0, Math.min(1, (db + 60) / 60)) };
  }

  function cell(row, text, className) {
    const td = document.createElement("td");
    td.textContent = text;
    td.title = text; // long ids are cut short on screen; the whole value on hover
    if (className) td.className = className;
    row.appendChild(td);
    return td;
  }

  function renderRow(entry) {
    const s = entry.session;
    const row = entry.row || document.createElement("tr");
    row.replaceChildren();
    row.dataset.sessionId = s.session_id;
    row.classList.toggle("followed", s.session_id === following);
    cell(row, s.session_id, "mono");
    cell(row, new Date(s.started_at).toLocaleTimeString());
    cell(row, duration(entry), "duration");
    cell(row, s.client_address || "–", "mono");
    cell(row, s.api_key || "(open endpoint)");
    cell(row, s.model_type);
    cell(row, s.slot === null ? "–" : String(s.slot));
    const state = cell(row, s.state, "state");
    state.dataset.state = s.state;
    cell(row, s.server, "mono");
    if (!entry.row) {
      if (may("canFollow")) row.addEventListener("click", () => follow(s.session_id));
      tbody().appendChild(row);
      entry.row = row;
    }
    $("empty").hidden = sessions.size > 0;
  }

  function upsert(session) {
    const entry = sessions.get(session.session_id) || { row: null };
    entry.session = session;
    entry.receivedAt = performance.now();
    sessions.set(session.session_id, entry);
    renderRow(entry);
    if (session.session_id === following) renderMeters(session);
  }

  function remove(sessionId, reason) {
    const entry = sessions.get(sessionId);
    if (entry && entry.row) entry.row.remove();
    sessions.delete(sessionId);
    $("empty").hidden = sessions.size > 0;
    if (sessionId === following) {
      const ended = $("detail-ended");
      ended.textContent = `This session has ended (${reason || "gone"}).`;
      ended.hidden = false;
      if ($("end-session")) $("end-session").disabled = true;
      $("detail-state").textContent = "ended";
      $("detail-state").dataset.state = "ended";
      for (const turn of $("transcript").querySelectorAll('[data-status="in_progress"]')) turn.dataset.status = "ended";
    }
  }

  function renderMeters(session) {
    $("detail-state").textContent = session.state;
    $("detail-state").dataset.state = session.state;
    for (const side of ["input", "output"]) {
      const { db, meter } = level(session[`${side}_level`]);
      $(`${side}-level`).value = meter;
      $(`${side}-db`).textContent = db;
    }
    $("latency").textContent = session.latency_ms === null ? "–" : `${session.latency_ms.toFixed(0)} ms`;
  }

  function renderTranscript(transcript) {
    const list = $("transcript");
    const items = transcript.map((entry) => {
      const li = document.createElement("li");
      li.className = `turn ${entry.role}`;
      li.dataset.status = entry.status;
      const who = document.createElement("span");
      who.className = "who";
      who.textContent = entry.role === "user" ? "User" : "Assistant";
      const text = document.createElement("span");
      text.className = "text";
      if (entry.text) {
        text.textContent = entry.text;
      } else {
        text.classList.add("placeholder");
        text.textContent = entry.role === "user"
          ? (entry.status === "failed" ? "(speech; transcription failed)" : "(speech; no transcript)")
          : "…";
      }
      li.append(who, text);
      return li;
    });
    const atBottom = list.scrollTop + list.clientHeight >= list.scrollHeight - 8;
    list.replaceChildren(...items);
    if (atBottom) list.scrollTop = list.scrollHeight;
  }

  function follow(sessionId) {
    following = sessionId;
    $("detail").hidden = false;
    $("detail-id").textContent = sessionId;
    $("detail-ended").hidden = true;
    if ($("end-session")) $("end-session").disabled = false;
    $("transcript").replaceChildren();
    for (const entry of sessions.values()) renderRow(entry);
    const entry = sessions.get(sessionId);
    if (entry) renderMeters(entry.session);
    send({ action: "follow", session_id: sessionId });
  }

  function unfollowLocally() {
    following = null;
    $("detail").hidden = true;
    for (const entry of sessions.values()) renderRow(entry);
  }

  function unfollow() {
    unfollowLocally();
    send({ action: "unfollow" });
  }

  let errorTimer = null;
  function showError(text) {
    // A refused action (a permission revoked meanwhile, say) is said on the page, not only in the log.
    console.warn("console:", text);
    const el = $("console-error");
    el.textContent = text;
    el.hidden = false;
    clearTimeout(errorTimer);
    errorTimer = setTimeout(() => { el.hidden = true; }, 10000);
  }

  const handlers = {
    hello: () => setConnection("open", "live"),
    session: (message) => upsert(message.session),
    detail: (message) => {
      if (message.session.session_id !== following) return;
      upsert(message.session);
      renderTranscript(message.transcript);
    },
    session_gone: (message) => remove(message.session_id, message.reason),
    error: (message) => {
      showError(message.message);
      if (message.code !== "permission_denied") return;
      if (message.action === "follow" && message.session_id === following) unfollowLocally();
      if (message.action === "end" && $("end-session")) $("end-session").hidden = true;
    },
  };

  function connect() {
    const scheme = location.protocol === "https:" ? "wss" : "ws";
    socket = new WebSocket(`${scheme}://${location.host}${document.body.dataset.livePath}`);
    setConnection("connecting", "connecting…");
    socket.addEventListener("open", () => {
      retryMs = 500;
      // A fresh roll call refills the list; what we showed before may have ended meanwhile.
      for (const id of [...sessions.keys()]) remove(id, "reconnected");
      if (following) follow(following);
    });
    socket.addEventListener("message", (event) => {
      const message = JSON.parse(event.data);
      const handler = handlers[message.type];
      if (handler) handler(message);
    });
    socket.addEventListener("close", () => {
      setConnection("closed", `disconnected; retrying in ${Math.round(retryMs / 1000)} s`);
      setTimeout(connect, retryMs);
      retryMs = Math.min(retryMs * 2, MAX_RETRY_MS);
    });
  }

  function tick() {
    const now = performance.now();
    for (const [id, entry] of sessions) {
      if (now - entry.receivedAt > STALE_MS) {
        remove(id, "no word from its server");
        continue;
      }
      const td = entry.row && entry.row.querySelector(".duration");
      if (td) td.textContent = duration(entry);
    }
  }

  document.addEventListener("DOMContentLoaded", () => {
    const end = $("end-session");
    if (end) {
      end.addEventListener("click", () => {
        if (!following) return;
        end.disabled = true;
        send({ action: "end", session_id: following });
      });
    }
    $("close-detail").addEventListener("click", unfollow);
    setInterval(tick, 1000);
    connect();
  });
})();
