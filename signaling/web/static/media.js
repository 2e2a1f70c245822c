// The browser's side of a call leg: microphone, RTCPeerConnection, quality from getStats.

const TEST_MODE = new URLSearchParams(location.search).has("test");
const GATHER_TIMEOUT_MS = 3000;

/** Audio constraints: the browser's processing on, unless the page runs with ?test=1. */
export function audioConstraints(deviceId = "") {
  const audio = TEST_MODE
    ? { echoCancellation: false, noiseSuppression: false, autoGainControl: false }
    : {};
  if (deviceId) audio.deviceId = { exact: deviceId };
  return Object.keys(audio).length ? audio : true;
}

export async function microphone(deviceId = "") {
  if (!navigator.mediaDevices || !navigator.mediaDevices.getUserMedia) {
    throw new Error("This browser cannot use a microphone here (a secure page is needed).");
  }
  try {
    return await navigator.mediaDevices.getUserMedia({ audio: audioConstraints(deviceId) });
  } catch (error) {
    if (error && error.name === "NotAllowedError") {
      throw new Error("Allow the microphone to make calls.");
    }
    if (error && error.name === "NotFoundError") throw new Error("No microphone found.");
    throw error;
  }
}

export async function microphones() {
  if (!navigator.mediaDevices || !navigator.mediaDevices.enumerateDevices) return [];
  const devices = await navigator.mediaDevices.enumerateDevices();
  return devices.filter((d) => d.kind === "audioinput");
}

/** A peer connection without any STUN/TURN server (the relay is reached directly). */
export function peerConnection() {
  return new RTCPeerConnection({ iceServers: [] });
}

/** Wait until ICE gathering is complete: the protocol carries candidates in the SDP. */
export function gathered(pc) {
  if (pc.iceGatheringState === "complete") return Promise.resolve();
  return new Promise((resolve) => {
    const done = () => {
      if (pc.iceGatheringState !== "complete") return;
      pc.removeEventListener("icegatheringstatechange", done);
      clearTimeout(timer);
      resolve();
    };
    const timer = setTimeout(() => {
      pc.removeEventListener("icegatheringstatechange", done);
      resolve();
    }, GATHER_TIMEOUT_MS);
    pc.addEventListener("icegatheringstatechange", done);
  });
}

/** Figures of the inbound audio stream (the debugging hook and the quality view). */
export async function inboundAudio(pc) {
  const result = { packetsReceived: 0, totalAudioEnergy: 0, bytesReceived: 0, packetsLost: 0, jitter: 0 };
  let rtt = null;
  const report = await pc.getStats();
  report.forEach((stat) => {
    if (stat.type === "inbound-rtp" && (stat.kind || stat.mediaType) === "audio") {
      result.packetsReceived = stat.packetsReceived || 0;
      result.totalAudioEnergy = stat.totalAudioEnergy || 0;
      result.bytesReceived = stat.bytesReceived || 0;
      result.packetsLost = stat.packetsLost || 0;
      result.jitter = stat.jitter || 0;
    } else if (stat.type === "remote-inbound-rtp" && stat.roundTripTime !== undefined) {
      rtt = stat.roundTripTime;
    } else if (stat.type === "candidate-pair" && stat.nominated && stat.currentRoundTripTime !== undefined && rtt === null) {
      rtt = stat.currentRoundTripTime;
    }
  });
  result.roundTripTime = rtt;
  return result;
}

/** Rates loss (over the last interval), jitter and round-trip time: good, fair or poor. */
export class QualityMeter {
  constructor() {
    this.last = null;
  }

  rate(stats) {
    const previous = this.last;
    this.last = stats;
    if (!previous || stats.packetsReceived <= previous.packetsReceived) {
      return previous && stats.packetsReceived === previous.packetsReceived && previous.packetsReceived > 0
        ? "poor" // nothing arrived for a whole interval
        : "unknown";
    }
    const received = stats.packetsReceived - previous.packetsReceived;
    const lost = Math.max(0, stats.packetsLost - previous.packetsLost);
    const loss = lost / (received + lost);
    const jitterMs = stats.jitter * 1000;
    const rttMs = stats.roundTripTime === null ? 0 : stats.roundTripTime * 1000;
    if (loss > 0.08 || jitterMs > 60 || rttMs > 600) return "poor";
    if (loss > 0.02 || jitterMs > 30 || rttMs > 300) return "fair";
    return "good";
  }
}
