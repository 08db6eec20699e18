// Test-only page: OpenAI's own browser transport, @openai/agents-realtime's OpenAIRealtimeWebRTC,
// pointed at this server by its base URL alone, with an ephemeral key minted by the test.
// Everything the test checks lands in window.results (read by Selenium).
import { OpenAIRealtimeWebRTC, RealtimeAgent, RealtimeSession } from "@openai/agents-realtime";

const params = new URLSearchParams(location.search);
const server = params.get("server");
const key = params.get("key");

const results = {
  status: "starting",
  connected: false,
  callId: null,
  sessionId: null,
  events: [], // the type of every server event, in order
  errors: [],
  history: [], // {role, type, status, transcript} per history item
  track: false,
  audibleMs: 0, // time the received track was above -50 dBFS
  maxRms: 0,
};
window.results = results;

function show() {
  document.getElementById("results").textContent = JSON.stringify(results, null, 1);
}

function describe(error) {
  if (!error) return "?";
  if (error.error) return describe(error.error);
  if (error.message) return String(error.message);
  try {
    return JSON.stringify(error);
  } catch (_) {
    return String(error);
  }
}

const audioElement = document.getElementById("remote-audio");

function watchOutput() {
  // The received track into a WebAudio analyser: sound, not only packets.
  const ctx = new AudioContext();
  let analyser = null;
  const samples = new Float32Array(2048);
  setInterval(() => {
    if (!analyser && audioElement.srcObject) {
      results.track = true;
      analyser = ctx.createAnalyser();
      analyser.fftSize = samples.length;
      ctx.createMediaStreamSource(audioElement.srcObject).connect(analyser);
      ctx.resume().catch(() => {});
    }
    if (!analyser) return;
    analyser.getFloatTimeDomainData(samples);
    let sum = 0;
    for (const x of samples) sum += x * x;
    const rms = Math.sqrt(sum / samples.length);
    results.maxRms = Math.max(results.maxRms, rms);
    if (rms > 10 ** (-50 / 20)) results.audibleMs += 100;
  }, 100);
}

async function main() {
  if (!server || !key) throw new Error("open with ?server=<origin>&key=<ek_...>");
  const transport = new OpenAIRealtimeWebRTC({ baseUrl: `${server}/v1/realtime/calls`, audioElement });
  const agent = new RealtimeAgent({ name: "Moshi", instructions: "You are Moshi, a friendly voice assistant." });
  const session = new RealtimeSession(agent, { transport, model: "gpt-realtime" });
  window.session = session;
  session.on("transport_event", (event) => {
    results.events.push(event.type);
    if (event.type === "session.created") results.sessionId = event.session.id;
    if (event.type === "error") results.errors.push(`error event: ${describe(event)}`);
    show();
  });
  session.on("error", (error) => {
    results.errors.push(describe(error));
    show();
  });
  session.on("history_updated", (history) => {
    results.history = history.map((item) => ({
      role: item.role || null,
      type: item.type,
      status: item.status || null,
      transcript: (item.content || []).map((part) => part.transcript || part.text || "").join(""),
    }));
    show();
  });
  watchOutput();
  results.status = "connecting";
  show();
  await session.connect({ apiKey: key });
  results.connected = true;
  results.callId = transport.callId || null;
  results.status = "connected";
  show();
}

main().catch((error) => {
  results.status = "failed";
  results.errors.push(describe(error));
  show();
});
