// The avatar page: websocket signaling on /ws, one WebRTC call with the server, controls and live
// stats on a data channel. The messages are those of engine/server/protocol.py. Plain JavaScript for
// Chromium and Firefox: no build step, nothing fetched from elsewhere.

const $ = (id) => document.getElementById(id);
const ui = {
  status: $("status"), video: $("video"), stats: $("stats"), start: $("start"), stop: $("stop"),
  interrupt: $("interrupt"), setup: $("setup"), preset: $("preset"), portrait: $("portrait"),
  portraitField: $("portrait-field"), motion: $("motion"), controls: $("live-controls"), emotion: $("emotion"),
  sliders: { expressiveness: $("expressiveness"), head_motion: $("head-motion") },
  values: { expressiveness: $("expressiveness-value"), head_motion: $("head-motion-value") },
};

const ICE_GATHER_TIMEOUT_MS = 5000; // aiortc takes no trickled candidates: wait this long at most, then offer
const MAX_ERRORS_KEPT = 20;
const MIC_CONSTRAINTS = {
  // The avatar speaks your voice back: without echo cancellation it would hear itself.
  audio: { echoCancellation: true, noiseSuppression: true, autoGainControl: true, channelCount: 1 },
  video: false,
};

// What the page knows; window.avatarState hands out a copy (for tests and the curious).
const state = {
  status: "connecting", // connecting | ready | starting | live | stopped | error
  mode: null, // "converse" or "broadcast", from the server's hello
  firstFrameMs: null, // Start click -> first decoded frame shown
  micOpenedMs: null, // Start click -> microphone open
  framesDecoded: 0, // video frames decoded and shown since Start
  decodedFps: null, // over the last second
  codec: null, // the video codec negotiated: "video/VP8" (the server answers VP8 alone)
  portrait: null, // the server's answer to an uploaded portrait
  lastStats: null, // the server's last stats message
  statsReceived: 0,
  motionNames: null, // the server's "motion_names" once the motion stream is on
  motionFrames: 0, // "motion" messages received since Start
  lastMotion: null, // the latest one: {type, pts, blendshapes, head}
  errors: [], // {code, message} as shown, oldest first
};
Object.defineProperty(window, "avatarState", { get: () => structuredClone(state) });

let hello = null; // the server's hello on the current connection
let link = null; // the current Signaling
let call = null; // the call in progress: {signaling, pc, mic, channel, startedAt, timer}
let upload = null; // the portrait sent on the current connection: {signaling, file, done}
const touched = {}; // controls the visitor changed: sent again when a data channel opens

class PageError extends Error {
  constructor(code, message) {
    super(message);
    this.code = code;
  }
}

/** The /ws connection: JSON in and out; expect(type) resolves with the next message of that type. */
class Signaling {
  constructor() {
    const scheme = location.protocol === "https:" ? "wss" : "ws";
    this.ws = new WebSocket(`${scheme}://${location.host}/ws`);
    this.waiters = []; // {type, resolve, reject}, oldest first
    this.closed = false;
    this.ws.onmessage = (event) => this.receive(JSON.parse(event.data));
    this.ws.onclose = () => this.ended();
    this.ready = this.expect("hello");
  }

  send(message) {
    if (this.closed) throw new PageError("closed", "The connection to the server is closed; press Start again.");
    this.ws.send(JSON.stringify(message));
  }

  expect(type) {
    return new Promise((resolve, reject) => this.waiters.push({ type, resolve, reject }));
  }

  receive(message) {
    if (message.type === "error") {
      const waiter = this.waiters.shift(); // the request it answers fails; without one it is news
      const err = new PageError(message.code, message.message);
      waiter ? waiter.reject(err) : report(err);
      return;
    }
    const i = this.waiters.findIndex((w) => w.type === message.type);
    if (i >= 0) this.waiters.splice(i, 1)[0].resolve(message);
  }

  ended() {
    const wasOpen = !this.closed;
    this.closed = true;
    const err = new PageError("closed", hello ? "The server closed the connection; press Start to try again."
      : `Cannot reach the server at ${location.host}; is it running? Reload the page to retry.`);
    for (const waiter of this.waiters.splice(0)) waiter.reject(err);
    if (wasOpen && call && call.signaling === this) fail(err); // the session lived as long as its socket
  }

  close() {
    this.closed = true;
    this.ws.close();
  }
}

function setStatus(status, text, isError = false) {
  state.status = status;
  ui.status.textContent = text;
  ui.status.classList.toggle("error", isError);
}

function report(err) {
  const code = err.code ?? "page_error";
  state.errors.push({ code, message: err.message });
  state.errors.splice(0, state.errors.length - MAX_ERRORS_KEPT);
  if (code === "read_only") showControls(false); // this broadcast takes no viewer controls
  setStatus(call ? state.status : "error", err.message, true);
  if (!(err instanceof PageError)) console.error(err);
}

