// trio-asr microphone page: streams the microphone (or a local audio file at
// real-time pace) over the PaddleSpeech streaming-ASR protocol:
//   start -> {"signal": "server_ready"}; binary PCM16 frames, one {"result"}
//   reply each; end -> the final reply. Works against any server speaking
//   that protocol. No build step, no third-party code.
"use strict";

const WS_PATH = "/paddlespeech/asr/streaming";
const CHUNK_SECONDS = 0.1;
const NBEST_SHOWN = 5;
const MAX_PENDING = 100; // chunks (10 s) kept while waiting for server_ready
const $ = (id) => document.getElementById(id);

const ui = {
  state(state, text) {
    document.body.dataset.state = state;
    if (text !== undefined) $("status").textContent = text;
  },
  error(text) {
    const box = $("error");
    if (!box.textContent.split("\n").includes(text)) box.textContent += (box.textContent ? "\n" : "") + text;
  },
  clear() {
    for (const id of ["error", "partial", "final", "segments", "nbest-list"]) $(id).textContent = "";
  },
  partial(reply) {
    $("partial").textContent = reply.result;
    this.nbest(reply.nbest);
    this.segments(reply);
  },
  final(reply) {
    $("partial").textContent = "";
    $("final").textContent = reply.result;
    this.nbest(reply.nbest);
    this.segments(reply);
  },
  nbest(list) {
    const box = $("nbest-box");
    box.hidden = !$("nbest-toggle").checked || !Array.isArray(list);
    if (box.hidden) return;
    const ol = $("nbest-list");
    ol.textContent = "";
    for (const hyp of list) {
      const li = document.createElement("li");
      li.textContent = hyp.text;
      if (typeof hyp.score === "number") {
        const score = document.createElement("span");
        score.className = "score";
        score.textContent = hyp.score.toFixed(2);
        li.appendChild(score);
      }
      ol.appendChild(li);
    }
  },
  // Finalised segments are additive reply fields of servers that segment a
  // stream at endpoints; replies without them show nothing here.
  segments(reply) {
    for (const [index, text] of finalisedSegments(reply)) {
      const id = "segment-" + index;
      let li = document.getElementById(id);
      if (!li) {
        li = document.createElement("li");
        li.id = id;
        $("segments").appendChild(li);
      }
      li.textContent = text;
    }
  },
};

// [index, text] pairs of the segments a reply closes: its additive
// "segments" field, [{"segment": index, "result": text, "bg": s, "ed": s}, ...]
// ("index"/"text" are accepted too). Replies without it close none.
function finalisedSegments(reply) {
  if (!Array.isArray(reply.segments)) return [];
  const out = [];
  reply.segments.forEach((seg, i) => {
    if (!seg || typeof seg !== "object") return;
    const text = typeof seg.result === "string" ? seg.result : seg.text;
    if (typeof text !== "string") return;
    const index = Number.isInteger(seg.segment) ? seg.segment : Number.isInteger(seg.index) ? seg.index : i;
    const span = typeof seg.bg === "number" && typeof seg.ed === "number"
      ? `[${seg.bg.toFixed(2)}–${seg.ed.toFixed(2)} s] ` : "";
    out.push([index, span + text]);
  });
  return out;
}

function defaultServerUrl() {
  const given = new URLSearchParams(location.search).get("server");
  if (given) return given;
  if (location.protocol === "https:" || location.protocol === "http:") {
    return (location.protocol === "https:" ? "wss://" : "ws://") + location.host + WS_PATH;
  }
  return "ws://127.0.0.1:8090" + WS_PATH;
}

const CLOSE_MEANINGS = {
  1000: "normal closure", 1001: "server going away", 1003: "unsupported audio format",
  1006: "no connection or connection lost", 1007: "invalid message", 1008: "protocol violation or idle",
  1009: "message too big", 1011: "server error", 1013: "server busy",
};

// One stream over one WebSocket: open() resolves on server_ready, finish()
// sends "end" and resolves with the final reply.
class Stream {
  constructor({ url, token, name, sampleRate, channels, nbest }) {
    const target = new URL(url);
    if (token) target.searchParams.set("token", token);
    this.url = target;
    this.start = { name, signal: "start", nbest, sampleRate, bitsPerSample: 16, channels };
    this.finalReply = null;
    this.closed = false;
    this.framesSent = 0;
    this.repliesReceived = 0;
    this.ready = false;
    this.pending = []; // audio captured before server_ready, at most MAX_PENDING chunks
  }

  open() {
    return new Promise((resolve, reject) => {
      let ws;
      try {
        ws = new WebSocket(this.url);
      } catch (err) {
        reject(new Error("invalid server URL: " + err.message));
        return;
      }
      ws.binaryType = "arraybuffer";
      this.ws = ws;
      this.onReady = resolve;
      this.onFailure = reject;
      ws.onopen = () => ws.send(JSON.stringify(this.start));
      ws.onmessage = (event) => this.received(event.data);
      ws.onclose = (event) => this.closedBy(event);
    });
  }

