"""Reading the runs an ingest body names from its raw bytes, one bounded slice per step.

Decoding a body whole builds every event as Python objects: 20 MiB of empty events took 700 MB
and held the event loop for seconds. This reader keeps no per-event object: it looks for the
keys that name runs (INGEST_ID_KEYS, in any JSON spelling) and reads only their values.

It rests on one fact of JSON: outside strings there is no quote, and inside one every quote is
escaped. So a quoted id key followed by a colon is found wherever it stands, at any depth and in
any layout of events (a bare event, nested lists: reading more than Lunary does only costs a
refetch), and a match that starts at an escaped quote inside a string ends where that string
does, hiding nothing after it. A body Lunary accepted is JSON if it opens like JSON in UTF-8;
one that does not (compressed, protobuf, a form, UTF-16), an id value it cannot map exactly as
Lunary does, or more than MAX_RUNS ids raise UnreadableBody, for the caller to fail safe.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from enum import StrEnum

import orjson

from proxy.core.runs import INGEST_ID_KEYS, INGEST_KEY_SEPARATORS, filed_run_id, ingest_key

STEP_BYTES = 16 * 1024  # one step: at most a few milliseconds of CPU, whatever the bytes
MAX_RUNS = 1_000  # distinct id values per body; more is unreadable (a cut: O(1), not O(ids))
MAX_ID_LENGTH = 256  # bytes or escapes of an id value as spelled; a longer one is unreadable
MAX_GAP = 64  # whitespace around a key's colon; more is unreadable
MAX_SAFE_INTEGER = 2**53  # Lunary is JavaScript: beyond this a number is not read exactly
MAX_SEPARATORS = 4  # between two letters of an id key (run_id); the pattern's length is bounded


class Unreadable(StrEnum):
    """Why a body could not be read exactly: a stable token for logs (and metrics)."""

    NOT_JSON = "not_json"  # protobuf, a form, UTF-16: not UTF-8 JSON
    ENCODED = "encoded"  # a Content-Encoding other than gzip and deflate, or a corrupt stream
    TOO_LARGE = "too_large"  # inflates past what Lunary reads (20 MiB)
    NOT_PROTOBUF = "not_protobuf"  # an OTLP export that is not protobuf as Lunary decodes it
    ID_VALUE = "id_value"  # an id key whose value cannot be read as Lunary reads it
    TOO_MANY_RUNS = "too_many_runs"
    TOO_MANY_FIELDS = "too_many_fields"  # an OTLP export of more fields than the proxy walks


class UnreadableBody(Exception):
    """The body may name runs this reader cannot tell exactly."""

    def __init__(self, reason: Unreadable) -> None:
        super().__init__(reason.value)
        self.reason = reason


def _character(char: str, escapes: bool) -> str:
    """A pattern for `char` as JSON may spell it inside a key, in either case (Lunary
    camelCases keys): itself, and with `escapes` a \\u escape in either hex case too."""
    spellings = {char.lower(), char.upper()}
    if not escapes:
        return "[" + "".join(re.escape(c) for c in sorted(spellings)) + "]"
    escaped = [
        "\\\\u" + "".join(f"[{d}{d.upper()}]" if d.isalpha() else d for d in f"{ord(c):04x}")
        for c in sorted(spellings)
    ]
    return "(?:" + "|".join([*(re.escape(c) for c in sorted(spellings)), *escaped]) + ")"


def _key(key: str, escapes: bool) -> str:
    """Every spelling of an id key Lunary would camelCase to it: any case, and separators
    (run_id, run-id) between its letters; looser than camelCase, and ingest_key decides."""
    separator = "|".join(_character(c, escapes) for c in INGEST_KEY_SEPARATORS)
    separator = f"(?:{separator}){{0,{MAX_SEPARATORS}}}"
    return separator.join(_character(char, escapes) for char in key)


def _pair(escapes: bool) -> re.Pattern[bytes]:
    """A quoted id key (every raw spelling of one) and, when it is followed by a colon, its
    value. What matches as a key is decoded and checked with ingest_key, so a looser pattern
    is safe; one that misses a spelling misses runs."""
    keys = "|".join(_key(key, escapes) for key in sorted(INGEST_ID_KEYS))
    gap = f"[ \\t\\r\\n]{{0,{MAX_GAP}}}"
    return re.compile(
        (
            f'"(?P<key>{keys})"(?:{gap}:{gap}(?P<value>'
            f'"(?P<plain>[^"\\\\]{{0,{MAX_ID_LENGTH}}})"'
            f'|"(?P<escaped>(?:[^"\\\\]|\\\\.){{0,{MAX_ID_LENGTH}}})"'
            # one digit more than 2**53 has, or a fraction or exponent: an inexact number
            f"|(?P<number>-?[0-9]{{1,{len(str(MAX_SAFE_INTEGER))}}})(?P<inexact>[.eE0-9])?"
            "|[tfn{\\[]"  # true, false, null, an object or a list: not an id
            "))?"
        ).encode()
    )


_PAIR = _pair(escapes=False)
_ID_KEYS_AS_SENT = frozenset(key.encode() for key in INGEST_ID_KEYS)
# keys spelled with escapes, for the slices that hold an escape of a printable ASCII character
# (JSON encoders write none unless asked to: Go's, for <, > and &)
_SPELLED_PAIR = _pair(escapes=True)
_ASCII_ESCAPE = re.compile(rb"\\u00[2-7]")
# no match is longer: each key character, and each separator after it, spelled as a 6-byte
# escape, each unit of an id as 2 bytes (an escape's backslash and the byte after it)
_LONGEST_KEY = max(6 * len(key) * (1 + MAX_SEPARATORS) for key in INGEST_ID_KEYS)
_LONGEST_PAIR = 2 + _LONGEST_KEY + 2 * MAX_GAP + 1 + 2 + 2 * MAX_ID_LENGTH
_OPENING = re.compile(rb"(?:\xef\xbb\xbf)?[ \t\r\n]{0,%d}+[\[{]" % MAX_GAP)
# after an id key with no readable value: a colon (or whitespace past MAX_GAP) makes it a key
_STILL_A_KEY = re.compile(rb"[ \t\r\n]{0,%d}+[: \t\r\n]" % MAX_GAP)
_OPENING_BYTES = 3 + MAX_GAP + 1
# held before a slice is read: the slice, the longest pair that starts in it, and what
# _STILL_A_KEY looks at after that pair
_SLICE_NEEDS = STEP_BYTES + _LONGEST_PAIR + MAX_GAP + 1


class IngestReader:
    """The runs one ingest body names: `run_ids`, as Lunary files them, once slices() is done.

    The body comes whole (bytes) or in pieces (an inflating stream): only the slice being read
    and what a pair may span past it are held, never the whole of a stream.
    """

    def __init__(self, body: bytes | Iterator[bytes]) -> None:
        self._pieces = iter((body,)) if isinstance(body, bytes) else body
        self._body = b""  # the bytes held: from the slice being read to what has come
        self._ended = False  # no more pieces to come
        self._pos = 0
        self._seen: set[bytes] = set()  # id values read, as spelled: at most MAX_RUNS
        self.run_ids: set[str] = set()

    def slices(self) -> Iterator[None]:
        """Read the body, STEP_BYTES per item: the caller may let other work run between.

        Raises UnreadableBody when the body may name runs this reader cannot tell.
        """
        self._take(_OPENING_BYTES)
        if not _OPENING.match(self._body):
            raise UnreadableBody(Unreadable.NOT_JSON)
        while self._take(_SLICE_NEEDS) > self._pos:
            self._read_slice()
            yield

    def _take(self, needed: int) -> int:
        """Hold `needed` bytes from the position on, or all that is left; their end."""
        while not self._ended and len(self._body) - self._pos < needed:
            piece = next(self._pieces, None)
            if piece is None:
                self._ended = True
            else:  # what was read is let go: a pair that starts after it is all that is kept
                self._body, self._pos = self._body[self._pos :] + piece, 0
        return len(self._body)

    def _read_slice(self) -> None:
        body, start = self._body, self._pos
        end = min(start + STEP_BYTES, len(body))
        # every pair that starts before `end` ends before `horizon`, so it is read whole
        horizon = min(end + _LONGEST_PAIR, len(body))
        if body.find(b"\0", start, horizon) >= 0:  # UTF-16, UTF-32 or binary
            raise UnreadableBody(Unreadable.NOT_JSON)
        pair = _SPELLED_PAIR if _ASCII_ESCAPE.search(body, start, horizon) else _PAIR
        seen = self._seen
        for match in pair.finditer(body, start, horizon):
            if match.start() >= end:
                break
            if match["value"] not in seen:  # most ids come again and again: skip at once
                self._read(match)
            self._pos = match.end()
        self._pos = max(self._pos, end)

    def _read(self, match: re.Match[bytes]) -> None:
        if match["key"] not in _ID_KEYS_AS_SENT and not _names_a_run(match["key"]):
            return
        value = match["value"]
        if value is None:
            if _STILL_A_KEY.match(self._body, match.end()):
                raise UnreadableBody(Unreadable.ID_VALUE)
            return  # a string value that spells an id key, not a key
        if len(self._seen) >= MAX_RUNS:
            raise UnreadableBody(Unreadable.TOO_MANY_RUNS)
        self._seen.add(value)  # true, false, null... too: at most a few such values
        text = _id_text(match)
        if text:  # Lunary files no run under an empty id
            self.run_ids.add(filed_run_id(text))


def _names_a_run(spelled_key: bytes) -> bool:
    """Whether a key spelled otherwise than an id key is one once decoded and normalised."""
    try:
        key = orjson.loads(b'"' + spelled_key + b'"')
    except orjson.JSONDecodeError:
        raise UnreadableBody(Unreadable.ID_VALUE) from None
    return isinstance(key, str) and ingest_key(key) in INGEST_ID_KEYS


def _id_text(match: re.Match[bytes]) -> str | None:
    """An id value as the text Lunary reads: a string decoded, an integer in decimal; None
    for true, false, null, an object or a list (no id, as ingest_targets reads them)."""
    if (number := match["number"]) is not None:
        if match["inexact"] is None and abs(int(number)) <= MAX_SAFE_INTEGER:
            return str(int(number))
    elif match["plain"] is match["escaped"] is None:
        return None
    else:
        try:
            if (plain := match["plain"]) is not None:
                return plain.decode()
            text = orjson.loads(b'"' + match["escaped"] + b'"')
            if isinstance(text, str):
                return text
        except ValueError:  # not UTF-8, or an escape JSON has not (both are ValueErrors)
            pass
    raise UnreadableBody(Unreadable.ID_VALUE)
