"""Reading a user's text files: UTF-8, with or without a byte-order mark, and a one-line error
naming the file when it is in another encoding (latin-1, UTF-16) instead of a decoder's message
that names none."""

from __future__ import annotations

from pathlib import Path


class TextEncodingError(ValueError):
    """A text file is not UTF-8."""


def read_text(path: str | Path) -> str:
    """The text of ``path`` decoded as UTF-8, a leading byte-order mark dropped.

    Raises:
        TextEncodingError: the bytes are not UTF-8 (naming the file and the first bad byte).
    """
    data = Path(path).read_bytes()
    return decode(data, path)


def decode(data: bytes, path: str | Path) -> str:
    """``data`` (the bytes of ``path``) as UTF-8 text without a byte-order mark."""
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        utf16 = data[:2] in (b"\xff\xfe", b"\xfe\xff")
        raise TextEncodingError(
            f"{path}: not UTF-8 text ({'UTF-16' if utf16 else err.reason} at byte {err.start}); "
            f"save it as UTF-8 (in most editors: Save as, encoding UTF-8)") from None
