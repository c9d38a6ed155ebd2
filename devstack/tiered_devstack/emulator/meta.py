"""ObjectMeta validation as the apiserver does it for every kind, and the server's timestamps.

Pure (apart from reading the clock in `now_iso`).
"""

from __future__ import annotations

import datetime
import re

from tiered_devstack.emulator.kinds import Obj

_DNS_LABEL = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?"
_DNS_SUBDOMAIN = rf"{_DNS_LABEL}(\.{_DNS_LABEL})*"
_QUALIFIED = r"([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]"
DNS_LABEL_NAMES = {("", "namespaces"), ("", "services")}  # other kinds take DNS subdomain names


def metadata_errors(store: tuple[str, str], meta: Obj) -> list[str]:
    """ObjectMeta validation as the apiserver does it for every kind: name, labels, annotation size."""
    errors, name = [], str(meta.get("name", ""))
    if store in DNS_LABEL_NAMES and not (len(name) <= 63 and re.fullmatch(_DNS_LABEL, name)):
        errors.append(f'metadata.name: Invalid value: "{name}": a lowercase RFC 1123 label must consist of '
                      "lower case alphanumeric characters or '-', start and end with an alphanumeric "
                      "character, and be no more than 63 characters")
    elif not (len(name) <= 253 and re.fullmatch(_DNS_SUBDOMAIN, name)):
        errors.append(f'metadata.name: Invalid value: "{name}": a lowercase RFC 1123 subdomain must consist '
                      "of lower case alphanumeric characters, '-' or '.', and must start and end with an "
                      "alphanumeric character")
    for key, value in (meta.get("labels") or {}).items():
        prefix, _, local = str(key).rpartition("/")
        if not (len(local) <= 63 and re.fullmatch(_QUALIFIED, local)
                and (not prefix or (len(prefix) <= 253 and re.fullmatch(_DNS_SUBDOMAIN, prefix)))):
            errors.append(f'metadata.labels: Invalid value: "{key}": name part must consist of alphanumeric '
                          "characters, '-', '_' or '.', and must start and end with an alphanumeric character"
                          " (at most 63 characters, with an optional DNS subdomain prefix)")
        if not isinstance(value, str) or len(value) > 63 or (value and not re.fullmatch(_QUALIFIED, value)):
            errors.append(f'metadata.labels: Invalid value: "{value}": a valid label must be an empty string or '
                          "consist of alphanumeric characters, '-', '_' or '.', and must start and end with an "
                          "alphanumeric character (at most 63 characters)")
    size = sum(len(str(k)) + len(str(v)) for k, v in (meta.get("annotations") or {}).items())
    if size > 256 * 1024:
        errors.append("metadata.annotations: Too long: must have at most 262144 bytes")
    return errors


def now_iso() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
