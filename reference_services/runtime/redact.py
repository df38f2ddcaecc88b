"""Secrets out of text: URLs are shown with their password replaced by ``***``."""

from __future__ import annotations

import re
from urllib.parse import urlsplit, urlunsplit

MASK = "***"
# scheme://user:password@  (the password runs to the last "@" before a space or quote)
_USERINFO = re.compile(
    r"(?P<head>\b[a-zA-Z][a-zA-Z0-9+.-]*://[^:/@\s'\"<>]*:)(?P<secret>[^@\s'\"<>]+)@"
)
# schemes whose user-only userinfo is itself a secret (a token)
_TOKEN_SCHEMES = {"nats", "tls", "ws", "wss"}
_TOKEN = re.compile(r"(?P<head>\b(?:nats|tls|wss?)://)(?P<secret>[^:/@\s'\"<>]+)@")


def redact_url(url: str) -> str:
    """``url`` with the password (or a NATS token) replaced by ``***``; other text unchanged."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return redact_text(url)
    if parts.password is None and not (parts.username and parts.scheme in _TOKEN_SCHEMES):
        return url
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    try:
        port = parts.port
    except ValueError:
        port = None
    if parts.password is not None:
        userinfo = f"{parts.username or ''}:{MASK}"
    else:
        userinfo = MASK
    netloc = f"{userinfo}@{host}" + (f":{port}" if port is not None else "")
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def redact_text(text: str) -> str:
    """Every ``scheme://user:password@`` in free text with the password replaced by ``***``."""
    if "://" not in text:
        return text
    text = _USERINFO.sub(lambda m: f"{m['head']}{MASK}@", text)
    return _TOKEN.sub(lambda m: f"{m['head']}{MASK}@", text)
