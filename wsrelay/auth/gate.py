# -*- test-case-name: tests.test_auth -*-
"""
Asking a route's authorizer about a request before any backend is
contacted (L{authorize}), and what its answer does: a L{Deny} becomes the
client's HTTP response, an L{Allow} gives the upstream request its header
fields (L{withHeaders}) and may close the connection when the client's
credentials expire (L{closeAtExpiry}).  Anything else, an error or a
timeout included, refuses the client with 503: nothing is ever allowed by
an error.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from http import HTTPStatus
from typing import TYPE_CHECKING, Any

from twisted.internet.defer import CancelledError, Deferred, TimeoutError, maybeDeferred
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from wsrelay.interfaces import Allow, AuthRequest, Deny, IAuthorizerContext
from wsrelay.ws.handshake import CLAIMED, FORWARDING, NOT_FORWARDED, Head
from wsrelay.ws.screening import Refused

if TYPE_CHECKING:
    from twisted.internet.interfaces import IDelayedCall, IReactorTime

    from wsrelay.interfaces import ConnectionInfo, IAuthorizer
    from wsrelay.roles import LiveSession

#: A header field name (RFC 9110 5.1: a token).
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+\Z")

#: Characters no field value may hold: controls but tab.
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")

#: Names an L{Allow} may not set: the relay writes them itself, or drops
#: them from clients.
_RESERVED = NOT_FORWARDED | FORWARDING | CLAIMED

#: Fields of a L{Deny} that the relay writes itself in every response.
_FRAMING = frozenset(
    {"connection", "content-length", "date", "keep-alive", "server", "te"}
    | {"trailer", "transfer-encoding", "upgrade"}
)

#: The client's answer when the authorizer failed, timed out or answered
#: something that is neither L{Allow} nor a valid L{Deny}.
UNAVAILABLE = Refused(503, "Service Unavailable", body=b"authorization unavailable\n")

#: The reason of the close frame sent when the credentials expire.
EXPIRED = b"token expired"

log = Logger()


@implementer(IAuthorizerContext)
@dataclass(frozen=True)
class AuthorizerContext:
    """
    What the relay lends an authorizer it builds (L{IAuthorizerContext}).
    """

    reactor: Any
    route: str
    directory: str


class BadAnswer(ValueError):
    """
    An authorizer answered something the relay cannot use.
    """


def authRequest(method: str, info: ConnectionInfo, route: str) -> AuthRequest:
    """
    @param method: The request method.
    @param info: What a balancer would know of the connection.
    @param route: The route's name.
    @return: What the authorizer sees of the request.
    """
    return AuthRequest(
        method, info.path, info.query, info.headers, info.cookies, info.peer, route
    )


def _checkFields(fields: Sequence[tuple[str, str]], what: str) -> None:
    """
    @raise BadAnswer: When a name is not a token or a value holds a control
        character.
    """
    for pair in fields:
        name, value = pair
        if not isinstance(name, str) or not _TOKEN.match(name):
            raise BadAnswer(f"{what}: bad header name {name!r}")
        if not isinstance(value, str) or _CONTROL.search(value):
            raise BadAnswer(f"{what}: bad value of header {name!r}")


def judge(answer: object) -> Allow:
    """
    @return: C{answer}, an L{Allow} whose header fields may be set on the
        upstream request.
    @raise Refused: With the response of a L{Deny}.
    @raise BadAnswer: When C{answer} cannot be used.
    """
    if isinstance(answer, Deny):
        if not isinstance(answer.status, int) or not 300 <= answer.status <= 599:
            raise BadAnswer(f"deny: status {answer.status!r} is not 300 to 599")
        headers = [(n, v) for n, v in answer.headers if n.lower() not in _FRAMING]
        _checkFields(headers, "deny")
        if not isinstance(answer.body, bytes):
            raise BadAnswer("deny: the body is not bytes")
        raise Refused(answer.status, _phrase(answer.status), headers, answer.body)
    if not isinstance(answer, Allow):
        raise BadAnswer(f"neither Allow nor Deny: {type(answer).__name__}")
    _checkFields(answer.headers, "allow")
    for name, _ in answer.headers:
        if "_" in name or name.lower() in _RESERVED:
            raise BadAnswer(f"allow: header {name!r} is the relay's own")
    if answer.expires is not None and not isinstance(answer.expires, (int, float)):
        raise BadAnswer(f"allow: expires {answer.expires!r} is not a number")
    return answer


def _phrase(status: int) -> str:
    """
    @return: The reason phrase of C{status}.
    """
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"


def authorize(
    authorizer: IAuthorizer,
    request: AuthRequest,
    timeout: float,
    clock: IReactorTime,
    name: str,
) -> Deferred[Allow]:
    """
    Ask C{authorizer} about C{request} within C{timeout} seconds.

    @param name: The authorizer's name, for the log.
    @return: A L{Deferred} that fires with the L{Allow}, or fails with the
        L{Refused} the client gets: the L{Deny}'s response, or 503 (logged
        in one line) when the authorizer failed, timed out or answered
        something else.
    """
    d: Deferred[Any] = maybeDeferred(authorizer.authorize, request)
    d.addTimeout(timeout, clock)
    d.addCallback(judge)

    def failed(f: Failure) -> Failure:
        if f.check(Refused, CancelledError):
            # A refusal, or the question withdrawn (withdrawOnClose).
            return f
        why = f"timed out after {timeout:g} s" if f.check(TimeoutError) else None
        if why is None:
            why = " ".join(f"{type(f.value).__name__}: {f.value}".split())[:300]
        log.error(
            "route {route}: authorizer {auth} failed, 503 sent: {why}",
            route=request.route,
            auth=name,
            why=why,
        )
        return Failure(UNAVAILABLE)

    return d.addErrback(failed)


def withdrawOnClose(frontend: Any, decision: Deferred[Any]) -> None:
    """
    Cancel C{decision} (an authorizer's, from L{authorize}) if the client's
    connection closes before it is made: the C{http} authorizer's request
    is aborted then, rather than left to run to C{auth_timeout} for a
    client that is gone (and a client cannot keep many of them going by
    connecting and leaving).
    """
    closed = frontend.is_closed
    if closed is None or closed.called:
        return

    def withdraw(leg: object) -> object:
        # Also when called but waiting on another Deferred (the request
        # sent, no answer yet): cancel() cancels that one; it does nothing
        # once the decision was made.
        decision.cancel()
        return leg

    closed.addCallback(withdraw)


def withHeaders(
    head: Head, headers: Sequence[tuple[str, str]], removed: Sequence[str] = ()
) -> Head:
    """
    @return: C{head} with C{headers} set: the fields it had of the same
        names (case-insensitive), or of a name in C{removed}, are removed,
        the new ones appended.
    """
    if not headers and not removed:
        return head
    names = {n.lower() for n, _ in headers} | {n.lower() for n in removed}
    kept = tuple((n, v) for n, v in head.headers if n.lower() not in names)
    return Head(head.startLine, kept + tuple(headers))


def closeAtExpiry(
    session: LiveSession, expires: float, clock: IReactorTime
) -> IDelayedCall:
    """
    Close C{session}'s client with 1008 (and its upstream) at C{expires},
    unless the session ended before.

    @return: The timer, cancelled when the session ends.
    """
    delay = max(0.0, expires - clock.seconds())
    call = clock.callLater(delay, session.shutdown, 1008, EXPIRED)

    def ended(result: object) -> object:
        if call.active():
            call.cancel()
        return result

    session.done.addBoth(ended)
    return call
