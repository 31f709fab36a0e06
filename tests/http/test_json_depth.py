"""The JSON depth check decides like a parser would, whatever the strings hold, on bodies up to
the 8 MB limit (its speed is measured in bench/bench_json_depth.py, not here)."""

from __future__ import annotations

import json
import random

import pytest

from serve_app.http.middleware.body_guard import json_depth_exceeds

MAX_DEPTH = 16
MB = 1024 * 1024


def reference_depth(body: bytes) -> int | None:
    """The deepest nesting of a JSON text, byte by byte as a tokenizer reads it (the spec); None
    where no JSON tokenizer gets that far (a backslash outside a string, an unterminated one)."""
    depth = deepest = 0
    in_string = escaped = False
    for byte in body:
        if not in_string and byte == 0x5C:
            return None
        if in_string:
            if escaped:
                escaped = False
            elif byte == 0x5C:
                escaped = True
            elif byte == 0x22:
                in_string = False
        elif byte == 0x22:
            in_string = True
        elif byte in (0x5B, 0x7B):
            depth += 1
            deepest = max(deepest, depth)
        elif byte in (0x5D, 0x7D):
            depth -= 1
    return None if in_string else deepest


def nested(depth: int, inner: object = 1) -> object:
    value = inner
    for level in range(depth):
        value = [value] if level % 2 else {"k": value}
    return value


# Strings that look like structure: brackets, escaped quotes, escaped backslashes before quotes.
TRICKY = ["[[[{{{", '\\"[[[', "\\\\", '\\\\"', 'a\\\\\\"[{', '"]]]}}}', "\\u005b[", "}]"]


def test_brackets_inside_strings_of_an_8_mb_body_are_not_depth() -> None:
    filler = "".join(TRICKY) * (8 * MB // (2 * len("".join(TRICKY))))
    body = json.dumps({"texts": [filler, filler[::-1]], "labels": ["a"]}).encode()
    assert len(body) > 7 * MB
    assert json_depth_exceeds(body, MAX_DEPTH) is False
    # The same body with real nesting one level too deep, after all those strings.
    deep = json.dumps({"texts": [filler], "x": nested(MAX_DEPTH)}).encode()
    assert json_depth_exceeds(deep, MAX_DEPTH) is True
    at_limit = json.dumps({"texts": [filler], "x": nested(MAX_DEPTH - 1)}).encode()
    assert json_depth_exceeds(at_limit, MAX_DEPTH) is False


def test_many_shallow_brackets_and_deep_unterminated_nesting() -> None:
    # 8 MB of siblings: many brackets, never deep.
    assert json_depth_exceeds(b"[" + b"[]," * (8 * MB // 3) + b"[]]", MAX_DEPTH) is False
    # A parser recurses into unterminated nesting before it finds the end: deep all the same.
    assert json_depth_exceeds(b"[" * (8 * MB), MAX_DEPTH) is True
    assert json_depth_exceeds(b'{"a":' * 100_000, MAX_DEPTH) is True
    # Escaped quotes end nothing: the brackets after them are still inside the string.
    assert json_depth_exceeds(b'["' + b'\\"' * 1_000_000 + b"[" * 100 + b'"]', MAX_DEPTH) is False


def _random_json_text(rng: random.Random) -> bytes:
    pieces = ["[", "]", "{", "}", '"', "\\", "\\\\", '\\"', "a", ",", ":"]
    return "".join(rng.choice(pieces) for _ in range(rng.randint(0, 80))).encode()


def test_random_texts_are_decided_as_the_byte_by_byte_reference() -> None:
    rng = random.Random(28)
    compared = 0
    while compared < 5_000:
        body = _random_json_text(rng)
        deepest = reference_depth(body)
        if deepest is None:
            continue
        compared += 1
        for limit in (1, 2, 4):
            assert json_depth_exceeds(body, limit) is (deepest > limit), (body, limit)


@pytest.mark.parametrize("depth", [1, MAX_DEPTH - 1, MAX_DEPTH, MAX_DEPTH + 1, 200])
def test_valid_json_is_deep_exactly_when_it_nests_past_the_limit(depth: int) -> None:
    body = json.dumps({"texts": ['{[\\"' * 3], "n": nested(depth)}).encode()
    deepest = reference_depth(body)
    assert deepest is not None and deepest == depth + 1
    assert json_depth_exceeds(body, MAX_DEPTH) is (deepest > MAX_DEPTH)
