"""ServeConfig: the HTTP side (WebRTC page or control endpoints), built once from the command line."""
from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from urllib.parse import urlsplit


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


def is_loopback(address: str) -> bool:
    """Whether a host or cluster address names this machine's loopback: 'HOST', 'HOST:PORT',
    '[V6]:PORT', a bare IPv6 address or 'ray://HOST:PORT'; 127.0.0.0/8, ::1 or localhost."""
    try:
        return ipaddress.ip_address(address.strip("[]")).is_loopback
    except ValueError:
        pass
    try:
        host = urlsplit(address if "://" in address else f"//{address}").hostname or ""
    except ValueError:     # a malformed port or bracket: not an address this machine binds
        return False
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
