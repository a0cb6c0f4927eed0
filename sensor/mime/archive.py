"""Member names of a zip archive (OOXML documents are zip archives too), with
the standard library's ``zipfile`` on the decoded octets kept in memory (at
most ``MimeLimits.archive``).  Only the central directory is read: nothing is
decompressed, so a zip bomb costs nothing here."""

from __future__ import annotations

import io
import zipfile

__all__ = ["zip_members"]


def zip_members(data: bytes, limit: int) -> tuple[str, ...] | None:
    """Up to ``limit`` member names, or None when ``data`` is not a readable zip."""
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as zf:
            names = []
            for info in zf.infolist():
                if len(names) >= limit:
                    break
                names.append(info.filename)
            return tuple(names)
    except (zipfile.BadZipFile, ValueError, OSError, EOFError, NotImplementedError):
        return None
