"""What the gateway's and the worker's output must be: one JSON object per line (time, level, logger, message), and no
configured secret in any line, in any form the scrubber knows (base64 Basic pairs, URL- and JSON-escaped)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from unittest import mock

from gateway.backends import BACKENDS
from gateway.config import read_config_file
from gateway.errors import ConfigError
from gateway.scrubbing import Scrubber

REQUIRED_FIELDS = ("time", "level", "logger", "message")
_scrubbers: dict[tuple[str, float], Scrubber | None] = {}
#: how far each server log has been checked (only whole lines are)
_checked: dict[Path, int] = {}


def scrubber_for(env: dict[str, str]) -> Scrubber | None:
    """A scrubber of every secret the configuration the server was started with holds (None when it does not load:
    the server then only printed why)."""
    path = env.get("GATEWAY_CONFIG")
    if not path or not Path(path).is_file():
        return None
    key = (path, Path(path).stat().st_mtime)
    if key not in _scrubbers:
        try:
            with mock.patch.dict(os.environ, env, clear=True):
                _scrubbers[key] = Scrubber.for_settings(read_config_file(path, BACKENDS))
        except ConfigError:
            _scrubbers[key] = None
    return _scrubbers[key]


def problems_in(text: str, scrubber: Scrubber | None) -> list[str]:
    """Each line of `text` that is not a JSON log object, or that holds a configured secret."""
    found = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError:
            found.append(f"line {number} is not JSON: {line[:300]}")
            continue
        if not isinstance(record, dict) or any(field not in record for field in REQUIRED_FIELDS):
            found.append(f"line {number} lacks one of {REQUIRED_FIELDS}: {line[:300]}")
        elif scrubber is not None and scrubber.scrub(line) != line:
            found.append(f"line {number} holds a configured secret: {scrubber.scrub(line)[:300]}")
    return found


def unchecked_problems(logs: dict[Path, tuple[str, dict[str, str]]]) -> list[str]:
    """Check what the gateway and worker logs gained since the last call (whole lines only)."""
    found = []
    for path, (kind, env) in list(logs.items()):
        if kind not in ("gateway", "worker") or not path.exists():
            continue
        with open(path, "rb") as log:
            log.seek(_checked.get(path, 0))
            data = log.read()
        complete = data[:data.rfind(b"\n") + 1]
        if not complete:
            continue
        _checked[path] = _checked.get(path, 0) + len(complete)
        text, scrubber = complete.decode("utf-8", "replace"), scrubber_for(env)
        if env.get("GATEWAY_LOG_FORMAT") == "text":  # a server asked for text: its lines still name no secret
            found += [f"{path.name}: a line holds a configured secret: {scrubber.scrub(line)[:300]}"
                      for line in text.splitlines() if scrubber is not None and scrubber.scrub(line) != line]
            continue
        found += [f"{path.name}: {problem}" for problem in problems_in(text, scrubber)]
    return found
