'use strict';
// The page's side of the stream: send the camera and get the reenacted video back, or watch the
// server's stream. Signaling is one POST /offer with {sdp, type}; no STUN servers (loopback / LAN).
// GET /status, once a second, tells the avatar's preparation (enrolling a photo takes about a minute),
// what this server can do (watch, controls) and this session's fps and latency as the server measures them.
(() => {
  const params = new URLSearchParams(location.search);
  const token = params.get('token');
  const MAX_AVATAR_BYTES = 8 * 1024 * 1024;
  const $ = (id) => document.getElementById(id);

  let pc = null;
  let peerId = null;      // our session on the server (null before connecting)
  let mode = null;        // 'send' | 'watch' while a call is set up or running
  let avatarId = null;    // uploaded avatar, used for the next connection too (null: the server's default)
  let switchTo = null;    // an uploaded avatar to switch the running call to once it is ready
  let localStream = null;
  let call = 0;           // bumped by every start/hang-up: a superseded start stops at its next await
  let server = null;      // the last /status
  const seen = new Set();
  const waiters = [];     // resolved on each /status
  // Live numbers, also read by the browser tests.
  const stats = window.reenactStats = {
    state: 'idle', framesDecoded: 0, fps: 0, distinctFrames: 0, width: 0, height: 0, corner: null,
    error: null, avatar: null, avatarStates: [], clickedWhile: null, serverFps: null, latencyMs: null,
    cameras: 0, polls: 0, messages: [] };
  const small = document.createElement('canvas');
  const full = document.createElement('canvas');

  function say(msg, isError = false) {
    $('log').textContent = msg;
    $('log').classList.toggle('error', isError);
    if (msg && stats.messages[stats.messages.length - 1] !== msg) stats.messages.push(msg);
    if (stats.messages.length > 50) stats.messages.splice(0, stats.messages.length - 50);
  }

  function headers(type) {
    const h = type ? { 'Content-Type': type } : {};
    if (token) h['X-Token'] = token;
    return h;
  }

  async function post(path, body, type = 'application/json') {
    const r = await fetch(path, { method: 'POST', headers: headers(type), keepalive: path === '/close',
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

  // ------------------------------------------------------------------ avatar
  const shownAvatar = () => avatarId || 'default';
  const prepOf = (aid) => (server && server.avatars || []).find((a) => a.id === aid) || null;

  function nextStatus() { return new Promise((resolve) => waiters.push(resolve)); }

  async function avatarReady(aid, myCall) {
    // resolves once the server has prepared avatar `aid` (at once if it has); throws if that failed
    for (;;) {
      if (!server) { await nextStatus(); continue; }
      const p = prepOf(aid);
      if (!p) return;    // nothing being prepared (a server without a default avatar): the offer decides
      if (p.state === 'ready') return;
      if (p.state === 'failed') throw new Error(`avatar ${p.name}: ${p.error}`);
      if (myCall !== call) return;
      say(`your camera connects when the avatar is ready (${p.name}: ${p.message}, ` +
          `${Math.round(100 * p.progress)}%)`);
      await nextStatus();
    }
  }

  function renderAvatar() {
    const p = prepOf(shownAvatar());
    stats.avatar = p;
    if (p && stats.avatarStates[stats.avatarStates.length - 1] !== `${p.id}:${p.state}`) {
      stats.avatarStates.push(`${p.id}:${p.state}`);
    }
    const img = $('thumb');
    if (p && p.thumbnail) {
      const src = `avatars/${encodeURIComponent(p.id)}/thumbnail.jpg?s=${p.state}` + (token ? `&token=${encodeURIComponent(token)}` : '');
      if (img.getAttribute('src') !== src) img.setAttribute('src', src);
      img.hidden = false;
      $('thumb-empty').hidden = true;
    } else {
      img.hidden = true;
      $('thumb-empty').hidden = false;
    }
    const state = $('avatar-state');
    const bar = $('avatar-progress');
    $('avatar-name').textContent = p ? p.name : 'no avatar yet';
    state.className = p ? p.state : 'muted';
    if (!p) {
      state.textContent = 'choose a photo to start';
      bar.hidden = true;
    } else if (p.state === 'ready') {
      state.textContent = 'ready';
      bar.hidden = true;
    } else if (p.state === 'failed') {
      state.textContent = p.error;
      bar.hidden = true;
    } else {
      state.textContent = `preparing: ${p.message} (${Math.round(100 * p.progress)}%)`;
      bar.hidden = false;
      bar.value = p.progress;
    }
  }

  async function uploadAvatar(file) {
    if (!['image/png', 'image/jpeg', 'image/webp'].includes(file.type)) throw new Error('choose a PNG, JPEG or WebP photo');
    if (file.size > MAX_AVATAR_BYTES) throw new Error('photo larger than 8 MB');
    say(`uploading ${file.name}\u2026`);
    const r = await post(`/avatar?name=${encodeURIComponent(file.name)}`, file, file.type);
    avatarId = r.avatar;
    const switches = pc && (mode === 'send' || (server && server.can_control));
    switchTo = switches ? r.avatar : null;
    renderAvatar();
    return switches ? `preparing ${r.name}: the call goes on with the current avatar until it is ready`
                    : `preparing ${r.name}: it is used when you send your camera`;
  }

  async function switchWhenReady() {
    // an upload made during a call replaces the call's avatar once the server has prepared it
    const p = switchTo && prepOf(switchTo);
    if (!p || p.state === 'queued' || p.state === 'preparing') return;
    switchTo = null;
    if (p.state === 'failed') {
      avatarId = null;
      say(`avatar ${p.name} failed: ${p.error}`, true);
      return;
    }
    if (mode === 'send' && peerId) say((await control('avatar', { avatar: p.id })).message);
    else if (mode === 'watch' && server.can_control) say((await control('avatar', { avatar: p.id })).message);
  }

  // ------------------------------------------------------------------ camera
  async function listCameras() {
    if (!navigator.mediaDevices || !navigator.mediaDevices.enumerateDevices) return;
    const devices = (await navigator.mediaDevices.enumerateDevices()).filter((d) => d.kind === 'videoinput');
    const sel = $('camera');
    const keep = sel.value || localStorage.getItem('reenact.camera') || '';
    sel.textContent = '';
    devices.forEach((d, i) => {
      const o = document.createElement('option');
      o.value = d.deviceId;
      o.textContent = d.label || `camera ${i + 1}`;
      sel.appendChild(o);
    });
    if (!devices.length) {
      const o = document.createElement('option');
      o.value = '';
      o.textContent = 'no camera found';
      sel.appendChild(o);
    }
    if (devices.some((d) => d.deviceId === keep)) sel.value = keep;
    stats.cameras = devices.length;
    renderControls();
  }

  function getCamera() {
    const id = $('camera').value;
    const video = { width: 640, height: 480 };
    if (id) video.deviceId = { exact: id };
    return navigator.mediaDevices.getUserMedia({ video, audio: false });
  }

  async function changeCamera() {
    localStorage.setItem('reenact.camera', $('camera').value);
    if (!localStream) return null;
    const fresh = await getCamera();
    const track = fresh.getVideoTracks()[0];
    const sender = pc && pc.getSenders().find((s) => s.track && s.track.kind === 'video');
    if (sender) await sender.replaceTrack(track);    // same call, no renegotiation
    localStream.getTracks().forEach((t) => t.stop());
    localStream = fresh;
    $('local').srcObject = fresh;
    return `camera: ${$('camera').selectedOptions[0].textContent}`;
  }

  function applyMirror() {
    const on = $('mirror').checked;
    localStorage.setItem('reenact.mirror', on ? '1' : '0');
    $('local').classList.toggle('mirrored', on);
    $('remote').classList.toggle('mirrored', on);
  }

  // ------------------------------------------------------------------ call
  async function start(m) {
    await hangup();
    const myCall = ++call;
    mode = m;
    seen.clear();
    stats.error = null;
    if (m === 'send') {
      const p = prepOf(shownAvatar());
      stats.clickedWhile = p ? p.state : (server ? 'none' : 'unknown');
      setState('camera');
      localStream = await getCamera();              // the preview shows while the avatar is prepared
      if (myCall !== call) { localStream.getTracks().forEach((t) => t.stop()); return null; }
      $('local').srcObject = localStream;
      $('local').classList.add('on');
      listCameras().catch(() => {});                // labels are readable once the camera is allowed
      setState('waiting');
      await avatarReady(shownAvatar(), myCall);
      if (myCall !== call) return null;
    }
    setState('connecting');
    say(m === 'send' ? 'connecting your camera\u2026' : 'connecting to the server stream\u2026');
    pc = new RTCPeerConnection();
    const conn = pc;
    pc.addEventListener('track', (ev) => {
      $('remote').srcObject = ev.streams[0] || new MediaStream([ev.track]);
    });
    pc.addEventListener('connectionstatechange', () => {
      if (conn === pc) setState(conn.connectionState);
    });
    if (m === 'send') {
      for (const t of localStream.getVideoTracks()) pc.addTrack(t, localStream);
    } else {
      pc.addTransceiver('video', { direction: 'recvonly' });
    }
    await pc.setLocalDescription(await pc.createOffer());
    await iceComplete(pc);
    if (myCall !== call) return null;
    const answer = await post('/offer', { sdp: pc.localDescription.sdp, type: pc.localDescription.type,
                                          avatar: m === 'send' ? avatarId : null });
    if (myCall !== call) { post('/close', { peer: answer.peer }).catch(() => {}); return null; }
    peerId = answer.peer;
    await pc.setRemoteDescription({ sdp: answer.sdp, type: answer.type });
    renderControls();
    return m === 'send' ? 'sending your camera: the avatar follows your face' : 'watching the server stream';
  }

  async function hangup() {
    call++;
    if (peerId) post('/close', { peer: peerId }).catch(() => {});
    peerId = null;
    mode = null;
    if (pc) pc.close();
    pc = null;
    if (localStream) localStream.getTracks().forEach((t) => t.stop());
    localStream = null;
    $('local').classList.remove('on');
    $('remote').srcObject = null;
    stats.fps = 0;
    setState('idle');
    return null;
  }

  function setState(s) {
    stats.state = s;
    const pill = $('state');
    pill.textContent = { camera: 'opening camera', waiting: 'waiting for the avatar' }[s] || s;
    pill.className = 'pill ' + (s === 'connected' ? 'connected' : ['failed', 'closed'].includes(s) ? 'failed'
      : ['camera', 'waiting', 'connecting', 'new'].includes(s) ? 'waiting' : '');
    renderControls();
    render();
  }

  // ------------------------------------------------------------------ status
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

  async function tick() {
    try {
      const r = await fetch('/status', { headers: headers() });
      if (r.ok) server = await r.json();
      stats.polls++;
    } catch (e) { /* server gone for a moment: keep the last status */ }
    waiters.splice(0).forEach((w) => w());
    if (pc) {
      const report = await pc.getStats();
      report.forEach((s) => {
        if (s.type === 'inbound-rtp' && s.kind === 'video') {
          stats.framesDecoded = s.framesDecoded || 0;
          stats.fps = s.framesPerSecond || 0;
        }
      });
      sample();
    }
    // this session's numbers as the server measures them: its own pipeline when we drive one, the
    // server's stream when we watch it
    const me = server && peerId ? (server.peers || []).find((p) => p.peer === peerId) : null;
    const src = mode === 'send' ? me : mode === 'watch' ? server && server.server : null;
    stats.serverFps = src && src.fps != null ? src.fps : null;
    stats.latencyMs = src && src.latency_ms_p50 != null ? src.latency_ms_p50 : null;
    const mine = avatarId && !switchTo ? prepOf(avatarId) : null;
    if (mine && mine.state === 'failed') {            // a photo chosen before a call could not be used
      avatarId = null;
      say(`avatar ${mine.name} failed: ${mine.error}`, true);
    }
    renderAvatar();
    renderControls();
    render();
    await switchWhenReady().catch((e) => say(`error: ${e.message || e}`, true));
  }

  function render() {
    $('fps').textContent = stats.serverFps != null ? stats.serverFps.toFixed(1) : '\u2013';
    $('latency').textContent = stats.latencyMs != null ? Math.round(stats.latencyMs) : '\u2013';
    $('size').textContent = stats.width ? `${stats.width}\u00d7${stats.height}` : '\u2013';
    $('placeholder').hidden = !!(pc && stats.framesDecoded);
    const parts = [stats.state];
    if (pc) parts.push(`${stats.fps.toFixed(1)} fps received`, `${stats.framesDecoded} frames`);
    if (peerId) parts.push(`session ${peerId}`);
    $('status').textContent = parts.join(' \u00b7 ');
  }

  function renderControls() {
    const hasCamera = !!(navigator.mediaDevices && navigator.mediaDevices.getUserMedia);
    const send = $('send');
    send.disabled = !hasCamera || mode === 'send';
    send.title = hasCamera ? '' : 'this browser allows cameras only on https:// or http://127.0.0.1 pages';
    const watch = $('watch');
    watch.disabled = !server || !server.can_watch;
    watch.title = watch.disabled ? 'this server has no video source of its own (start it with --source)' : '';
    $('hangup').disabled = mode === null;
    const controllable = (mode === 'send' && !!peerId) || (mode === 'watch' && !!peerId && server && server.can_control);
    $('reset').disabled = !controllable;
    $('sbs').disabled = !controllable;
    $('camera').disabled = !hasCamera || stats.cameras === 0;
  }

  async function control(action, extra = {}) {
    // a driving peer controls its own reenactor; a watcher controls the server stream
    const body = Object.assign({ action }, extra);
    if (mode === 'send' && peerId) body.peer = peerId;
    return post('/control', body);
  }

  const guard = (fn) => async (...a) => {
    try { const msg = await fn(...a); if (msg) say(msg); }
    catch (e) {
      stats.error = String(e.message || e);
      say(`error: ${stats.error}`, true);
      if (mode !== null && !peerId) await hangup();     // a start that failed: back to idle
    }
  };
  $('send').addEventListener('click', guard(() => start('send')));
  $('watch').addEventListener('click', guard(() => start('watch')));
  $('hangup').addEventListener('click', guard(async () => { await hangup(); return 'call ended'; }));
  $('reset').addEventListener('click', guard(async () => (await control('reset')).message));
  $('sbs').addEventListener('click', guard(async () => (await control('side_by_side')).message));
  $('camera').addEventListener('change', guard(changeCamera));
  $('mirror').addEventListener('change', applyMirror);
  $('avatar').addEventListener('change', guard(async (ev) => {
    const f = ev.target.files[0];
    ev.target.value = '';
    return f ? uploadAvatar(f) : null;
  }));
  window.addEventListener('pagehide', () => { if (peerId) post('/close', { peer: peerId }).catch(() => {}); });
  if (navigator.mediaDevices && navigator.mediaDevices.addEventListener) {
    navigator.mediaDevices.addEventListener('devicechange', () => listCameras().catch(() => {}));
  }

  $('mirror').checked = localStorage.getItem('reenact.mirror') !== '0';
  applyMirror();
  renderControls();
  listCameras().catch(() => {});
  const loop = async () => {
    try { await tick(); } catch (e) { /* a call closing meanwhile: the next tick reads it again */ }
    setTimeout(loop, 1000);
  };
  loop();

  const auto = params.get('autostart');
  if (auto === 'send' || auto === 'watch') guard(() => start(auto))();
})();
