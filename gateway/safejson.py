"""The one JSON reader for everything from outside (callers, webhooks, backends), and integers from outside.

Python's json module recurses, turns `1e999` into infinity, keeps lone surrogates and converts integers of any
length, so every document is bounded before any other code sees it: nesting depth (a JSONDecodeError-free
RecursionError included), integer digits, finite numbers, text that UTF-8 can store. Structural problems raise
MalformedJSON (the document as a whole is unusable); values JSON can hold but nothing downstream can (infinity,
unpaired surrogates) raise UnrepresentableJSON with the path of each.

    MalformedJSON         (ValueError)  not JSON, too deep, a number of too many digits, an object of too many
                                        members
    UnrepresentableJSON   (ValueError)  field path -> messages for non-finite numbers and unpaired surrogates
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

#: longer runs of digits in a number are refused before Python converts them (its own limit is 4,300)
MAX_INTEGER_DIGITS = 100
#: members one object may have: every schema downstream names each unknown member as an error, so 300,000 of
#: them would cost seconds and hundreds of MB before the reply is cut to 50 errors
MAX_OBJECT_MEMBERS = 1000
#: reading stops collecting value problems after this many
MAX_VALUE_PROBLEMS = 100
_SURROGATE = re.compile("[\ud800-\udfff]")
#: a surrogate written as an escape, the only way one reaches a document that decoded as UTF-8
_ESCAPED_SURROGATE = re.compile(r"\\u[dD][89a-fA-F]")
_STRING = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"')
_LONG_INTEGER = re.compile(rb"[0-9]{%d,}" % (MAX_INTEGER_DIGITS + 1))
#: outside its strings a JSON text is ASCII: keep its brackets, objects' as arrays' (the nesting is valid)
_BRACKETS_ONLY = bytes.maketrans(b"{}", b"[]")
_NOT_BRACKETS = bytes(set(range(128)) - set(b"[]{}"))
_ASCII_INTEGER = re.compile(r"[+-]?[0-9]+\Z")
NOT_FINITE = "Not a finite number: JSON numbers beyond the range of a double cannot be stored."
SURROGATE = "Contains an unpaired surrogate (a UTF-16 half character), which no text encoding can store."


class MalformedJSON(ValueError):
    """The document cannot be used at all; `description` completes "The body ..." or "The reply ..."."""

    def __init__(self, description: str) -> None:
        super().__init__(description)
        self.description = description


class UnrepresentableJSON(ValueError):
    """Values the document holds that cannot be stored or sent on; `errors` maps field paths to messages."""

    def __init__(self, errors: dict[str, list[str]]) -> None:
        super().__init__(f"{len(errors)} unrepresentable values")
        self.errors = errors


def _bounded_object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    if len(pairs) > MAX_OBJECT_MEMBERS:
        raise MalformedJSON(f"holds an object of more than {MAX_OBJECT_MEMBERS} members")
    return dict(pairs)


def _reject_constant(name: str) -> Any:
    raise MalformedJSON(f"is not valid JSON: {name} is not a JSON value")


def _path_text(path: tuple | None) -> str:
    """A field path kept as (parent, key) links, joined only when a problem needs naming."""
    keys: list[str] = []
    while path is not None:
        path, key = path
        keys.append(key.encode("utf-8", "backslashreplace").decode("ascii") if type(key) is str else str(key))
    return ".".join(reversed(keys)) or "body"


def _check_tree(document: Any, max_depth: int) -> dict[str, list[str]]:
    """Walk the document without recursion: refuse depth beyond max_depth, collect unrepresentable values."""
    problems: dict[str, list[str]] = {}

    def check_scalar(value: Any, path: tuple | None) -> None:
        if type(value) is float and not math.isfinite(value):
            message = NOT_FINITE
        elif type(value) is str and _SURROGATE.search(value):
            message = SURROGATE
        else:
            return
        if len(problems) < MAX_VALUE_PROBLEMS:
            problems.setdefault(_path_text(path), []).append(message)

    check_scalar(document, None)
    stack: list[tuple[Any, int, tuple | None]] = [(document, 1, None)] if type(document) in (dict, list) else []
    while stack:
        container, depth, path = stack.pop()
        if depth > max_depth:
            raise MalformedJSON(f"is nested deeper than {max_depth} levels")
        if type(container) is dict:
            for key in container:
                if _SURROGATE.search(key):
                    check_scalar(key, (path, key))
            items = container.items()
        else:
            items = enumerate(container)
        for key, value in items:
            kind = type(value)
            if (kind is dict or kind is list) and value:  # empty containers add no depth worth walking
                stack.append((value, depth + 1, (path, key)))
            elif kind is str or kind is float:
                check_scalar(value, (path, key))
    return problems


def _deeper_than(outside_strings: bytes, max_depth: int) -> bool:
    """Whether valid JSON, its strings dropped, nests containers deeper than max_depth.

    Everything but brackets is dropped, then the innermost pairs once per level (a non-overlapping replace
    removes exactly one level): a few C-speed passes, not a walk of every value.
    """
    structure = outside_strings.translate(_BRACKETS_ONLY, _NOT_BRACKETS)
    for _ in range(max_depth):
        if not structure:
            return False
        structure = structure.replace(b"[]", b"")
    return bool(structure)


def load_untrusted_json(raw: bytes | str, *, max_depth: int) -> Any:
    """Parse and bound a JSON document (UTF-8) from outside; raises MalformedJSON or UnrepresentableJSON."""
    infinite: list[str] = []

    def bounded_float(text: str) -> float:
        value = float(text)
        if not math.isfinite(value):
            infinite.append(text)
        return value

    try:
        text = raw.decode("utf-8") if isinstance(raw, bytes | bytearray) else raw
        # Outside its strings valid JSON is ASCII; anything else fails json.loads below anyway.
        outside_strings = _STRING.sub("", text).encode("ascii", "replace")
        if _LONG_INTEGER.search(outside_strings):
            raise MalformedJSON(f"holds a number of more than {MAX_INTEGER_DIGITS} digits")
        document = json.loads(text, parse_constant=_reject_constant, parse_float=bounded_float,
                              object_pairs_hook=_bounded_object)
    except MalformedJSON:
        raise
    except RecursionError:
        raise MalformedJSON(f"is nested deeper than {max_depth} levels") from None
    except json.JSONDecodeError as error:
        raise MalformedJSON(f"is not valid JSON: {error.msg} at line {error.lineno} column {error.colno}") from None
    except (UnicodeDecodeError, ValueError):
        raise MalformedJSON("is not valid JSON: not UTF-8 JSON") from None
    if type(document) in (dict, list) and _deeper_than(outside_strings, max_depth):
        raise MalformedJSON(f"is nested deeper than {max_depth} levels")
    if infinite or _ESCAPED_SURROGATE.search(text):  # rare: only then walk every value to name the paths
        problems = _check_tree(document, max_depth)
        if problems:
            raise UnrepresentableJSON(problems)
    return document


def parse_ascii_int(text: str | None, *, max_digits: int = 18) -> int | None:
    """An integer written in ASCII digits (optional sign, surrounding whitespace), or None for anything else.

    `str.isdigit()` and `int()` accept digits of every script (superscripts, Arabic-Indic digits, ...); numbers
    from outside must not.
    """
    if text is None:
        return None
    text = text.strip()
    if not _ASCII_INTEGER.match(text) or len(text.lstrip("+-")) > max_digits:
        return None
    return int(text)
