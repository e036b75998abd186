"""Avatars: the pack format, photo reading, enrollment (align -> invert -> pivotal tuning -> cache), pose targets, the published frame's framing."""
