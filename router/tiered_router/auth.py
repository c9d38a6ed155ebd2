"""API keys: a mounted YAML file maps keys to teams. Only SHA-256 hashes are kept in memory.

File format (either `key` in plain text, hashed at load and then dropped, or its `sha256` hex digest):

    keys:
      - sha256: 9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08
        team: marketing
        feature: chatbot        # optional default feature
        name: marketing-web     # optional: what a budget's `apiKey` names
      - key: sk-legal-1
        team: legal
      - key: sk-platform-1
        team: platform
        admin: true             # sees every team's rows in /v1/tiered/costs

A request's Bearer token is hashed and looked up; comparing digests (not the keys) means a lookup's timing
reveals nothing usable about a valid key. No file configured means the router is open.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import yaml


@dataclass(frozen=True, slots=True)
class Identity:
    team: str
    feature: str | None = None
    admin: bool = False
    """May read every team's costs (others see their own team's rows only)."""
    name: str | None = None
    """The key's `name` in the file (what a budget's `apiKey` names); the key itself is never kept."""


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def load_keys(path: str | Path) -> dict[str, Identity]:
    """Digest → identity; raises ValueError with the reason when the file is unusable."""
    try:
        data = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as error:
        raise ValueError(f"cannot read API keys file {path}: {error}") from error
    entries = data.get("keys") if isinstance(data, dict) else None
    if not isinstance(entries, list):
        raise ValueError(f"{path}: expected a mapping with a `keys` list")
    keys: dict[str, Identity] = {}
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict) or not isinstance(entry.get("team"), str):
            raise ValueError(f"{path}: keys[{i}] needs a `team` string")
        if isinstance(entry.get("key"), str):
            digest = hash_key(entry["key"])
        elif isinstance(entry.get("sha256"), str) and len(entry["sha256"]) == 64:
            digest = entry["sha256"].lower()
        else:
            raise ValueError(f"{path}: keys[{i}] needs `key` or a 64-hex-digit `sha256`")
        feature, admin = entry.get("feature"), entry.get("admin", False)
        if not isinstance(admin, bool):
            raise ValueError(f"{path}: keys[{i}].admin must be true or false")
        name = entry.get("name")
        keys[digest] = Identity(
            entry["team"], feature if isinstance(feature, str) else None, admin, name if isinstance(name, str) else None
        )
    return keys


def identify(keys: dict[str, Identity], authorization: str | None) -> Identity | None:
    """The identity for an `Authorization: Bearer <key>` header, or None if missing or unknown."""
    if not authorization or authorization[:7].lower() != "bearer ":
        return None
    return keys.get(hash_key(authorization[7:].strip()))