/** The connection to the server, opened (again) if needed, once its hello has arrived. */
async function connection() {
  if (!link || link.closed) {
    link = new Signaling();
    link.ready.then(welcome, () => {});
  }
  await link.ready;
  return link;
}

// hello.controls (the server's starting controls) and hello.viewer_controls (whether a broadcast takes
// them) are optional: without them the sliders start at their defaults and a viewer learns by trying.
function welcome(message) {
  hello = message;
  state.mode = hello.mode;
  const broadcast = hello.mode === "broadcast";
  fill(ui.preset, hello.presets, ui.preset.value || hello.preset);
  fill(ui.emotion, hello.emotions, touched.emotion ?? hello.controls?.emotion ?? "neutral");
  for (const [key, slider] of Object.entries(ui.sliders)) {
    if (!(key in touched) && typeof hello.controls?.[key] === "number") slider.value = hello.controls[key];
    showValue(key);
  }
  ui.setup.hidden = broadcast;
  ui.portraitField.hidden = !hello.uploads;
  showControls(!broadcast || hello.viewer_controls !== false); // else the first refusal hides them
  ui.preset.disabled = ui.start.disabled = call !== null;
  if (!call && state.status === "connecting") {
    setStatus("ready", broadcast ? "Press Start to watch the broadcast."
      : "Press Start and talk: the avatar speaks with your voice (headphones help).");
  }
}

function showControls(shown) {
  ui.controls.hidden = ui.interrupt.hidden = !shown;
}

function fill(select, names, chosen) {
  select.replaceChildren(...names.map((name) => new Option(name, name, false, name === chosen)));
}

function showValue(key) {
  ui.values[key].textContent = Number(ui.sliders[key].value).toFixed(1);
}

async function openMicrophone() {
  if (!navigator.mediaDevices?.getUserMedia) {
    throw new PageError("no_mic", "This browser offers the microphone only to secure pages: open the page over "
      + "HTTPS or at http://localhost.");
  }
  try {
    return await navigator.mediaDevices.getUserMedia(MIC_CONSTRAINTS);
  } catch (err) {
    if (err.name === "NotAllowedError" || err.name === "SecurityError") {
      throw new PageError("mic_denied", "Microphone permission was denied. Allow the microphone for this page "
        + "(the icon in the address bar) and press Start again.");
    }
    if (err.name === "NotFoundError" || err.name === "OverconstrainedError") {
      throw new PageError("no_mic", "No microphone found. Connect one and press Start again.");
    }
    throw new PageError("no_mic", `Cannot open the microphone (${err.name}: ${err.message}); is another `
      + "application using it?");
  }
}

/** Send the chosen portrait on this connection (once per file and connection); the server answers. */
function sendPortrait(signaling) {
  const file = ui.portrait.files[0];
  if (!file) return Promise.resolve();
  if (upload?.signaling === signaling && upload.file === file) return upload.done;
  const done = (async () => {
    if (file.size > hello.max_upload_bytes) {
      throw new PageError("too_large", `${file.name} is ${mib(file.size)}; the server takes portraits of at `
        + `most ${mib(hello.max_upload_bytes)}. Choose a smaller photo.`);
    }
    setStatus(state.status, `Sending ${file.name}…`);
    signaling.send({ type: "portrait", data: await base64(file) });
    const answer = await signaling.expect("portrait");
    state.portrait = { name: file.name, width: answer.width, height: answer.height, notes: answer.notes ?? [] };
    setStatus(state.status, [`Portrait ${file.name} accepted (${answer.width}×${answer.height}).`,
      ...state.portrait.notes].join(" "));
  })();
  upload = { signaling, file, done };
  done.catch(() => {
    ui.portrait.value = ""; // a rejected photo is dropped: Start then uses the server's portrait
    upload = null;
  });
  return done;
}

function mib(bytes) {
  return `${(bytes / 2 ** 20).toFixed(1)} MiB`;
}

function base64(file) {
  return new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => resolve(reader.result.slice(reader.result.indexOf(",") + 1)); // drop "data:...;base64,"
    reader.onerror = () => reject(new PageError("bad_portrait", `Cannot read ${file.name}: ${reader.error}`));
    reader.readAsDataURL(file);
  });
}

