"""The one strict JSON loader for everything that parses JSON a stranger wrote.

HTTP account bodies, the JSON form of wire messages and contact files all come through
:func:`load_json`, so a hostile document meets the same limits everywhere. The standard
``json`` module alone lets through, or crashes with an untyped error on:

- deep nesting: the C scanner recurses and raises ``RecursionError`` (or, below the limit,
  hands later code a structure that recursion blows up on);
- huge integers: ``int`` conversion refuses 4,300+ digits with a bare ``ValueError``, and a
  few thousand digits still cost quadratic time whenever they are formatted again;
- lone surrogates: ``"\\ud800"`` decodes to a ``str`` that cannot be encoded back to UTF-8,
  so it fails far from the parser (a 500 with a traceback);
- ``NaN``/``Infinity`` and overflowing floats, which are not JSON and not comparable;
- duplicate keys, which different parsers resolve differently (first or last wins).

Normal bodies pay little for the checks that catch these: each has a cheap C-speed trigger
(more than ``max_depth`` brackets, a run of digits longer than an integer may be, any
backslash) and runs its exact check only when the trigger fires. Messages never quote the
input.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any, Final

from contactmatch.errors import InvalidInput

__all__ = ["MAX_DEPTH", "MAX_INT_DIGITS", "MAX_NUMBER_CHARS", "load_json"]

#: Deepest nesting accepted (``[]`` is depth 1). Our documents are 1 to 4 levels deep.
MAX_DEPTH: Final = 32
#: Longest integer accepted, in digits: int64 has 19; wire integers are u32.
MAX_INT_DIGITS: Final = 20
#: Longest float literal accepted: 17 significant digits and an exponent fit easily.
MAX_NUMBER_CHARS: Final = 40

# The digit trigger: map digits to "0" and every other byte to " ", then look for a run.
# UTF-8 never puts an ASCII byte inside a multi-byte sequence, so bytes are enough.
_DIGITS: Final = bytes(0x30 if 0x30 <= b <= 0x39 else 0x20 for b in range(256))
_LONG_RUN: Final = b"0" * (MAX_INT_DIGITS + 1)
# The exact depth scan keeps only the bytes that delimit strings and containers, and folds
# objects into arrays (the depth is the same).
_STRUCTURE: Final = bytes.maketrans(b"{}", b"[]")
_NOT_STRUCTURE: Final = bytes(b for b in range(256) if b not in b'"[]{}')
_SURROGATE: Final = re.compile("[\ud800-\udfff]")


def _more_than(raw: bytes, needles: tuple[bytes, ...], limit: int) -> bool:
    """Whether ``raw`` holds more than ``limit`` of the one-byte ``needles`` (memchr speed)."""
    seen = 0
    for needle in needles:
        at = raw.find(needle)
        while at >= 0:
            seen += 1
            if seen > limit:
                return True
            at = raw.find(needle, at + 1)
    return False


def _too_deep(raw: bytes, limit: int) -> bool:
    """Whether any value in ``raw`` nests deeper than ``limit``: exact for valid JSON, with
    no recursion and at most ``limit`` passes of C-speed ``bytes`` operations.

    For invalid JSON the answer only has to be safe: False means the parser cannot recurse
    deeper than ``limit`` before it finds the error.
    """
    if b"\\" in raw:
        # In a run of backslashes the lexer pairs them from the left, as bytes.replace does;
        # after this every '"' left opens or closes a string.
        raw = raw.replace(b"\\\\", b"").replace(b'\\"', b"")
    skeleton = raw.translate(_STRUCTURE, _NOT_STRUCTURE).replace(b'""', b"")
    if b'"' in skeleton:  # brackets quoted in strings do not nest
        skeleton = b"".join(skeleton.split(b'"')[::2])
    # Each pass removes every innermost pair, so it lowers the deepest point by exactly one.
    passes = 0
    while passes < limit and b"[]" in skeleton:
        skeleton = skeleton.replace(b"[]", b"")
        passes += 1
    return passes + skeleton.count(b"[") > limit


def _object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        raise InvalidInput("a JSON object repeats a key")
    return obj


def _int(literal: str) -> int:
    if len(literal.lstrip("-")) > MAX_INT_DIGITS:
        raise InvalidInput(f"a JSON integer has more than {MAX_INT_DIGITS} digits")
    return int(literal)


def _float(literal: str) -> float:
    if len(literal) > MAX_NUMBER_CHARS:
        raise InvalidInput(f"a JSON number is longer than {MAX_NUMBER_CHARS} characters")
    value = float(literal)
    if not math.isfinite(value):
        raise InvalidInput("a JSON number is out of range")
    return value


def _constant(_literal: str) -> Any:
    raise InvalidInput("NaN and Infinity are not JSON")


def _has_lone_surrogate(value: Any) -> bool:
    """Whether any string (key or value) in a parsed document holds a surrogate code point.

    ``json`` joins an escaped surrogate *pair* into one character, so any surrogate left is a
    lone one. Iterative: the depth is already bounded, but a stack costs nothing here.
    """
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            if _SURROGATE.search(item):
                return True
        elif isinstance(item, dict):
            stack.extend(item)
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return False


def load_json(
    data: str | bytes | bytearray | memoryview,
    *,
    error: type[InvalidInput] = InvalidInput,
    max_depth: int = MAX_DEPTH,
) -> Any:
    """Parse one JSON document from an untrusted source, strictly.

    Args:
        data: the document: ``str``, or UTF-8 bytes (no other encoding, no encoded
            surrogates).
        error: the subclass of :class:`InvalidInput` to raise, so each caller keeps its own
            stable error code (``MalformedMessage`` for wire messages, for instance).
        max_depth: deepest nesting accepted.

    Returns:
        The parsed value; every string in it is encodable as UTF-8, every number finite.

    Raises:
        InvalidInput: (as ``error``) for anything that is not such a document: bad syntax or
            encoding, nesting deeper than ``max_depth``, an integer longer than
            :data:`MAX_INT_DIGITS` digits, a non-finite number, a lone surrogate, a repeated
            key. The message names the rule, never the input.
    """
    if isinstance(data, str):
        try:
            raw = data.encode("utf-8")
        except UnicodeEncodeError:  # only a surrogate code point cannot be encoded
            raise error("JSON text holds a lone surrogate") from None
        text = data
    elif isinstance(data, bytes | bytearray | memoryview):
        raw = bytes(data)
        try:
            text = raw.decode("utf-8")  # strict: refuses encoded surrogates, unlike json's
        except UnicodeDecodeError:
            raise error("JSON must be UTF-8") from None
    else:
        raise error("JSON must be text or bytes")
    # Each exact check runs only when its trigger fires: a normal body pays a few memchr
    # passes and one translate.
    if _more_than(raw, (b"[", b"{"), max_depth) and _too_deep(raw, max_depth):
        raise error(f"JSON nests deeper than {max_depth} levels")
    try:
        value = json.loads(
            text,
            object_pairs_hook=_object,
            parse_float=_float,
            parse_constant=_constant,
            # The hook costs a call per integer; only documents with a long digit run pay it.
            parse_int=_int if _LONG_RUN in raw.translate(_DIGITS) else None,
        )
    except InvalidInput as exc:
        raise error(str(exc)) from None
    except (ValueError, RecursionError):
        # JSONDecodeError's message quotes a position only, but one fixed message is enough.
        raise error("not valid JSON") from None
    # Only a "\\u" escape can make a surrogate in text that was valid UTF-8.
    if b"\\" in raw and _has_lone_surrogate(value):
        raise error("a JSON string holds a lone surrogate")
    return value
