// Sounds made with WebAudio (no files) and the microphone level meter.

let context = null;

/** The page's AudioContext, created on first use and resumed when possible. */
export function audioContext() {
  if (!context) {
    const Context = window.AudioContext || window.webkitAudioContext;
    context = new Context();
  }
  if (context.state === "suspended") context.resume().catch(() => {});
  return context;
}

/** Unlock audio on the first user gesture so a ringtone can play later. */
export function unlockOnGesture() {
  const unlock = () => {
    audioContext();
    window.removeEventListener("pointerdown", unlock);
    window.removeEventListener("keydown", unlock);
  };
  window.addEventListener("pointerdown", unlock);
  window.addEventListener("keydown", unlock);
}

/** A ringtone: two-tone bursts (2 s on, 4 s off) until stopped. */
export class Ringtone {
  constructor() {
    this.timer = null;
    this.nodes = [];
  }

  start() {
    if (this.timer) return;
    const ring = () => {
      try {
        const ctx = audioContext();
        const gain = ctx.createGain();
        gain.gain.value = 0;
        gain.connect(ctx.destination);
        const now = ctx.currentTime;
        for (const [start, stop] of [[0, 0.4], [0.6, 1.0], [2.0, 2.4], [2.6, 3.0]].slice(0, 2)) {
          gain.gain.setTargetAtTime(0.15, now + start, 0.01);
          gain.gain.setTargetAtTime(0, now + stop, 0.01);
        }
        for (const frequency of [440, 480]) {
          const osc = ctx.createOscillator();
          osc.frequency.value = frequency;
          osc.connect(gain);
          osc.start(now);
          osc.stop(now + 1.1);
          this.nodes.push(osc);
        }
      } catch {
        // no audio output: the visual alert remains
      }
    };
    ring();
    this.timer = setInterval(ring, 3000);
  }

  stop() {
    clearInterval(this.timer);
    this.timer = null;
    for (const node of this.nodes) {
      try {
        node.stop();
      } catch {
        // already stopped
      }
    }
    this.nodes = [];
  }
}

/** A short keypad tone (the standard DTMF frequency pairs) for local feedback. */
export function keyTone(digit) {
  const rows = { 1: 697, 2: 697, 3: 697, 4: 770, 5: 770, 6: 770, 7: 852, 8: 852, 9: 852, "*": 941, 0: 941, "#": 941 };
  const cols = { 1: 1209, 4: 1209, 7: 1209, "*": 1209, 2: 1336, 5: 1336, 8: 1336, 0: 1336, 3: 1477, 6: 1477, 9: 1477, "#": 1477 };
  try {
    const ctx = audioContext();
    const gain = ctx.createGain();
    gain.gain.value = 0.05;
    gain.connect(ctx.destination);
    for (const frequency of [rows[digit], cols[digit]]) {
      const osc = ctx.createOscillator();
      osc.frequency.value = frequency;
      osc.connect(gain);
      osc.start();
      osc.stop(ctx.currentTime + 0.12);
    }
  } catch {
    // no audio output
  }
}

/** Live input level 0..1 of a MediaStream (RMS on a dB scale from -60 dBFS). */
export class LevelMeter {
  constructor(onLevel) {
    this.onLevel = onLevel;
    this.source = null;
    this.analyser = null;
    this.timer = null;
  }

  attach(stream) {
    this.detach();
    try {
      const ctx = audioContext();
      this.analyser = ctx.createAnalyser();
      this.analyser.fftSize = 1024;
      this.source = ctx.createMediaStreamSource(stream);
      this.source.connect(this.analyser);
    } catch {
      return;
    }
    const samples = new Float32Array(this.analyser.fftSize);
    this.timer = setInterval(() => {
      this.analyser.getFloatTimeDomainData(samples);
      let sum = 0;
      for (const s of samples) sum += s * s;
      const rms = Math.sqrt(sum / samples.length);
      const db = rms > 0 ? 20 * Math.log10(rms) : -100;
      this.onLevel(Math.max(0, Math.min(1, (db + 60) / 60)));
    }, 100);
  }

  detach() {
    clearInterval(this.timer);
    this.timer = null;
    if (this.source) this.source.disconnect();
    this.source = null;
    this.analyser = null;
    this.onLevel(0);
  }
}