async function start() {
  const c = call = { signaling: null, pc: null, mic: null, channel: null, startedAt: performance.now(), timer: 0 };
  const live = () => { if (call !== c) throw new PageError("stopped", "Stopped."); };
  Object.assign(state, { firstFrameMs: null, micOpenedMs: null, framesDecoded: 0, decodedFps: null, codec: null,
    lastStats: null, statsReceived: 0, motionNames: null, motionFrames: 0, lastMotion: null });
  ui.start.disabled = ui.preset.disabled = true;
  ui.stop.disabled = false;
  setStatus("starting", "Starting…");
  try {
    c.signaling = await connection(); live();
    const broadcast = hello.mode === "broadcast";
    if (!broadcast) {
      c.mic = await openMicrophone(); live();
      state.micOpenedMs = performance.now() - c.startedAt;
      await sendPortrait(c.signaling); live();
    }
    const pc = c.pc = new RTCPeerConnection({ iceServers: hello.ice_servers ?? [] });
    if (c.mic) pc.addTransceiver(c.mic.getAudioTracks()[0], { direction: "sendrecv", streams: [c.mic] });
    else pc.addTransceiver("audio", { direction: "recvonly" });
    pc.addTransceiver("video", { direction: "recvonly" }); // the server sends VP8, encoded once for every viewer
    c.channel = openChannel(pc.createDataChannel("avatar")); // before the offer: it is negotiated in it
    const remote = new MediaStream(); // the avatar's video and its voice: the video element plays both
    ui.video.srcObject = remote;
    pc.ontrack = (event) => { remote.addTrack(event.track); play(); };
    pc.onconnectionstatechange = () => {
      if (pc.connectionState === "failed" && call === c) {
        fail(new PageError("ice_failed", "The media connection failed: the browser and the server cannot reach "
          + "each other (a firewall, or a server beyond the LAN started without --ice-server)."));
      }
    };
    await pc.setLocalDescription(await pc.createOffer());
    await iceGathered(pc); live();
    setStatus("starting", "Connecting…");
    c.signaling.send({ type: "offer", sdp: pc.localDescription.sdp, preset: broadcast ? undefined : ui.preset.value });
    const answer = await c.signaling.expect("answer"); live();
    await pc.setRemoteDescription({ type: "answer", sdp: answer.sdp });
    Object.assign(c, { lastCount: 0, lastTick: performance.now() });
    c.timer = setInterval(() => tick(c), 1000);
    countFrames(c);
  } catch (err) {
    if (call === c) fail(err);
    else release(c); // stopped while starting: what was opened since is closed here
  }
}

function iceGathered(pc) {
  return new Promise((resolve) => {
    const done = () => {
      if (pc.iceGatheringState !== "complete" && !timedOut) return;
      pc.removeEventListener("icegatheringstatechange", done);
      clearTimeout(timer);
      resolve();
    };
    let timedOut = false;
    const timer = setTimeout(() => { timedOut = true; done(); }, ICE_GATHER_TIMEOUT_MS);
    pc.addEventListener("icegatheringstatechange", done);
    done();
  });
}

function play() {
  ui.video.play().catch((err) => {
    if (err.name !== "NotAllowedError") return; // AbortError: a newer play() or srcObject took over
    ui.video.muted = true; // the browser refuses sound without a gesture: show the face, offer the sound
    ui.video.play().catch(() => {}); // muted playback is always allowed; a newer call may abort it
    setStatus(state.status, "The browser blocked the sound: click the video to hear the avatar.");
  });
}

function openChannel(channel) {
  channel.onopen = () => {
    ui.interrupt.disabled = false;
    if (Object.keys(touched).length) sendOnChannel({ type: "controls", ...touched });
    if (ui.motion.checked) sendOnChannel({ type: "motion", enabled: true });
  };
  channel.onclose = () => { ui.interrupt.disabled = true; };
  channel.onmessage = (event) => {
    const message = JSON.parse(event.data);
    if (message.type === "stats") {
      state.lastStats = message;
      state.statsReceived += 1;
      showStats();
    } else if (message.type === "motion_names") {
      state.motionNames = message;
    } else if (message.type === "motion") {
      state.motionFrames += 1;
      state.lastMotion = message;
      // For a 3D avatar on this page (or an extension): values in the order of state.motionNames.
      window.dispatchEvent(new CustomEvent("avatar-motion", { detail: message }));
    } else if (message.type === "error") {
      report(new PageError(message.code, message.message));
    }
  };
  return channel;
}

function sendOnChannel(message) {
  if (call?.channel?.readyState === "open") call.channel.send(JSON.stringify(message));
}

