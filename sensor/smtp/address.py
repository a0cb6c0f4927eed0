"""MAIL FROM / RCPT TO parameters: address and ESMTP parameters.

Lenient like a real MTA, strict in what it reports: every deviation from
RFC 5321 4.1.2 is returned as an anomaly name with a detail, the address is
extracted whenever there is one, and no input raises.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from sensor.smtp import anomalies as A

__all__ = ["ParsedPath", "parse_path"]

_PARAM_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9-]*\Z")


@dataclass(frozen=True, slots=True)
class ParsedPath:
    address: str | None
    params: tuple[tuple[str, str | None], ...]
    problems: tuple[tuple[str, str], ...]   #: (anomaly name, detail)


def parse_path(parameter: str, keyword: str) -> ParsedPath:
    """Parse the parameter of MAIL (``keyword="FROM"``) or RCPT (``keyword="TO"``).

    ``"FROM:<a@b> SIZE=10"`` -> address ``"a@b"``, params ``(("SIZE", "10"),)``.
    ``"FROM:<>"`` is the null sender (address ``""``).  Source routes
    (``<@x,@y:a@b>``) are dropped from the address.
    """
    problems: list[tuple[str, str]] = []
    rest = parameter.lstrip(" \t")
    head = rest[: len(keyword) + 1]
    if head.upper() != keyword + ":":
        # Tolerate "FROM <a@b>" / "TO a@b" (keyword without colon), report it.
        word = rest[: len(keyword)]
        if word.upper() == keyword and rest[len(keyword):len(keyword) + 1] in (" ", "\t", "<"):
            rest = rest[len(keyword):]
        else:
            problems.append((A.INVALID_MAIL_SYNTAX, f"no {keyword}: in '{A.excerpt(parameter)}'"))
            return ParsedPath(None, (), tuple(problems))
        problems.append((A.INVALID_MAIL_SYNTAX, f"{keyword} without colon"))
    else:
        rest = rest[len(keyword) + 1:]
    rest = rest.lstrip(" \t")

    if rest.startswith("<"):
        end = rest.find(">")
        if end < 0:
            problems.append((A.MISSING_ANGLE_BRACKETS, "no closing '>'"))
            token, _, tail = rest[1:].partition(" ")
            address = token
        else:
            address = rest[1:end]
            tail = rest[end + 1:]
    else:
        token, _, tail = rest.partition(" ")
        address = token
        if token:
            problems.append((A.MISSING_ANGLE_BRACKETS, f"address '{A.excerpt(token)}' not in <...>"))

    # Source route: "@a,@b:user@c" -> "user@c" (RFC 5321 4.1.2, obsolete).
    if address.startswith("@") and ":" in address:
        address = address.split(":", 1)[1]

    if address == "" and keyword == "TO":
        problems.append((A.ADDRESS_WITHOUT_DOMAIN, "empty recipient"))
    elif address and "@" not in address and not (
            keyword == "TO" and address.lower() == "postmaster"):
        problems.append((A.ADDRESS_WITHOUT_DOMAIN, f"address '{A.excerpt(address)}' has no @domain"))
    elif address.endswith("@") or address.startswith("@"):
        problems.append((A.ADDRESS_WITHOUT_DOMAIN, f"address '{A.excerpt(address)}' is incomplete"))

    params: list[tuple[str, str | None]] = []
    for item in tail.split():
        key, eq, value = item.partition("=")
        if not _PARAM_RE.match(key):
            problems.append((A.INVALID_ESMTP_PARAMETER, f"'{A.excerpt(item)}'"))
            continue
        params.append((key.upper(), value if eq else None))
    return ParsedPath(address, tuple(params), tuple(problems))
