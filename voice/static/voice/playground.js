// The playground: talk to this server from the browser over Realtime (WebRTC or WebSocket) or the
// Live API (WebSocket), and watch the transcript and the event stream as they arrive.
// Plain JavaScript, no framework, no build step and no CDN: it works on a machine with no internet.
// Text from the server (transcripts, errors) goes in with textContent, never as HTML.
//
// Ids and data attributes are a contract with the browser tests: #protocol, #api-key, #connect,
// #disconnect, #push-to-talk, #stream-continuously, #status[data-state][data-session-id][data-call-id],
// #transcript li[data-role],
// #event-log li[data-type][data-direction], #mic-level / #output-level [data-level][data-max],
// #audio-received[data-bytes][data-ms][data-chunks][data-audible-ms], #audio-sent[data-bytes][data-ms],
// #mint-key (staff only).
"use strict";

(() => {
  const RATE = 24000; // pcm16 mono at 24 kHz both ways on the WebSocket transports
  const CHUNK_SAMPLES = 2400; // 100 ms per input_audio_buffer.append / session.input_audio.append
  const MIN_COMMIT_SAMPLES = 2400; // the server refuses a commit of less than 100 ms
  const MAX_LOG = 400; // event log rows kept
  const MAX_TRANSCRIPT = 200; // transcript lines kept
  const PLAYBACK_LEAD_S = 0.08; // first chunk after a gap starts this far ahead: room for jitter
  const REALTIME_MODEL = "gpt-realtime";
  const TRANSCRIPTION_MODEL = "gpt-4o-mini-transcribe";
  const METER_MS = 100;
  const AUDIBLE_RMS = 10 ** (-50 / 20);

  const $ = (id) => document.getElementById(id);
  const page = document.body.dataset;

  let session = null; // the one live connection: {kind, send(event), stop(), ...}
  let audio = null; // {ctx, stream, track, source, micAnalyser, outAnalyser, outGain, capture, ...}
  let talking = false; // push-to-talk held
  let meterTimer = null;
  let statsTimer = null;
  // sentMs: null while it follows from sentBytes (pcm16 on a WebSocket); WebRTC's stats give it.
  const counters = { sentBytes: 0, sentMs: null, receivedBytes: 0, receivedMs: 0, chunks: 0, audibleMs: 0, micMax: 0, outMax: 0 };

  // --- small helpers ------------------------------------------------------------------------------

  function setStatus(state, text) {
    const el = $("status");
    el.dataset.state = state;
    el.textContent = text;
  }

  function showSession(id) {
    // The session's id (and a WebRTC call's) stay on #status after the call: a test finds the
    // session in the staff console and the stored conversations by them.
    $("status").dataset.sessionId = id || "";
  }

  function showError(text) {
    const el = $("playground-error");
    el.textContent = text;
    el.hidden = !text;
  }

  function level(rms) {
    // RMS of float samples in [-1, 1] as dBFS, and a 0..1 meter over the last 60 dB (as the console).
    if (!(rms > 1e-5)) return { db: "silent", meter: 0 }; // below -100 dBFS: digital silence
    const db = 20 * Math.log10(rms);
    return { db: `${db.toFixed(1)} dBFS`, meter: Math.max(0, Math.min(1, (db + 60) / 60)) };
  }

  function setMeter(which, rms) {
    const { db, meter } = level(rms);
    const el = $(`${which}-level`);
    el.value = meter;
    el.dataset.level = meter.toFixed(3);
    const key = which === "mic" ? "micMax" : "outMax";
    counters[key] = Math.max(counters[key], meter);
    el.dataset.max = counters[key].toFixed(3);
    $(`${which}-db`).textContent = db;
  }

  function analyserRms(analyser) {
    if (!analyser) return 0;
    const samples = new Float32Array(analyser.fftSize);
    analyser.getFloatTimeDomainData(samples);
    let sum = 0;
    for (const x of samples) sum += x * x;
    return Math.sqrt(sum / samples.length);
  }

  function showCounters() {
    const sent = $("audio-sent");
    sent.dataset.bytes = String(counters.sentBytes);
    const sentMs = counters.sentMs !== null ? counters.sentMs : counters.sentBytes / ((2 * RATE) / 1000);
    sent.dataset.ms = String(Math.round(sentMs));
    sent.textContent = `${(sentMs / 1000).toFixed(1)} s (${counters.sentBytes} bytes)`;
    const received = $("audio-received");
    received.dataset.bytes = String(counters.receivedBytes);
    received.dataset.ms = String(Math.round(counters.receivedMs));
    received.dataset.chunks = String(counters.chunks);
    received.dataset.audibleMs = String(counters.audibleMs);
    received.textContent = `${(counters.receivedMs / 1000).toFixed(1)} s (${counters.receivedBytes} bytes)`;
  }

  function resetCounters() {
    for (const key of Object.keys(counters)) counters[key] = 0;
    counters.sentMs = null;
    showCounters();
    setMeter("mic", 0);
    setMeter("output", 0);
  }

  function base64FromBytes(bytes) {
    let binary = "";
    for (let i = 0; i < bytes.length; i += 0x8000) {
      binary += String.fromCharCode.apply(null, bytes.subarray(i, i + 0x8000));
    }
    return btoa(binary);
  }

  function bytesFromBase64(text) {
    const binary = atob(text);
    const bytes = new Uint8Array(binary.length);
    for (let i = 0; i < binary.length; i++) bytes[i] = binary.charCodeAt(i);
    return bytes;
  }

  function pcm16FromFloat(samples) {
    const bytes = new Uint8Array(samples.length * 2);
    const view = new DataView(bytes.buffer);
    for (let i = 0; i < samples.length; i++) {
      const x = Math.max(-1, Math.min(1, samples[i]));
      view.setInt16(2 * i, x < 0 ? x * 0x8000 : x * 0x7fff, true);
    }
    return bytes;
  }

  function floatFromPcm16(bytes) {
    const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
    const samples = new Float32Array(bytes.byteLength >> 1);
    for (let i = 0; i < samples.length; i++) samples[i] = view.getInt16(2 * i, true) / 0x8000;
    return samples;
  }

  // Streaming linear-interpolation resampler (the microphone's rate to 24 kHz), state kept across
  // chunks so that there is no click at chunk boundaries.
  class Resampler {
    constructor(from, to) {
      this.step = from / to;
      this.pos = 0; // next output position in input samples; -1 is the previous chunk's last sample
      this.last = 0;
    }

    push(input) {
      const out = [];
      let pos = this.pos;
      const n = input.length;
      if (this.step === 1) return input.slice();
      while (pos < n - 1) {
        const i = Math.floor(pos);
        const frac = pos - i;
        const a = i < 0 ? this.last : input[i];
        out.push(a + (input[i + 1] - a) * frac);
        pos += this.step;
      }
      this.pos = pos - n;
      if (n) this.last = input[n - 1];
      return Float32Array.from(out);
    }
  }

  // --- the event log and the transcript -------------------------------------------------------------

  function summary(event) {
    // One short line per event; audio payloads are left out, text is cut short.
    const parts = [];
    for (const key of ["delta", "transcript", "item_id", "response_id", "reason", "code", "message"]) {
      let value = event[key];
      if (value === undefined || value === null) continue;
      if (key === "delta" && /audio\.delta$/.test(event.type)) {
        parts.push(`${Math.floor((value.length * 3) / 4)} bytes`);
        continue;
      }
      value = typeof value === "string" ? value : JSON.stringify(value);
      parts.push(`${key}=${value.length > 80 ? `${value.slice(0, 80)}…` : value}`);
    }
    if (event.error) parts.push(`${event.error.code || event.error.type || ""}: ${event.error.message || ""}`);
    return parts.join(" ");
  }

  const MERGE_WITHIN = 8; // rows
  const recentRows = new Map(); // "direction type" -> the latest row of a streamed event type

  function rowsSince(row) {
    let count = 0;
    for (let next = row.nextElementSibling; next && count < MERGE_WITHIN; next = next.nextElementSibling) count++;
    return count;
  }

  function logEvent(direction, event) {
    const log = $("event-log");
    log.dataset.count = String(Number(log.dataset.count || 0) + (direction === "received" ? 1 : 0));
    const type = String(event.type || "?");
    // Audio and transcript deltas and audio appends come a dozen a second each: one that follows
    // its kind within the last few rows adds to that row's count (and updates its detail) instead.
    const streamed = /\.(delta|append)$/.test(type);
    const previous = streamed ? recentRows.get(`${direction} ${type}`) : null;
    if (previous && previous.isConnected && rowsSince(previous) < MERGE_WITHIN) {
      previous.dataset.repeat = String(Number(previous.dataset.repeat) + 1);
      previous.querySelector(".repeat").textContent = `×${previous.dataset.repeat}`;
      previous.querySelector(".detail").textContent = summary(event);
      return;
    }
    const row = document.createElement("li");
    row.dataset.type = type;
    row.dataset.direction = direction;
    row.dataset.repeat = "1";
    row.className = direction + (type === "error" ? " error" : "");
    const time = document.createElement("span");
    time.className = "time";
    time.textContent = new Date().toLocaleTimeString();
    const arrow = document.createElement("span");
    arrow.className = "arrow";
    arrow.textContent = direction === "received" ? "←" : "→";
    const name = document.createElement("span");
    name.className = "type";
    name.textContent = type;
    const repeat = document.createElement("span");
    repeat.className = "repeat";
    const detail = document.createElement("span");
    detail.className = "detail";
    detail.textContent = summary(event);
    row.append(time, arrow, name, repeat, detail);
    if (streamed) recentRows.set(`${direction} ${type}`, row);
    const atBottom = log.scrollTop + log.clientHeight >= log.scrollHeight - 20;
    log.appendChild(row);
    while (log.childElementCount > MAX_LOG) log.firstElementChild.remove();
    if (atBottom) log.scrollTop = log.scrollHeight;
  }

  const lines = new Map(); // key (item id, or a Live turn) -> <li>
  let liveTurn = null; // the Live transcript's current line: {role, key}
  let liveTurns = 0;

  function line(key, role) {
    let row = lines.get(key);
    if (!row) {
      row = document.createElement("li");
      row.dataset.role = role;
      row.dataset.key = key;
      const who = document.createElement("span");
      who.className = "role";
      who.textContent = role === "user" ? "You" : "Moshi";
      const text = document.createElement("span");
      text.className = "text";
      row.append(who, text);
      const list = $("transcript");
      list.appendChild(row);
      while (list.childElementCount > MAX_TRANSCRIPT) {
        lines.delete(list.firstElementChild.dataset.key);
        list.firstElementChild.remove();
      }
      lines.set(key, row);
    }
    return row;
  }

  function appendText(key, role, text) {
    const row = line(key, role);
    row.classList.remove("pending");
    row.querySelector(".text").textContent += text;
    row.scrollIntoView({ block: "nearest" });
  }

  function setText(key, role, text) {
    const row = line(key, role);
    row.classList.remove("pending");
    row.querySelector(".text").textContent = text;
  }

  function liveFragment(role, text) {
    // Live fragments of one speaker in a row are one line; a change of speaker starts the next.
    if (!liveTurn || liveTurn.role !== role) liveTurn = { role, key: `live-${++liveTurns}` };
    appendText(liveTurn.key, role, text);
  }

  // --- audio: microphone capture, level meters, playback --------------------------------------------

  const WORKLET = `
    class Capture extends AudioWorkletProcessor {
      process(inputs) {
        const channel = inputs[0] && inputs[0][0];
        if (channel) this.port.postMessage(channel.slice(0));
        return true;
      }
    }
    registerProcessor("playground-capture", Capture);
  `;

  async function startAudio({ capture }) {
    const ctx = new AudioContext();
    await ctx.resume(); // created in the click handler: allowed to start
    const stream = await navigator.mediaDevices.getUserMedia({
      audio: { channelCount: 1, echoCancellation: true, noiseSuppression: true, autoGainControl: true },
    });
    const source = ctx.createMediaStreamSource(stream);
    const micAnalyser = ctx.createAnalyser();
    micAnalyser.fftSize = 2048;
    source.connect(micAnalyser);
    const outAnalyser = ctx.createAnalyser();
    outAnalyser.fftSize = 2048;
    const outGain = ctx.createGain();
    outGain.connect(outAnalyser);
    outAnalyser.connect(ctx.destination);
    const state = {
      ctx,
      stream,
      track: stream.getAudioTracks()[0],
      source,
      micAnalyser,
      outAnalyser,
      outGain,
      capture: null,
      nextTime: 0,
      playing: new Set(),
      pending: [], // 24 kHz float chunks not yet sent
      pendingSamples: 0,
      resampler: new Resampler(ctx.sampleRate, RATE),
    };
    if (capture) state.capture = await captureNode(ctx, source, (samples) => onMicrophone(state, samples));
    meterTimer = setInterval(() => {
      setMeter("mic", analyserRms(state.micAnalyser));
      const out = analyserRms(state.remoteAnalyser || state.outAnalyser);
      setMeter("output", out);
      // Time the output was above -50 dBFS: sound, not silence (WebRTC's counters count both).
      if (out > AUDIBLE_RMS) counters.audibleMs += METER_MS;
      showCounters();
    }, METER_MS);
    return state;
  }

  async function captureNode(ctx, source, onSamples) {
    // AudioWorklet where there is one (a Blob module: no extra file to serve), else ScriptProcessor.
    const sink = ctx.createGain();
    sink.gain.value = 0; // pulled by the graph, heard by no one
    sink.connect(ctx.destination);
    if (ctx.audioWorklet && typeof AudioWorkletNode === "function") {
      const url = URL.createObjectURL(new Blob([WORKLET], { type: "text/javascript" }));
      try {
        await ctx.audioWorklet.addModule(url);
        const node = new AudioWorkletNode(ctx, "playground-capture", { numberOfInputs: 1, numberOfOutputs: 1, channelCount: 1 });
        node.port.onmessage = (message) => onSamples(message.data);
        source.connect(node);
        node.connect(sink);
        return node;
      } catch (error) {
        console.warn("AudioWorklet unavailable, using ScriptProcessor", error);
      } finally {
        URL.revokeObjectURL(url);
      }
    }
    const node = ctx.createScriptProcessor(2048, 1, 1);
    node.onaudioprocess = (event) => onSamples(event.inputBuffer.getChannelData(0).slice(0));
    source.connect(node);
    node.connect(sink);
    return node;
  }

  function wantsMicrophone() {
    return $("stream-continuously").checked || talking;
  }

  function onMicrophone(state, samples) {
    const resampled = state.resampler.push(samples);
    const open = wantsMicrophone();
    // A closed microphone streams silence, as a muted one does: server VAD hears the turn end, and
    // Live keeps its clock. Without turn detection nothing is sent between turns (the client
    // commits each one, and the buffer would only fill with silence).
    const silence = !open && session && (session.kind === "live-ws" || $("turn-detection").checked);
    if (!session || !session.ready || !(open || silence)) {
      state.pending = [];
      state.pendingSamples = 0;
      return;
    }
    state.pending.push(open ? resampled : new Float32Array(resampled.length));
    state.pendingSamples += resampled.length;
    if (state.pendingSamples >= CHUNK_SAMPLES) flushMicrophone(state);
  }

  function flushMicrophone(state) {
    if (!state || !state.pendingSamples || !session || !session.ready) return;
    const all = new Float32Array(state.pendingSamples);
    let offset = 0;
    for (const chunk of state.pending) {
      all.set(chunk, offset);
      offset += chunk.length;
    }
    state.pending = [];
    state.pendingSamples = 0;
    const bytes = pcm16FromFloat(all);
    counters.sentBytes += bytes.length;
    session.sinceCommit = (session.sinceCommit || 0) + all.length;
    session.sendAudio(base64FromBytes(bytes));
    showCounters();
  }

  function play(base64) {
    // Gapless: each chunk starts where the previous one ends (or a little ahead after a gap).
    if (!audio) return;
    const bytes = bytesFromBase64(base64);
    counters.receivedBytes += bytes.length;
    counters.receivedMs += bytes.length / ((2 * RATE) / 1000);
    counters.chunks += 1;
    showCounters();
    const samples = floatFromPcm16(bytes);
    if (!samples.length) return;
    const { ctx } = audio;
    const buffer = ctx.createBuffer(1, samples.length, RATE); // resampled to the context's rate by WebAudio
    buffer.copyToChannel(samples, 0);
    const source = ctx.createBufferSource();
    source.buffer = buffer;
    source.connect(audio.outGain);
    const start = Math.max(audio.nextTime, ctx.currentTime + PLAYBACK_LEAD_S);
    source.start(start);
    audio.nextTime = start + buffer.duration;
    audio.playing.add(source);
    source.onended = () => audio && audio.playing.delete(source);
  }

  function stopPlayback() {
    // The user barged in: what is queued is dropped, as OpenAI's clients do.
    if (!audio) return;
    for (const source of audio.playing) {
      try {
        source.stop();
      } catch (_) {
        /* already stopped */
      }
    }
    audio.playing.clear();
    audio.nextTime = 0;
  }

  function stopAudio() {
    clearInterval(meterTimer);
    clearInterval(statsTimer);
    meterTimer = statsTimer = null;
    if (!audio) return;
    stopPlayback();
    for (const track of audio.stream.getTracks()) track.stop();
    audio.ctx.close().catch(() => {});
    audio = null;
    setMeter("mic", 0);
    setMeter("output", 0);
    // The maxima stay readable after the call (tests read them then).
    $("mic-level").dataset.max = counters.micMax.toFixed(3);
    $("output-level").dataset.max = counters.outMax.toFixed(3);
  }

  // --- settings ---------------------------------------------------------------------------------------

  function protocol() {
    return $("protocol").value;
  }

  function apiKey() {
    return $("api-key").value.trim();
  }

  function realtimeSession() {
    // The GA session.update body: instructions, turn detection on or off, input transcription.
    const session = {
      type: "realtime",
      instructions: $("instructions").value,
      audio: {
        input: {
          turn_detection: $("turn-detection").checked ? { type: "server_vad" } : null,
          transcription: $("input-transcription").checked ? { model: TRANSCRIPTION_MODEL } : null,
        },
      },
    };
    if (protocol() === "realtime-ws") {
      session.audio.input.format = { type: "audio/pcm", rate: RATE };
      session.audio.output = { format: { type: "audio/pcm", rate: RATE } };
    }
    return session;
  }

  function liveSession() {
    const config = { model: $("live-model").value, audio: { format: { type: "audio/pcm", rate: RATE } } };
    const instructions = $("live-instructions").value.trim();
    if (instructions) config.instructions = instructions;
    return config;
  }

  function socketUrl(path, query) {
    const scheme = location.protocol === "https:" ? "wss:" : "ws:";
    return `${scheme}//${location.host}${path}${query || ""}`;
  }

  function subprotocols() {
    // Browsers cannot set headers on a WebSocket: the key rides as a subprotocol, and `realtime` is
    // offered too so that the server has one to choose (a browser fails a handshake that offered
    // subprotocols and got none back).
    const key = apiKey();
    return key ? ["realtime", `openai-insecure-api-key.${key}`] : ["realtime"];
  }

  function describeClose(event) {
    const reason = event.reason ? `: ${event.reason}` : "";
    return `closed (${event.code}${reason})`;
  }

  // --- the Realtime events, over a WebSocket or the WebRTC data channel -----------------------------

  function handleRealtimeEvent(conn, event) {
    if (session !== conn) return; // a connection being replaced or torn down
    logEvent("received", event);
    switch (event.type) {
      case "session.created":
        conn.ready = true;
        showSession(event.session && event.session.id);
        setStatus("active", `session ${$("status").dataset.sessionId} open`);
        if (event.session && event.session.model === page.demoName) $("demo-notice").hidden = false;
        conn.send({ type: "session.update", session: realtimeSession() });
        break;
      case "input_audio_buffer.speech_started":
        stopPlayback();
        setStatus("active", "hearing you…");
        break;
      case "input_audio_buffer.committed":
        conn.sinceCommit = 0;
        if ($("input-transcription").checked && event.item_id) line(event.item_id, "user").classList.add("pending");
        break;
      case "conversation.item.input_audio_transcription.delta":
        appendText(event.item_id, "user", event.delta || "");
        break;
      case "conversation.item.input_audio_transcription.completed":
        setText(event.item_id, "user", event.transcript || "");
        break;
      case "conversation.item.input_audio_transcription.failed":
        setText(event.item_id, "user", "(transcription failed)");
        break;
      case "response.created":
        setStatus("active", "answering…");
        break;
      case "response.output_audio.delta":
      case "response.audio.delta":
        play(event.delta);
        break;
      case "response.output_audio_transcript.delta":
      case "response.audio_transcript.delta":
      case "response.output_text.delta":
        appendText(event.item_id, "assistant", event.delta || "");
        break;
      case "response.done":
        setStatus("active", "listening");
        break;
      case "error":
        showError(`${event.error.code || event.error.type}: ${event.error.message}`);
        break;
      default:
        break;
    }
  }

  // A JSON-events WebSocket (Realtime or Live): events out (appends logged by type only), events in
  // to `handle`, and the page told when it fails or closes. `stop` is the protocol's own.
  function socketConnection(socket, kind, appendType, handle, stop) {
    const conn = {
      kind,
      ready: false,
      send(event) {
        if (socket.readyState !== WebSocket.OPEN) return;
        if (event.type !== appendType) logEvent("sent", event);
        else logEvent("sent", { type: event.type });
        socket.send(JSON.stringify(event));
      },
      sendAudio(base64) {
        this.send({ type: appendType, audio: base64 });
      },
      stop,
    };
    socket.onmessage = (message) => handle(conn, JSON.parse(message.data));
    socket.onerror = () => showError("The WebSocket failed (see the event log and the server's log).");
    socket.onclose = (event) => ended(conn, describeClose(event));
    return conn;
  }

  function realtimeWebSocket() {
    const socket = new WebSocket(socketUrl(page.realtimePath, `?model=${REALTIME_MODEL}`), subprotocols());
    const conn = socketConnection(socket, "realtime-ws", "input_audio_buffer.append", handleRealtimeEvent, () =>
      socket.close(1000),
    );
    socket.onopen = () => setStatus("connected", "connected, waiting for the session…");
    return conn;
  }

  async function realtimeWebRTC() {
    // Exactly as OpenAI's browser guide: a peer connection with the microphone's track, the
    // `oai-events` data channel, and the SDP offer POSTed to /v1/realtime/calls.
    const pc = new RTCPeerConnection();
    const remote = $("remote-audio");
    const conn = {
      kind: "realtime-webrtc",
      ready: false,
      pc,
      send(event) {
        if (!channel || channel.readyState !== "open") return;
        logEvent("sent", event);
        channel.send(JSON.stringify(event));
      },
      sendAudio() {}, // audio goes on the RTP track
      stop() {
        if (channel) channel.close();
        pc.close();
        ended(conn, "closed");
      },
    };
    session = conn;
    pc.ontrack = (event) => {
      remote.srcObject = event.streams[0];
      remote.play().catch(() => {});
      if (audio) {
        // The <audio> element plays it; an analyser off to the side drives the output meter.
        const analyser = audio.ctx.createAnalyser();
        analyser.fftSize = 2048;
        audio.ctx.createMediaStreamSource(event.streams[0]).connect(analyser);
        audio.remoteAnalyser = analyser;
      }
    };
    pc.onconnectionstatechange = () => {
      if (["failed", "closed"].includes(pc.connectionState) && session === conn) ended(conn, `peer connection ${pc.connectionState}`);
    };
    audio.track.enabled = wantsMicrophone();
    pc.addTrack(audio.track, audio.stream);
    const channel = pc.createDataChannel("oai-events");
    channel.onopen = () => setStatus("connected", "connected, waiting for the session…");
    channel.onmessage = (message) => handleRealtimeEvent(conn, JSON.parse(message.data));
    channel.onclose = () => session === conn && conn.stop();

    const offer = await pc.createOffer();
    await pc.setLocalDescription(offer);
    const headers = { "Content-Type": "application/sdp" };
    if (apiKey()) headers.Authorization = `Bearer ${apiKey()}`;
    const response = await fetch(page.callsPath, { method: "POST", body: offer.sdp, headers });
    if (!response.ok) {
      const text = await response.text();
      pc.close();
      throw new Error(`POST ${page.callsPath} answered ${response.status}: ${text.slice(0, 300)}`);
    }
    const callUrl = response.headers.get("Location") || "";
    $("status").dataset.callId = callUrl.split("/").pop();
    logEvent("received", { type: "webrtc.answer", message: callUrl });
    await pc.setRemoteDescription({ type: "answer", sdp: await response.text() });
    statsTimer = setInterval(() => webrtcStats(pc), 500);
    return conn;
  }

  async function webrtcStats(pc) {
    // The audio on the RTP tracks, for the counters (the WebSocket modes count what they send and
    // receive): Opus bytes, and the microphone's duration sent (track enabled or not).
    try {
      const report = await pc.getStats();
      report.forEach((stat) => {
        if (stat.type === "outbound-rtp" && stat.kind === "audio") counters.sentBytes = stat.bytesSent || 0;
        if (stat.type === "media-source" && stat.kind === "audio" && stat.totalSamplesDuration !== undefined) {
          counters.sentMs = stat.totalSamplesDuration * 1000;
        }
        if (stat.type !== "inbound-rtp" || stat.kind !== "audio") return;
        counters.receivedBytes = stat.bytesReceived || 0;
        counters.chunks = stat.packetsReceived || 0;
        if (stat.totalSamplesDuration !== undefined) counters.receivedMs = stat.totalSamplesDuration * 1000;
        else if (stat.totalSamplesReceived !== undefined) counters.receivedMs = stat.totalSamplesReceived / 48;
      });
      showCounters();
    } catch (_) {
      /* the connection is closing */
    }
  }

  // --- the Live API over a WebSocket ------------------------------------------------------------------

  function handleLiveEvent(conn, event) {
    if (session !== conn) return;
    logEvent("received", event);
    switch (event.type) {
      case "session.started":
        conn.ready = true;
        showSession(event.session && event.session.id);
        setStatus("active", `Live session ${$("status").dataset.sessionId} started`);
        break;
      case "session.output_audio.delta":
        play(event.delta);
        break;
      case "session.output_transcript.delta":
        liveFragment("assistant", event.delta || "");
        break;
      case "session.input_transcript.delta":
        liveFragment("user", event.delta || "");
        break;
      case "session.closed":
        conn.ready = false;
        setStatus("closing", `Live session closed (${event.reason || "?"})`);
        break;
      case "error":
        showError(`${event.error.code || event.error.type}: ${event.error.message}`);
        break;
      default:
        break;
    }
  }

  function liveWebSocket() {
    const socket = new WebSocket(socketUrl(page.livePath, ""), subprotocols());
    const conn = socketConnection(socket, "live-ws", "session.input_audio.append", handleLiveEvent, function () {
      // session.close first: the server answers session.closed and closes with 1000.
      if (socket.readyState !== WebSocket.OPEN) return;
      if (this.ready) {
        this.send({ type: "session.close" });
        setTimeout(() => socket.readyState === WebSocket.OPEN && socket.close(1000), 3000);
      } else {
        socket.close(1000);
      }
    });
    socket.onopen = () => {
      setStatus("connected", "connected, starting the Live session…");
      conn.send({ type: "session.start", session: liveSession() });
    };
    return conn;
  }

  // --- connecting, talking, stopping -----------------------------------------------------------------

  function setConnected(on) {
    $("connect").disabled = on;
    $("disconnect").disabled = !on;
    $("push-to-talk").disabled = !on;
    $("protocol").disabled = on;
    $("api-key").disabled = on;
    $("live-settings").disabled = on; // Live settings are fixed once the session starts
  }

  async function connect() {
    if (session) return;
    showError("");
    resetCounters();
    liveTurn = null;
    delete $("status").dataset.sessionId;
    delete $("status").dataset.callId;
    setConnected(true);
    setStatus("connecting", "asking for the microphone…");
    const kind = protocol();
    if (apiKey().startsWith("ek_") && kind !== "realtime-webrtc") {
      setConnected(false);
      setStatus("error", "this key opens WebRTC calls only");
      showError("An ek_… key opens Realtime calls over WebRTC only; WebSocket sessions need an API key.");
      return;
    }
    try {
      audio = await startAudio({ capture: kind !== "realtime-webrtc" });
      setStatus("connecting", "connecting…");
      if (kind === "realtime-ws") session = realtimeWebSocket();
      else if (kind === "live-ws") session = liveWebSocket();
      else await realtimeWebRTC(); // the session from the start, so that no early event is missed
    } catch (error) {
      const failed = session;
      session = null;
      if (failed) failed.stop(); // a half-made peer connection is closed
      stopAudio();
      setConnected(false);
      setStatus("error", `could not connect: ${error.name || "Error"}`);
      showError(error.message || String(error));
    }
  }

  function ended(conn, text) {
    if (session !== conn) return;
    session = null;
    stopAudio();
    setConnected(false);
    talking = false;
    $("push-to-talk").setAttribute("aria-pressed", "false");
    setStatus("closed", text);
  }

  function disconnect() {
    if (!session) return;
    setStatus("closing", "closing…");
    session.stop();
  }

  function press() {
    if (!session || talking) return;
    talking = true;
    $("push-to-talk").setAttribute("aria-pressed", "true");
    if (session.kind !== "live-ws") stopPlayback(); // Realtime: the user takes the turn (Live is full duplex)
    if (!$("turn-detection").checked && session.kind !== "live-ws") {
      session.send({ type: "input_audio_buffer.clear" });
      session.sinceCommit = 0;
    }
    if (session.kind === "realtime-webrtc" && audio) audio.track.enabled = true;
  }

  function release() {
    if (!talking) return;
    talking = false;
    $("push-to-talk").setAttribute("aria-pressed", "false");
    if (!session) return;
    if (session.kind === "realtime-webrtc" && audio) audio.track.enabled = wantsMicrophone();
    else flushMicrophone(audio);
    // Without turn detection the client ends the turn: commit what was said and ask for an answer.
    if (!$("turn-detection").checked && session.kind !== "live-ws") {
      if (session.kind === "realtime-webrtc" || (session.sinceCommit || 0) >= MIN_COMMIT_SAMPLES) {
        session.send({ type: "input_audio_buffer.commit" });
        session.send({ type: "response.create" });
      } else {
        showError("Hold the button a little longer: less than 100 ms of audio was sent.");
      }
    }
  }

  function showProtocolSettings() {
    const kind = protocol();
    for (const fieldset of document.querySelectorAll("fieldset[data-protocols]")) {
      fieldset.hidden = !fieldset.dataset.protocols.split(" ").includes(kind);
    }
  }

  async function mintKey() {
    // Staff only (the button is on the page for them alone): a short-lived `ek_` key for WebRTC,
    // minted with the signed-in session; POST with the CSRF token.
    const button = $("mint-key");
    const token = document.querySelector("input[name=csrfmiddlewaretoken]");
    button.disabled = true;
    showError("");
    try {
      const response = await fetch(button.dataset.mintUrl, {
        method: "POST",
        headers: { "X-CSRFToken": token ? token.value : "" },
        credentials: "same-origin",
      });
      if (!response.ok) throw new Error(`could not get a key: HTTP ${response.status}`);
      const secret = await response.json();
      $("api-key").value = secret.value;
      $("api-key").dataset.expiresAt = String(secret.expires_at);
      $("protocol").value = "realtime-webrtc";
      showProtocolSettings();
      const until = new Date(secret.expires_at * 1000).toLocaleTimeString();
      $("key-hint").textContent = `A WebRTC key for “${secret.api_key}”, valid until ${until}.`;
    } catch (error) {
      showError(error.message || String(error));
    } finally {
      button.disabled = false;
    }
  }

  function settingsChanged() {
    // Realtime settings apply to a live session at once (session.update).
    if (session && session.ready && session.kind !== "live-ws") session.send({ type: "session.update", session: realtimeSession() });
  }

  document.addEventListener("DOMContentLoaded", () => {
    showProtocolSettings();
    $("protocol").addEventListener("change", showProtocolSettings);
    $("connect").addEventListener("click", connect);
    $("disconnect").addEventListener("click", disconnect);
    for (const id of ["instructions", "turn-detection", "input-transcription"]) $(id).addEventListener("change", settingsChanged);
    $("stream-continuously").addEventListener("change", () => {
      if (session && session.kind === "realtime-webrtc" && audio) audio.track.enabled = wantsMicrophone();
    });
    if ($("mint-key")) $("mint-key").addEventListener("click", mintKey);
    $("clear-events").addEventListener("click", () => {
      $("event-log").replaceChildren();
    });
    const button = $("push-to-talk");
    button.addEventListener("pointerdown", (event) => {
      button.setPointerCapture(event.pointerId);
      press();
    });
    button.addEventListener("pointerup", release);
    button.addEventListener("pointercancel", release);
    button.addEventListener("keydown", (event) => {
      if ((event.key === " " || event.key === "Enter") && !event.repeat) {
        event.preventDefault();
        press();
      }
    });
    button.addEventListener("keyup", (event) => {
      if (event.key === " " || event.key === "Enter") release();
    });
    window.addEventListener("pagehide", () => session && session.stop());
    setStatus("idle", "not connected");
  });
})();
