"""The WebRTC page: aiohttp server (page, signaling, controls, uploads) and aiortc peers; index.html and app.js beside them."""
