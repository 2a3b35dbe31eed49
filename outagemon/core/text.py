"""Text that cannot be stored or spoken: C0 control characters and lone surrogates.

PostgreSQL refuses a NUL byte in text, and a lone surrogate cannot be encoded as UTF-8
at all: one such value in a CRM export or a note used to get a whole write refused (or
the writer killed). They are found here, where the value comes in, with a sentence.
"""

from __future__ import annotations

import re

# C0 controls and DEL, and the surrogate range (only ever alone in a str).
_BAD = re.compile("[\x00-\x1f\x7f\ud800-\udfff]")
_BAD_MULTILINE = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\ud800-\udfff]")  # tabs, lines
_NAMES = {"\x00": "a NUL byte", "\t": "a tab", "\n": "a line break", "\r": "a carriage return"}


def bad_character(text: str, multiline: bool = False) -> str | None:
    """None when the text is fine; else what is wrong, as part of a sentence
    ("a NUL byte (U+0000) at character 4"). `multiline` lets tabs and line breaks
    through (an engineer's note)."""
    m = (_BAD_MULTILINE if multiline else _BAD).search(text)
    if m is None:
        return None
    char = m.group()
    code = ord(char)
    surrogate = 0xD800 <= code <= 0xDFFF
    what = "a lone surrogate" if surrogate else _NAMES.get(char, "a control character")
    return f"{what} (U+{code:04X}) at character {m.start() + 1}"
