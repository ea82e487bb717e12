# -*- test-case-name: tests.test_admin -*-
"""
The admin listener's site: the checks and headers of every request (the
C{Host} a browser names, against DNS rebinding), and its log.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Sequence
from typing import TYPE_CHECKING

from twisted.logger import Logger
from twisted.web import http
from twisted.web.resource import IResource
from twisted.web.server import Request, Site

from wsrelay.admin.history import History
from wsrelay.admin.relay import RelayView
from wsrelay.admin.resources import READ, Refusal, adminRoot

if TYPE_CHECKING:
    from wsrelay.operations import RelayStatus


def hostAllowed(host: bytes | None, allowed: Sequence[str]) -> bool:
    """
    Whether the admin listener answers a request for C{host}.

    @param host: The request's C{Host} field, or L{None} without one (not
        a browser's request, so not a rebinding page's).
    @param allowed: The names of C{admin_hosts}, lower case.
    @return: Whether C{host} is exactly C{name[:port]} or
        C{[IPv6]:[port]} (no spaces, no user information), C{name} being
        an IP address, C{localhost} or one of C{allowed}, in any case.
    """
    if host is None:
        return True
    try:
        text = host.decode("ascii").lower()
    except UnicodeDecodeError:
        return False
    match = _HOST.fullmatch(text)
    if match is None:
        return False
    literal = match.group("literal")
    if literal is not None:
        try:
            ipaddress.IPv6Address(literal)
        except ValueError:
            return False
        return True
    name = match.group("name").removesuffix(".")
    if name == "localhost" or name in allowed:
        return True
    try:
        ipaddress.IPv4Address(name)
    except ValueError:
        return False
    return True


#: A C{Host} field as L{hostAllowed} accepts it: a name or IPv4 address,
#: or an IPv6 address in brackets, then an optional port.
_HOST = re.compile(
    r"(?:\[(?P<literal>[0-9a-f:.]+)\]|(?P<name>[a-z0-9._-]+))(?::[0-9]+)?"
)


#: The answer to a request for a name the listener does not answer for.
_UNKNOWN_HOST = Refusal(
    421,
    "unknown host: the admin listener answers for IP addresses,"
    " localhost and admin_hosts",
)


class AdminSite(Site):
    """
    The admin listener's site: no tracebacks in answers, and a structured
    log event for each action (a request other than C{GET} or C{HEAD},
    whatever its answer) and each failure (5xx), instead of an access-log
    line per request: a dashboard asks every second, a scraper every few,
    and a browser asks for C{/favicon.ico}.
    """

    noisy = False
    displayTracebacks = False

    def __init__(self, relay: RelayView) -> None:
        #: The samples of C{/history}, taken while the site listens.
        self.history = History(relay)
        super().__init__(adminRoot(relay, self.history))
        self._relay = relay
        # The namespace docs/admin.md names (a Logger class attribute would
        # take this module's).
        self.logger = Logger(namespace="wsrelay.admin.AdminSite", source=self)

    def startFactory(self) -> None:
        """
        Start sampling for C{/history}.
        """
        super().startFactory()
        self.history.start()

    def stopFactory(self) -> None:
        """
        Stop sampling for C{/history}.
        """
        self.history.stop()
        super().stopFactory()

    def getResourceFor(self, request: Request) -> IResource:
        """
        Label every answer, and find the page of a request for a name the
        listener answers for (L{hostAllowed}); else refuse it (421).
        """
        # Twisted set its own Server field before this is called: replaced,
        # so that no library versions are advertised.
        request.setHeader(b"server", b"wsrelay")
        request.setHeader(b"cache-control", b"no-store")
        request.setHeader(b"x-content-type-options", b"nosniff")
        resource: IResource = super().getResourceFor(request)
        if not hostAllowed(request.getHeader(b"host"), self._relay.adminHosts()):
            return _UNKNOWN_HOST
        return resource

    def log(self, request: http.Request) -> None:
        """
        Log C{request} when it was an action or failed.
        """
        if request.method in READ and request.code < 500:
            return
        self.logger.info(
            "admin {method} {path}: {code} from {peer}",
            method=request.method.decode("ascii", "replace"),
            path=request.uri.decode("ascii", "replace"),
            code=request.code,
            peer=getattr(request.getClientAddress(), "host", "?"),
        )


def adminSite(relay: RelayStatus) -> Site:
    """
    @return: The admin listener's site for C{relay}.
    """
    return AdminSite(RelayView(relay))
