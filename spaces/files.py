"""Reading the text files a spec names (the spec itself, calibration files) as checked UTF-8.

A binary file, or text in another encoding, is refused in one line naming the file and the byte
offset of the first byte that is not UTF-8, never with a decoder's traceback.
"""

from __future__ import annotations

from pathlib import Path

from .errors import MpsearchError

MAX_FILE_BYTES = 1 << 30  # read no more than this of any one file (1 GiB)


def read_text_file(path: Path, what: str, error: type[MpsearchError]) -> str:
    """The UTF-8 text of ``path`` (a ``what``: "job spec", "calibration file"); ``error`` if not."""
    try:
        with path.open("rb") as f:
            data = f.read(MAX_FILE_BYTES + 1)
    except OSError as exc:
        raise error(f"{path}: cannot read {what}: {exc.strerror or exc}") from None
    except ValueError as exc:  # a NUL in the path
        raise error(f"{str(path)!r}: cannot read {what}: {exc}") from None
    if len(data) > MAX_FILE_BYTES:
        raise error(f"{path}: {what} is larger than {MAX_FILE_BYTES >> 20} MiB")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise error(f"{path}: {what} is not UTF-8 text: byte 0x{data[exc.start]:02x} at offset "
                    f"{exc.start} cannot be decoded (save it as UTF-8)") from None