/** Count decoded frames: requestVideoFrameCallback where the browser has it, else the playback quality. */
function countFrames(c) {
  const video = ui.video;
  const seen = (total) => {
    if (call !== c || total <= state.framesDecoded) return;
    if (state.framesDecoded === 0) {
      state.firstFrameMs = Math.round(performance.now() - c.startedAt);
      setStatus("live", `Live: first frame after ${state.firstFrameMs} ms.`
        + (hello.mode === "broadcast" ? "" : " Talk and the avatar speaks."));
    }
    state.framesDecoded = total;
  };
  if (typeof video.requestVideoFrameCallback === "function") {
    let base = null;
    const onFrame = (now, meta) => {
      if (call !== c) return;
      base ??= meta.presentedFrames - 1; // the element may have counted frames of an earlier call
      seen(meta.presentedFrames - base);
      video.requestVideoFrameCallback(onFrame);
    };
    video.requestVideoFrameCallback(onFrame);
  } else {
    const base = video.getVideoPlaybackQuality().totalVideoFrames;
    c.poll = setInterval(() => seen(video.getVideoPlaybackQuality().totalVideoFrames - base), 40);
  }
}

/** Once a second: the client's own numbers. */
async function tick(c) {
  const now = performance.now();
  state.decodedFps = Math.round(10000 * (state.framesDecoded - c.lastCount) / (now - c.lastTick)) / 10;
  c.lastCount = state.framesDecoded;
  c.lastTick = now;
  if (!state.codec && c.pc) state.codec = await videoCodec(c.pc);
  showStats();
}

async function videoCodec(pc) {
  const stats = await pc.getStats();
  for (const entry of stats.values()) {
    if (entry.type === "inbound-rtp" && entry.kind === "video" && entry.codecId) {
      return stats.get(entry.codecId)?.mimeType ?? null;
    }
  }
  return null;
}

function showStats() {
  const s = state.lastStats ?? {};
  const ms = (v) => (v == null ? "–" : `${Math.round(v)} ms`);
  const rows = [
    ["video", `${s.fps ?? "–"} fps sent, ${state.decodedFps ?? "–"} fps shown`],
    ["latency", `${ms(s.latency_ms)} (engine ${ms(s.engine_latency_ms)}, p95 ${ms(s.engine_latency_p95_ms)}, `
      + `floor ${ms(s.floor_ms)})`],
    ["frames", `${s.frames_dropped ?? "–"} dropped, ${s.frames_late ?? "–"} late`],
    ["first frame", ms(state.firstFrameMs)],
    ["preset", `${s.preset ?? "–"}${s.viewers > 1 ? `, ${s.viewers} viewers` : ""}`],
    ["codec", state.codec?.replace("video/", "") ?? "–"],
  ];
  if (ui.motion.checked) rows.push(["motion", `${state.motionFrames} frames, jawOpen ${jawOpen() ?? "–"}`]);
  ui.stats.replaceChildren(...rows.flatMap(([name, value]) => {
    const dt = document.createElement("dt");
    const dd = document.createElement("dd");
    dt.textContent = name;
    dd.textContent = value;
    return [dt, dd];
  }));
  ui.stats.hidden = false;
}

function jawOpen() {
  const i = state.motionNames?.blendshapes.indexOf("jawOpen") ?? -1;
  return i >= 0 && state.lastMotion ? state.lastMotion.blendshapes[i].toFixed(2) : null;
}

/** End the call and free everything it held; the server frees the session when the socket closes. */
function stop(status = "stopped", text = "Stopped. Press Start to begin again.", isError = false) {
  const c = call;
  call = null;
  if (c) release(c);
  ui.video.srcObject = null;
  ui.start.disabled = hello === null;
  ui.preset.disabled = false;
  ui.stop.disabled = ui.interrupt.disabled = true;
  setStatus(status, text, isError);
}

function release(c) {
  clearInterval(c.timer);
  clearInterval(c.poll);
  c.channel?.close();
  c.pc?.close();
  c.mic?.getTracks().forEach((track) => track.stop());
  // One offer per connection: the next Start opens a new one (unless it already took this one over).
  if (c.signaling && c.signaling !== call?.signaling) c.signaling.close();
}

function fail(err) {
  stop("error", err.message, true);
  report(err);
}

ui.start.addEventListener("click", start);
ui.stop.addEventListener("click", () => stop());
ui.interrupt.addEventListener("click", () => sendOnChannel({ type: "interrupt" }));
ui.video.addEventListener("click", () => { ui.video.muted = false; });
ui.motion.addEventListener("change", () => sendOnChannel({ type: "motion", enabled: ui.motion.checked }));
ui.emotion.addEventListener("change", () => {
  touched.emotion = ui.emotion.value;
  sendOnChannel({ type: "controls", emotion: touched.emotion });
});
for (const [key, slider] of Object.entries(ui.sliders)) {
  slider.addEventListener("input", () => {
    touched[key] = Number(slider.value);
    showValue(key);
    sendOnChannel({ type: "controls", [key]: touched[key] });
  });
}
ui.portrait.addEventListener("change", () => {
  if (call || !ui.portrait.files.length) return; // a running call keeps its portrait; Start sends the new one
  connection().then(sendPortrait).catch(report);
});

connection().catch(report);
