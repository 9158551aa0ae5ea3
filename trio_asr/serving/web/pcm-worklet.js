// AudioWorklet processor: captures its input as mono PCM16 at the context's
// own sample rate and posts it to the page in chunks of `chunkSamples`.
// Port messages in: "flush" (post what is buffered, then "flushed").
// Port messages out: ArrayBuffer (PCM16 little-endian), or "flushed".
class PcmCapture extends AudioWorkletProcessor {
  constructor(options) {
    super();
    this.chunkSamples = (options.processorOptions || {}).chunkSamples || 4096;
    this.buffer = new Int16Array(this.chunkSamples);
    this.filled = 0;
    this.running = true;
    this.port.onmessage = (event) => {
      if (event.data === "flush") {
        this.post();
        this.running = false;
        this.port.postMessage("flushed");
      }
    };
  }

  post() {
    if (this.filled === 0) return;
    const chunk = this.buffer.slice(0, this.filled);
    this.filled = 0;
    this.port.postMessage(chunk.buffer, [chunk.buffer]);
  }

  process(inputs) {
    const channels = inputs[0];
    if (!this.running) return false;
    if (!channels || channels.length === 0) return true;
    const frames = channels[0].length;
    for (let i = 0; i < frames; i++) {
      let x = 0;
      for (let c = 0; c < channels.length; c++) x += channels[c][i];
      x /= channels.length;
      // Inverse of the usual int16 -> float decoding (s / 32768): exact round trip.
      let s = Math.round(x * 32768);
      this.buffer[this.filled++] = s > 32767 ? 32767 : s < -32768 ? -32768 : s;
      if (this.filled === this.chunkSamples) this.post();
    }
    return true;
  }
}

registerProcessor("pcm-capture", PcmCapture);
