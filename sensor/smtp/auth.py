"""AUTH outcomes (RFC 4954): what the final reply of an exchange means, and
the tally of a connection's exchanges.

``outcome(code, cancelled)`` names how one exchange ended:

* ``success``: a 2xx (235);
* ``cancelled``: the client answered a 334 with ``*`` (the server's 501 follows);
* ``failure``: the server judged the credentials and refused them (535, and
  any 5xx not below);
* ``temporary``: a 4xx (454 temporary authentication failure, 432 password
  transition needed);
* ``refused``: refused before any credential was judged (500/501/502 syntax,
  503 bad sequence or already authenticated, 504 unknown mechanism, 530, 534
  mechanism too weak, 538 encryption required);
* ``unanswered``: no final reply was seen (lost in a gap, or the connection ended).

``failure`` and ``temporary`` count as failures (``AuthTally.failures``): the
server was asked to check credentials and did not accept them, which is what
brute force and password spraying produce.  Nothing here holds a credential.
"""

from __future__ import annotations

__all__ = ["outcome", "OUTCOMES", "FAILED", "AuthTally",
           "SUCCESS", "CANCELLED", "FAILURE", "TEMPORARY", "REFUSED", "UNANSWERED"]

SUCCESS = "success"
CANCELLED = "cancelled"
FAILURE = "failure"
TEMPORARY = "temporary"
REFUSED = "refused"
UNANSWERED = "unanswered"
OUTCOMES = (SUCCESS, CANCELLED, FAILURE, TEMPORARY, REFUSED, UNANSWERED)
#: the outcomes counted as failed authentications
FAILED = frozenset((FAILURE, TEMPORARY))

#: 5xx codes that refuse the exchange itself, not the credentials
_REFUSED_CODES = frozenset((500, 501, 502, 503, 504, 530, 534, 538))


def outcome(code: int | None, cancelled: bool = False) -> str:
    """How an AUTH exchange ended, from its final reply code (see the module)."""
    if cancelled:
        return CANCELLED
    if code is None:
        return UNANSWERED
    if 200 <= code < 300:
        return SUCCESS
    if 400 <= code < 500:
        return TEMPORARY
    if code in _REFUSED_CODES:
        return REFUSED
    return FAILURE


class AuthTally:
    """The AUTH exchanges of one connection so far (``flow.auth`` for rules,
    the ``auth_*`` fields of the smtp record)."""

    __slots__ = ("attempts", "failures", "mechanism", "result", "code", "success")

    def __init__(self) -> None:
        self.attempts = 0              #: exchanges ended (any outcome)
        self.failures = 0              #: exchanges whose outcome is in FAILED
        self.mechanism: str | None = None   #: mechanism of the last exchange
        self.result: str | None = None      #: outcome of the last exchange
        self.code: int | None = None        #: final reply code of the last exchange
        self.success = False           #: an exchange succeeded: the client is authenticated

    def add(self, ev) -> None:
        """Count one ``AuthEvent``."""
        self.attempts += 1
        self.mechanism = ev.mechanism
        self.result = ev.outcome
        self.code = ev.code
        if ev.outcome in FAILED:
            self.failures += 1
        elif ev.outcome == SUCCESS:
            self.success = True

    def fields(self) -> dict:
        """The smtp record's ``auth_*`` fields (empty when no exchange ended)."""
        if not self.attempts:
            return {}
        out = {"auth_success": self.success, "auth_result": self.result,
               "auth_attempts": self.attempts, "auth_failures": self.failures}
        if self.mechanism:
            out["auth_mechanism"] = self.mechanism
        if self.code is not None:
            out["auth_code"] = self.code
        return out

    def __repr__(self):
        return (f"<AuthTally {self.attempts} attempts, {self.failures} failures, "
                f"last {self.mechanism} {self.result}>")
