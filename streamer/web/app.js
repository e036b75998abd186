'use strict';
// The page's side of the stream: send the camera and get the reenacted video back, or watch the
// server's stream. Signaling is one POST /offer with {sdp, type}; no STUN servers (loopback / LAN).
(() => {
  const params = new URLSearchParams(location.search);
  const token = params.get('token');
  const MAX_AVATAR_BYTES = 8 * 1024 * 1024;
  const $ = (id) => document.getElementById(id);

  let pc = null;
  let peerId = null;      // our session on the server (null before connecting)
  let mode = null;        // 'send' | 'watch'
  let avatarId = null;    // uploaded avatar, used for the next connection too
  let localStream = null;
  let timer = null;
  const seen = new Set();
  // Live numbers, also read by the browser test (frames decoded, distinct frames, marker colour).
  const stats = window.reenactStats = { state: 'idle', framesDecoded: 0, fps: 0, distinctFrames: 0,
                                        width: 0, height: 0, corner: null, error: null };
  const small = document.createElement('canvas');
  const full = document.createElement('canvas');

  function say(msg) { $('log').textContent = msg; }

  async function post(path, body, type = 'application/json') {
    const headers = { 'Content-Type': type };
    if (token) headers['X-Token'] = token;
    const r = await fetch(path, { method: 'POST', headers, keepalive: path === '/close',
                                  body: type === 'application/json' ? JSON.stringify(body) : body });
    const j = await r.json().catch(() => ({ error: r.statusText }));
    if (!r.ok) throw new Error(j.error || r.statusText);
    return j;
  }

  function iceComplete(conn) {
    return new Promise((resolve) => {
      if (conn.iceGatheringState === 'complete') return resolve();
      const check = () => {
        if (conn.iceGatheringState === 'complete') {
          conn.removeEventListener('icegatheringstatechange', check);
          resolve();
        }
      };
      conn.addEventListener('icegatheringstatechange', check);
    });
  }

  async function start(m) {
    await hangup();
    mode = m;
    seen.clear();
    pc = new RTCPeerConnection();
    pc.addEventListener('track', (ev) => {
      $('remote').srcObject = ev.streams[0] || new MediaStream([ev.track]);
    });
    pc.addEventListener('connectionstatechange', () => {
      stats.state = pc ? pc.connectionState : 'closed';
      render();
    });
    if (m === 'send') {
      localStream = await navigator.mediaDevices.getUserMedia({ video: { width: 640, height: 480 }, audio: false });
      $('local').srcObject = localStream;
      for (const t of localStream.getVideoTracks()) pc.addTrack(t, localStream);
    } else {
      pc.addTransceiver('video', { direction: 'recvonly' });
    }
    await pc.setLocalDescription(await pc.createOffer());
    await iceComplete(pc);
    const answer = await post('/offer', { sdp: pc.localDescription.sdp, type: pc.localDescription.type,
                                          avatar: avatarId });
    peerId = answer.peer;
    await pc.setRemoteDescription({ sdp: answer.sdp, type: answer.type });
    $('hangup').disabled = false;
    timer = setInterval(poll, 1000);
    say(m === 'send' ? 'sending your camera' : 'watching the server stream');
  }

  async function hangup() {
    if (timer) clearInterval(timer);
    timer = null;
    if (peerId) post('/close', { peer: peerId }).catch(() => {});
    peerId = null;
    if (pc) pc.close();
    pc = null;
    if (localStream) localStream.getTracks().forEach((t) => t.stop());
    localStream = null;
    $('hangup').disabled = true;
    stats.state = 'idle';
    render();
  }

  function sample() {
    const v = $('remote');
    if (!v.videoWidth) return;
    stats.width = v.videoWidth;
    stats.height = v.videoHeight;
    small.width = 64; small.height = 48;
    const sctx = small.getContext('2d', { willReadFrequently: true });
    sctx.drawImage(v, 0, 0, 64, 48);
    const d = sctx.getImageData(0, 0, 64, 48).data;
    let h = 0;
    for (let i = 0; i < d.length; i += 4) h = (Math.imul(h, 31) + d[i] + 3 * d[i + 1] + 7 * d[i + 2]) >>> 0;
    if (seen.size < 10000) seen.add(h);
    stats.distinctFrames = seen.size;
    full.width = v.videoWidth; full.height = v.videoHeight;
    const fctx = full.getContext('2d', { willReadFrequently: true });
    fctx.drawImage(v, 0, 0);
    stats.corner = Array.from(fctx.getImageData(v.videoWidth - 16, 16, 1, 1).data.slice(0, 3));
  }

  async function poll() {
    if (!pc) return;
    const report = await pc.getStats();
    report.forEach((s) => {
      if (s.type === 'inbound-rtp' && s.kind === 'video') {
        stats.framesDecoded = s.framesDecoded || 0;
        stats.fps = s.framesPerSecond || 0;
      }
    });
    sample();
    render();
  }

  function render() {
    $('status').textContent = `${stats.state} | ${stats.fps.toFixed(1)} fps | ${stats.framesDecoded} frames ` +
      `decoded | ${stats.width}x${stats.height}` + (peerId ? ` | peer ${peerId}` : '');
  }

  async function control(action, extra = {}) {
    // A driving peer controls its own reenactor; a watcher controls the server stream.
    const body = Object.assign({ action }, extra);
    if (mode === 'send' && peerId) body.peer = peerId;
    return post('/control', body);
  }

  async function uploadAvatar(file) {
    if (!['image/png', 'image/jpeg', 'image/webp'].includes(file.type)) throw new Error('choose a PNG, JPEG or WebP photo');
    if (file.size > MAX_AVATAR_BYTES) throw new Error('photo larger than 8 MB');
    avatarId = (await post('/avatar', file, file.type)).avatar;
    if (pc) return (await control('avatar', { avatar: avatarId })).message;
    return 'avatar ready: it is used when you connect';
  }

  const guard = (fn) => async (...a) => {
    try { const msg = await fn(...a); if (msg) say(msg); stats.error = null; }
    catch (e) { stats.error = String(e.message || e); say(`error: ${stats.error}`); }
  };
  $('send').addEventListener('click', guard(() => start('send')));
  $('watch').addEventListener('click', guard(() => start('watch')));
  $('hangup').addEventListener('click', guard(hangup));
  $('reset').addEventListener('click', guard(async () => (await control('reset')).message));
  $('sbs').addEventListener('click', guard(async () => (await control('side_by_side')).message));
  $('avatar').addEventListener('change', guard(async (ev) => {
    const f = ev.target.files[0];
    ev.target.value = '';
    return f ? uploadAvatar(f) : null;
  }));
  window.addEventListener('pagehide', () => { if (peerId) post('/close', { peer: peerId }).catch(() => {}); });

  const auto = params.get('autostart');
  if (auto === 'send' || auto === 'watch') guard(() => start(auto))();
})();
