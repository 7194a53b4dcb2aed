"""The one JSON reader for everything from outside, and ASCII integers: each bound just under and just over."""

from __future__ import annotations

import json

import pytest

from gateway.safejson import (
    MAX_INTEGER_DIGITS,
    MAX_OBJECT_MEMBERS,
    MalformedJSON,
    UnrepresentableJSON,
    load_untrusted_json,
    parse_ascii_int,
)


def nested(depth: int) -> str:
    """Alternating objects and arrays, `depth` containers deep."""
    text = "1"
    for level in range(depth):
        text = f'{{"k": {text}}}' if level % 2 else f"[{text}]"
    return text


@pytest.mark.parametrize("depth", [1, 2, 31, 32])
def test_nesting_up_to_the_limit_is_read(depth):
    assert load_untrusted_json(nested(depth), max_depth=32) is not None


@pytest.mark.parametrize(("text", "max_depth"), [
    (nested(33), 32), ("[" * 1000 + "]" * 1000, 32), ("[" * 200_000 + "]" * 200_000, 32),
    ('{"a": [], "b": [[[]]]}', 3),  # empty containers count as levels too
])
def test_nesting_beyond_the_limit_is_refused(text, max_depth):
    with pytest.raises(MalformedJSON, match=f"nested deeper than {max_depth} levels"):
        load_untrusted_json(text, max_depth=max_depth)


def test_brackets_inside_strings_are_not_nesting():
    assert load_untrusted_json(json.dumps({"s": "[[[[" * 100 + '\\"' + "{{{{"}), max_depth=1)


def test_numbers_of_too_many_digits_are_refused_before_conversion():
    assert load_untrusted_json("1" * MAX_INTEGER_DIGITS, max_depth=2) == int("1" * MAX_INTEGER_DIGITS)
    with pytest.raises(MalformedJSON, match="more than 100 digits"):
        load_untrusted_json("[" + "1" * (MAX_INTEGER_DIGITS + 1) + "]", max_depth=2)
    assert load_untrusted_json(json.dumps(["1" * 5000]), max_depth=2) == ["1" * 5000]  # a string is no number


def test_objects_of_too_many_members_are_refused():
    assert len(load_untrusted_json(json.dumps({f"k{n}": n for n in range(MAX_OBJECT_MEMBERS)}), max_depth=2)) == 1000
    with pytest.raises(MalformedJSON, match="more than 1000 members"):
        load_untrusted_json(json.dumps({"x": {f"k{n}": n for n in range(MAX_OBJECT_MEMBERS + 1)}}), max_depth=3)


@pytest.mark.parametrize(("text", "path", "fragment"), [
    ('{"a": {"b": [1, 1e999]}}', "a.b.1", "finite"),
    ('{"a": "\\ud800"}', "a", "surrogate"),
    ('{"\\udc00": 1}', "\\udc00", "surrogate"),
    ("-1e999", "body", "finite"),
])
def test_values_nothing_can_store_are_named_by_path(text, path, fragment):
    with pytest.raises(UnrepresentableJSON) as caught:
        load_untrusted_json(text, max_depth=32)
    assert fragment in caught.value.errors[path][0]


def test_a_surrogate_pair_is_one_ordinary_character():
    assert load_untrusted_json('"\\ud83d\\ude00"', max_depth=1) == "\U0001f600"


@pytest.mark.parametrize("text", ["{", "NaN", "[Infinity]", b"\xff\xfe", "'a'"])
def test_what_is_not_json_is_malformed(text):
    with pytest.raises(MalformedJSON, match="not valid JSON"):
        load_untrusted_json(text, max_depth=32)


@pytest.mark.parametrize(("text", "expected"), [
    ("42", 42), (" -7 ", -7), ("+3", 3), ("0", 0), ("²", None), ("١٠", None), ("１０", None),  # noqa: RUF001
    ("4.2", None), ("", None), (None, None), ("1" * 19, None), ("1" * 18, int("1" * 18)),
])
def test_integers_from_outside_are_ascii_digits(text, expected):
    assert parse_ascii_int(text) == expected
