"""Our errors: problems the operator can fix, each a sentence that names what was wrong."""

from __future__ import annotations

from pathlib import Path


class OutagemonError(Exception):
    """Base of every error outagemon raises on purpose; str() is the user-facing text."""


class ConfigError(OutagemonError):
    """One or more problems in the configuration; each is a complete sentence."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = list(problems)
        super().__init__("\n".join(self.problems))


class TopologyError(ConfigError):
    """Problems in the topology or subscribers file."""


# Bytes of a file read_text reads (and decodes) at a time: a topology of 4.3 MiB
# decoded at once held the interpreter's lock, and a reload's event loop beside it, for
# 8.2 ms (thread CPU, load 2).
READ_PIECE = 1 << 18


def read_text(path: Path, error: type[ConfigError] = ConfigError, encoding: str = "utf-8") -> str:
    """A file an operator wrote, or `error` with one sentence saying why it cannot be read."""
    try:
        with path.open(encoding=encoding) as f:
            f._CHUNK_SIZE = READ_PIECE  # type: ignore[attr-defined]  # CPython's, settable
            pieces = []
            # A quarter as many characters: a read asks for as many bytes as it guesses
            # they take (up to 4 each in UTF-8), more than the chunk's size if more.
            while piece := f.read(READ_PIECE // 4):
                pieces.append(piece)
            return "".join(pieces)
    except FileNotFoundError:
        raise error([f"{path}: no such file."]) from None
    except UnicodeDecodeError as e:
        raise error([not_utf8(path, e)]) from None
    except OSError as e:
        raise error([f"{path}: cannot be read: {e}."]) from None


def not_utf8(path: Path, e: UnicodeDecodeError) -> str:
    """The sentence for a file that is not UTF-8: most often a spreadsheet's CSV export in
    Windows-1251, whose Cyrillic Python names only as "can't decode byte 0xf3"."""
    byte = f" (byte 0x{e.object[e.start]:02x} is no UTF-8 there)" if e.object else ""
    return (
        f"{path}: is not UTF-8 text{byte}; save it as UTF-8: an export or an editor "
        "may have written it in another encoding, such as Windows-1251 (`iconv -f "
        "cp1251 -t utf-8 FILE > NEW` converts it)."
    )


class DatabaseError(OutagemonError):
    """The database could not be reached, started or migrated."""


class MigrationError(DatabaseError):
    """A migration file is malformed, or an applied one was changed."""
