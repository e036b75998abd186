"""ServeConfig: the HTTP side (WebRTC page or control endpoints), built once from the command line."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ServeConfig:
    webrtc: bool = False          # serve the WebRTC page
    control: bool = False         # serve only the HTTP control/status endpoints
    host: str = "127.0.0.1"
    port: int = 8080
    token: str | None = None      # access token on every endpoint (empty: none)
    max_peers: int = 8

    @property
    def serving(self) -> bool:
        return self.webrtc or self.control

    @classmethod
    def from_args(cls, args) -> "ServeConfig":
        return cls(webrtc=args.webrtc, control=args.control, host=args.host, port=args.port, token=args.token,
                   max_peers=args.max_peers)
