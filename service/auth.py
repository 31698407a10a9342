"""API keys: optional, compared as digests in constant time, counted by a bounded key id, never logged.

Keys come from `OPTIC_API_KEYS` (comma-separated) and `OPTIC_API_KEYS_FILE` (one per line, `#` comments).
`NAME:KEY` names a key (the name is its id in metrics); a bare `KEY` gets the id `key-` + 8 hex digits of
its sha256, which identifies it to whoever holds it and to nobody else.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from dataclasses import dataclass
from pathlib import Path

_NAMED = re.compile(r"^([A-Za-z0-9_.-]{1,32}):(.+)$")
MIN_KEY_LENGTH = 16  # shorter keys are guessable; refused at start, naming the setting


@dataclass(frozen=True)
class ApiKey:
    key_id: str
    digest: bytes


class ApiKeyError(ValueError):
    """A configured key is unusable (too short, duplicated): start-up stops with this message."""


def _parse(entry: str, source: str) -> ApiKey:
    match = _NAMED.match(entry)
    name, secret = (match.group(1), match.group(2)) if match else (None, entry)
    if len(secret) < MIN_KEY_LENGTH:
        raise ApiKeyError(f"{source}: an API key is shorter than {MIN_KEY_LENGTH} characters")
    digest = hashlib.sha256(secret.encode()).digest()
    return ApiKey(name or f"key-{digest.hex()[:8]}", digest)


def load_keys(inline: str, path: Path | None) -> list[ApiKey]:
    entries = [(e.strip(), "OPTIC_API_KEYS") for e in inline.split(",") if e.strip()]
    if path is not None:
        try:
            text = path.read_text()
        except OSError as exc:
            raise ApiKeyError(f"OPTIC_API_KEYS_FILE: cannot read {path}: {exc.strerror}") from None
        lines = (line.strip() for line in text.splitlines())
        entries += [(line, f"OPTIC_API_KEYS_FILE ({path})") for line in lines if line and not line.startswith("#")]
    keys = [_parse(entry, source) for entry, source in entries]
    ids = [k.key_id for k in keys]
    if len(set(ids)) != len(ids) or len({k.digest for k in keys}) != len(keys):
        raise ApiKeyError("OPTIC_API_KEYS / OPTIC_API_KEYS_FILE: a key or key name is given twice")
    return keys


class KeyChecker:
    def __init__(self, keys: list[ApiKey]) -> None:
        self.keys = keys

    @property
    def enabled(self) -> bool:
        return bool(self.keys)

    def identify(self, presented: bytes) -> str | None:
        """The id of the key presented, or None. Every configured digest is compared, whatever matches, so the
        time taken says nothing about which key (or how much of one) was right."""
        digest = hashlib.sha256(presented).digest()
        found = None
        for key in self.keys:
            if hmac.compare_digest(digest, key.digest):
                found = key.key_id
        return found


def presented_key(headers: list[tuple[bytes, bytes]]) -> bytes | None:
    """`Authorization: Bearer KEY` or `X-API-Key: KEY`, from raw ASGI headers."""
    for name, value in headers:
        if name == b"authorization":
            scheme, _, token = value.partition(b" ")
            if scheme.lower() == b"bearer" and token.strip():
                return token.strip()
        elif name == b"x-api-key" and value.strip():
            return value.strip()
    return None