  received(data) {
    let reply;
    try {
      reply = JSON.parse(data);
    } catch {
      this.fail(new Error("the server sent something that is not JSON"));
      return;
    }
    if (reply.status === "error") {
      this.fail(new Error("server error: " + (reply.message || JSON.stringify(reply))));
    } else if (reply.signal === "server_ready") {
      this.ready = true;
      for (const pcm of this.pending.splice(0)) this.send(pcm);
      this.onReady();
    } else if (reply.signal === "end" || reply.signal === "finished") {
      this.finalReply = reply;
      ui.final(reply);
      if (this.onFinal) this.onFinal(reply);
    } else if (typeof reply.result === "string") {
      this.repliesReceived++;
      ui.partial(reply);
    }
  }

  send(pcm) {
    if (!this.ready) {
      this.pending.push(pcm);
      if (this.pending.length > MAX_PENDING) this.pending.shift();
      return;
    }
    if (this.closed || this.ws.readyState !== WebSocket.OPEN) return;
    this.ws.send(pcm);
    this.framesSent++;
  }

  finish() {
    return new Promise((resolve, reject) => {
      if (this.closed || !this.ready) {
        reject(new Error(this.closed ? "the connection is already closed" : "stopped before the server was ready"));
        return;
      }
      this.onFinal = resolve;
      this.onFailure = reject;
      this.ws.send(JSON.stringify({ name: this.start.name, signal: "end", nbest: this.start.nbest }));
    });
  }

  close() {
    if (!this.closed && this.ws) this.ws.close(1000, "done");
  }

  fail(err) {
    const reject = this.onFailure;
    this.onFailure = null;
    ui.error(err.message);
    ui.state("error", "Failed.");
    if (reject) reject(err);
  }

  closedBy(event) {
    this.closed = true;
    const meaning = CLOSE_MEANINGS[event.code] || "closed";
    const reason = event.reason ? ": " + event.reason : "";
    this.closeText = `connection closed, code ${event.code} (${meaning})${reason}`;
    if (this.finalReply === null) {
      const hint = event.code === 1006 && this.framesSent === 0
        ? " — check the URL, the access token and (for wss://) that the browser trusts the certificate"
        : "";
      this.fail(new Error(this.closeText + hint));
    }
    if (current === this && this.finalReply === null) {
      stopSource();
      setButtons(false);
    }
  }
}

let current = null; // the Stream in progress
let source = null; // { stop(): Promise } of the microphone or file

function pcm16(samples, channels) {
  // samples: Float32Array per channel -> interleaved little-endian PCM16
  const frames = samples[0].length;
  const out = new Int16Array(frames * channels);
  for (let i = 0; i < frames; i++) {
    for (let c = 0; c < channels; c++) {
      const s = Math.round(samples[c][i] * 32768);
      out[i * channels + c] = s > 32767 ? 32767 : s < -32768 ? -32768 : s;
    }
  }
  return out.buffer;
}

// The sample rate in a WAV file's header, or null for other formats.
function wavSampleRate(data) {
  const view = new DataView(data);
  const tag = (offset) => String.fromCharCode(...new Uint8Array(data, offset, 4));
  if (data.byteLength < 28 || tag(0) !== "RIFF" || tag(8) !== "WAVE") return null;
  for (let offset = 12; offset + 16 <= data.byteLength;) {
    const size = view.getUint32(offset + 4, true);
    if (tag(offset) === "fmt ") return view.getUint32(offset + 12, true);
    offset += 8 + size + (size & 1);
  }
  return null;
}

function settings(name, sampleRate, channels) {
  return {
    url: $("server").value.trim(),
    token: $("token").value.trim(),
    nbest: $("nbest-toggle").checked ? NBEST_SHOWN : 1,
    name, sampleRate, channels,
  };
}

async function startMicrophone() {
  const context = new AudioContext();
  await context.audioWorklet.addModule("pcm-worklet.js");
  const media = await navigator.mediaDevices.getUserMedia({
    audio: { channelCount: 1, echoCancellation: false, noiseSuppression: false, autoGainControl: false },
  });
  const stream = new Stream(settings("microphone.wav", context.sampleRate, 1));
  current = stream;
  // Capture starts now; what is said before the server is ready is queued.
  const node = new AudioWorkletNode(context, "pcm-capture", {
    numberOfOutputs: 1,
    processorOptions: { chunkSamples: Math.round(context.sampleRate * CHUNK_SECONDS) },
  });
  let flushed;
  const done = new Promise((resolve) => (flushed = resolve));
  node.port.onmessage = (event) => (event.data === "flushed" ? flushed() : stream.send(event.data));
  context.createMediaStreamSource(media).connect(node);
  node.connect(context.destination); // silent output; keeps the node running
  source = {
    async stop() {
      node.port.postMessage("flush");
      await Promise.race([done, new Promise((r) => setTimeout(r, 1000))]);
      media.getTracks().forEach((t) => t.stop());
      await context.close();
    },
  };
  ui.state("connecting", "Connecting…");
  await stream.open();
  ui.state("streaming", `Listening (${context.sampleRate} Hz)… press Stop to finish.`);
}

async function startFile(file) {
  const data = await file.arrayBuffer();
  // Decode at the file's own rate when it says (WAV), so the server gets the
  // samples exactly as they are in the file; other formats at 16 kHz.
  const rate = wavSampleRate(data) || 16000;
  const audio = await new OfflineAudioContext(1, 1, rate).decodeAudioData(data);
  const channels = audio.numberOfChannels;
  const stream = new Stream(settings(file.name, audio.sampleRate, channels));
  current = stream;
  ui.state("connecting", "Connecting…");
  await stream.open();
  const step = Math.round(audio.sampleRate * CHUNK_SECONDS);
  const planes = Array.from({ length: channels }, (_, c) => audio.getChannelData(c));
  let stopped = false;
  let finished;
  const done = new Promise((resolve) => (finished = resolve));
  ui.state("streaming", `Streaming ${file.name} (${audio.duration.toFixed(1)} s, ${audio.sampleRate} Hz)…`);
  (async () => {
    const t0 = performance.now();
    for (let i = 0, start = 0; start < audio.length && !stopped; i++, start += step) {
      const wait = t0 + i * CHUNK_SECONDS * 1000 - performance.now();
      if (wait > 0) await new Promise((r) => setTimeout(r, wait));
      if (stopped) break;
      stream.send(pcm16(planes.map((p) => p.subarray(start, start + step)), channels));
    }
    finished();
    if (!stopped && current === stream) stop();
  })();
  source = {
    async stop() {
      stopped = true;
      await done;
    },
  };
}

async function stopSource() {
  const s = source;
  source = null;
  if (s) await s.stop();
}

async function stop() {
  const stream = current;
  $("stop").disabled = true;
  await stopSource();
  if (!stream || stream.closed) return;
  ui.state("finishing", "Finishing…");
  try {
    await stream.finish();
    ui.state("done", `Done: ${stream.framesSent} audio frames sent, ${stream.repliesReceived} partial results.`);
  } catch (err) {
    ui.error(err.message);
    ui.state("error", "Failed.");
  } finally {
    stream.close();
    setButtons(false);
  }
}

function setButtons(running) {
  $("mic-start").disabled = running;
  $("file-start").disabled = running;
  $("stop").disabled = !running;
}

async function run(starter) {
  ui.clear();
  ui.state("starting", "Starting…");
  setButtons(true);
  try {
    await starter();
  } catch (err) {
    await stopSource();
    if (current) current.close();
    const message = err && err.name === "NotAllowedError" ? "microphone access was denied" : (err.message || String(err));
    ui.error(message);
    ui.state("error", "Failed.");
    setButtons(false);
  }
}

// Why this page cannot use the microphone, and what to do; "" when it can.
// Browsers offer the microphone (and AudioWorklet) only to secure contexts:
// https:// pages and http://localhost / 127.0.0.1, not http://0.0.0.0 or
// another machine's http:// address.
function microphoneProblem() {
  if (!window.isSecureContext) {
    const local = `http://localhost${location.port ? ":" + location.port : ""}/`;
    return "The microphone is unavailable: browsers allow it only on https:// pages or on localhost, "
      + `and this page is ${location.origin}. To use it, open ${local} on the machine running the server, `
      + "or serve the page over https (trio-asr serve --certfile CERT --keyfile KEY). Streaming a file works here.";
  }
  const missing = [];
  if (!window.AudioContext || !window.AudioWorkletNode || !("audioWorklet" in AudioContext.prototype)) {
    missing.push("AudioWorklet");
  }
  if (!navigator.mediaDevices || typeof navigator.mediaDevices.getUserMedia !== "function") {
    missing.push("navigator.mediaDevices.getUserMedia");
  }
  if (missing.length) {
    return `The microphone is unavailable: this browser lacks ${missing.join(" and ")}. `
      + "Use a current Chrome, Edge, Firefox or Safari. Streaming a file may still work.";
  }
  return "";
}

$("server").value = defaultServerUrl();
$("mic-start").onclick = () => {
  const problem = microphoneProblem();
  if (!problem) {
    run(startMicrophone);
    return;
  }
  ui.clear();
  ui.error(problem);
  ui.state("error", "Microphone unavailable.");
};
$("file-start").onclick = () => {
  const file = $("file").files[0];
  if (!file) {
    ui.error("choose an audio file first");
    return;
  }
  run(() => startFile(file));
};
$("stop").onclick = () => stop();
{
  const problem = microphoneProblem();
  const note = $("mic-note");
  note.textContent = problem;
  note.hidden = !problem;
  if (problem) $("mic-start").title = problem;
}
