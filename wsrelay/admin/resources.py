# -*- test-case-name: tests.test_admin -*-
"""
The admin listener's pages, a tree of L{Resource}s: C{/} (the dashboard),
C{/status}, C{/history}, C{/metrics}, C{/reload} and
C{/routes/ROUTE/backends/BACKEND/ACTION}.

Every page checks its method here, in L{Page.render}, and every action
(C{POST}) its bearer token, in L{authorize}.  The C{Host} check and the
headers common to every answer are the site's (L{wsrelay.admin.site}).
"""

from __future__ import annotations

import hmac
import json
from http import HTTPStatus
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

from prometheus_client.exposition import CONTENT_TYPE_LATEST
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.iweb import IRequest
from twisted.web.resource import IResource, Resource
from twisted.web.server import NOT_DONE_YET, Request

from wsrelay.admin.dashboard import dashboardFile
from wsrelay.admin.history import History
from wsrelay.admin.metrics import mergeMetrics, metricsText
from wsrelay.admin.rows import backendStatus, status, workerRows
from wsrelay.config import ConfigError

if TYPE_CHECKING:
    from wsrelay.admin.relay import RelayView

#: The actions on a backend, the last segment of their path.
ACTIONS = ("drain", "enable", "disable")

#: The methods of the pages that read, and of the actions.
READ: tuple[bytes, ...] = (b"GET", b"HEAD")
ACT: tuple[bytes, ...] = (b"POST",)

#: The pages' log, in the namespace it had before the package was split.
log = Logger(namespace="wsrelay.admin.AdminResource")


def jsonAnswer(request: Request, code: int, body: Any) -> bytes:
    """
    Answer C{request} with C{code} and C{body} as JSON.
    """
    # Twisted knows no phrase for some codes (421): Python's names them.
    request.setResponseCode(code, HTTPStatus(code).phrase.encode("ascii"))
    request.setHeader(b"content-type", b"application/json")
    return json.dumps(body).encode("utf-8") + b"\n"


def errorAnswer(request: Request, code: int, message: str) -> bytes:
    """
    Answer C{request} with C{code} and C{{"error": message}}.
    """
    return jsonAnswer(request, code, {"error": message})


def _later(request: Request, answer: Deferred[Any]) -> int:
    """
    Answer C{request} when C{answer} fires: with C{(code, body)} as JSON,
    or with bytes as they are.  Nothing is written to a client that went
    away.
    """
    gone: list[Failure] = []
    request.notifyFinish().addErrback(gone.append)

    def write(result: tuple[int, Any] | bytes) -> None:
        if gone:
            return
        request.write(
            result if isinstance(result, bytes) else jsonAnswer(request, *result)
        )
        request.finish()

    def failed(f: Failure) -> None:
        log.failure("admin: {path} failed", f, path=request.path)
        write((500, {"error": "failed; see the log"}))

    answer.addCallback(write).addErrback(failed)
    return NOT_DONE_YET


def authorize(request: Request, token: str | None) -> bytes | None:
    """
    Check an action's bearer token.

    @param token: The token of C{admin_token_file}, or L{None} without one.
    @return: L{None} when the request has the token, else the body of the
        refusal (403 without a token file, 401 without the header or with
        another token).
    """
    if token is None:
        return errorAnswer(request, 403, "admin actions are off: no admin_token_file")
    scheme, _, given = (request.getHeader(b"authorization") or b"").partition(b" ")
    if scheme.lower() != b"bearer" or not given.strip():
        request.setHeader(b"www-authenticate", b'Bearer realm="wsrelay"')
        return errorAnswer(request, 401, "a bearer token is required")
    if not hmac.compare_digest(given.strip(), token.encode("utf-8")):
        request.setHeader(
            b"www-authenticate", b'Bearer realm="wsrelay", error="invalid_token"'
        )
        return errorAnswer(request, 401, "wrong token")
    return None


class Refusal(Resource):
    """
    An answer with a status code and a JSON error, whatever the method.
    """

    isLeaf = True

    def __init__(self, code: int, message: str) -> None:
        super().__init__()
        self._code = code
        self._message = message

    def render(self, request: Request) -> bytes:
        """
        Answer with the code and the error.
        """
        return errorAnswer(request, self._code, self._message)


NOT_FOUND = Refusal(404, "no such page")


def _segment(raw: bytes) -> str | None:
    """
    @return: A path segment as the pages name it (percent-escapes decoded
        once more than by the site, as UTF-8), or L{None} when it is not
        ASCII or not UTF-8.
    """
    try:
        return unquote(raw.decode("ascii"), errors="strict")
    except UnicodeDecodeError:
        return None


class Node(Resource):
    """
    A place in the tree: its children are named by decoded path segment
    (L{putChild} with the name in UTF-8, or L{named}), and it answers 404
    itself.
    """

    def __init__(self, relay: RelayView) -> None:
        super().__init__()
        self._relay = relay

    def getChildWithDefault(self, path: bytes, request: IRequest) -> IResource:
        """
        @return: The child named by C{path} decoded, or the 404 answer.
        """
        name = _segment(path)
        if name is None:
            return NOT_FOUND
        child = self.children.get(name.encode("utf-8"))
        return self.named(name) if child is None else child

    def named(self, name: str) -> IResource:
        """
        @return: The child C{name} that is not in C{children}: none.
        """
        return NOT_FOUND

    def render(self, request: Request) -> bytes | int:
        """
        Answer 404: this is no page.
        """
        return NOT_FOUND.render(request)


class Page(Node):
    """
    A page: answers the methods of L{methods}, an action (C{POST}) only
    with the bearer token; no children.

    @cvar methods: The methods this page answers.
    """

    methods: tuple[bytes, ...] = READ

    def render(self, request: Request) -> bytes | int:
        """
        Check the request's method and, for an action, its token, then
        L{answer} it.
        """
        if request.method not in self.methods:
            request.setHeader(b"allow", b", ".join(self.methods))
            return errorAnswer(request, 405, "method not allowed")
        if self.methods == ACT:
            refusal = authorize(request, self._relay.adminToken())
            if refusal is not None:
                return refusal
        return self.answer(request)

    def answer(self, request: Request) -> bytes | int:
        """
        @return: The answer to a request allowed here.
        """
        raise NotImplementedError()


class DashboardPage(Page):
    """
    C{GET /}: the dashboard's file, allowed no content from elsewhere.
    """

    def answer(self, request: Request) -> bytes | int:
        """
        Serve the dashboard's file.
        """
        request.setHeader(
            b"content-security-policy",
            b"default-src 'none'; script-src 'unsafe-inline';"
            b" style-src 'unsafe-inline'; connect-src 'self'",
        )
        result: bytes | int = dashboardFile().render(request)
        return result


class StatusPage(Page):
    """
    C{GET /status}: this worker's status; with several workers, also a row
    for each (C{workers}), or with C{?worker=N} worker N's whole status.
    """

    def answer(self, request: Request) -> bytes | int:
        """
        Answer with the status asked for.
        """
        own = status(self._relay)
        workers = self._relay.workers()
        if workers is None:
            return jsonAnswer(request, 200, own)
        asked = request.args.get(b"worker")
        if asked is None:
            d = workers.statuses().addCallback(
                lambda answers: (
                    200,
                    {**own, "workers": workerRows(workers, own, answers)},
                )
            )
            return _later(request, d)
        try:
            index = int(asked[0])
        except ValueError:
            return errorAnswer(request, 400, "worker must be a number")
        if index == 0:
            return jsonAnswer(request, 200, own)
        if not 0 < index < workers.count:
            return errorAnswer(request, 404, f"no worker {index}")
        answer = workers.statusOf(index)
        if answer is None:
            return errorAnswer(request, 503, f"worker {index} is not running")
        d = answer.addCallbacks(
            lambda answer: (200, answer),
            lambda f: (503, {"error": f.getErrorMessage()}),
        )
        return _later(request, d)


class HistoryPage(Page):
    """
    C{GET /history}: the last minutes of samples (L{History}); with
    C{?after=TIME}, only those taken after C{TIME}.
    """

    def __init__(self, relay: RelayView, history: History) -> None:
        super().__init__(relay)
        self._history = history

    def answer(self, request: Request) -> bytes:
        """
        Answer with the samples asked for.
        """
        after = None
        asked = request.args.get(b"after")
        if asked:
            try:
                after = float(asked[0])
            except ValueError:
                return errorAnswer(request, 400, "after must be a number")
        return jsonAnswer(request, 200, self._history.since(after))


class MetricsPage(Page):
    """
    C{GET /metrics}: the metrics page; with several workers, every
    worker's samples, labelled with C{worker}.
    """

    def answer(self, request: Request) -> bytes | int:
        """
        Answer with the metrics.
        """
        request.setHeader(b"content-type", CONTENT_TYPE_LATEST.encode("ascii"))
        own = metricsText(self._relay)
        workers = self._relay.workers()
        if workers is None:
            return own.encode("utf-8")
        d = workers.metricsPages().addCallback(
            lambda answers: mergeMetrics([(0, own), *answers])
        )
        return _later(request, d)


class ReloadPage(Page):
    """
    C{POST /reload}: reload the configuration file, as SIGHUP does; answer
    when done.
    """

    methods = ACT

    def answer(self, request: Request) -> int:
        """
        Reload, and answer with the routes now in force or why not.
        """
        relay = self._relay

        def reloaded(_: object) -> tuple[int, Any]:
            return 200, {
                "reloaded": relay.configPath(),
                "routes": [r.name for r in relay.routes()],
            }

        def failed(f: Failure) -> tuple[int, Any]:
            if f.check(ConfigError):
                return 400, {"error": str(f.value)}
            log.failure("admin: reload failed", f)
            return 500, {"error": "reload failed; see the log"}

        return _later(
            request, maybeDeferred(relay.reload).addCallbacks(reloaded, failed)
        )


class ActionPage(Page):
    """
    C{POST /routes/ROUTE/backends/BACKEND/ACTION}: drain, enable or
    disable a backend.
    """

    methods = ACT

    def __init__(self, relay: RelayView, route: str, backend: str, action: str) -> None:
        super().__init__(relay)
        self._route = route
        self._backend = backend
        self._action = action

    def answer(self, request: Request) -> bytes:
        """
        Act, and answer with the backend's state after the action.
        """
        relay, route = self._relay, self._route
        try:
            b = relay.setBackendState(route, self._backend, self._action)
        except KeyError as e:
            return errorAnswer(request, 404, str(e.args[0]) if e.args else "not found")
        r = relay.route(route)
        assert r is not None
        return jsonAnswer(
            request,
            200,
            {
                "route": route,
                "action": self._action,
                "backend": backendStatus(relay, r, b),
            },
        )


class _Backend(Node):
    """
    C{/routes/ROUTE/backends/BACKEND}: its children are the actions.
    """

    def __init__(self, relay: RelayView, route: str, backend: str) -> None:
        super().__init__(relay)
        self._route = route
        self._backend = backend

    def named(self, name: str) -> IResource:
        """
        @return: The action C{name}'s page, if it is one.
        """
        if name not in ACTIONS:
            return NOT_FOUND
        return ActionPage(self._relay, self._route, self._backend, name)


class _Backends(Node):
    """
    C{/routes/ROUTE/backends}: its children are the route's backends.
    """

    def __init__(self, relay: RelayView, route: str) -> None:
        super().__init__(relay)
        self._route = route

    def named(self, name: str) -> IResource:
        """
        @return: The backend C{name} of the route.
        """
        return _Backend(self._relay, self._route, name)


class _Route(Node):
    """
    C{/routes/ROUTE}: its only child is C{backends}.
    """

    def __init__(self, relay: RelayView, route: str) -> None:
        super().__init__(relay)
        self.putChild(b"backends", _Backends(relay, route))


class _Routes(Node):
    """
    C{/routes}: its children are the routes, by name.
    """

    def named(self, name: str) -> IResource:
        """
        @return: The route C{name}.
        """
        return _Route(self._relay, name)


def adminRoot(relay: RelayView, history: History | None = None) -> Resource:
    """
    @param history: What C{/history} serves; by default one that is not
        sampling.
    @return: The root of the admin listener's pages for C{relay}.
    """
    root = Node(relay)
    root.putChild(b"", DashboardPage(relay))
    root.putChild(b"status", StatusPage(relay))
    root.putChild(
        b"history", HistoryPage(relay, History(relay) if history is None else history)
    )
    root.putChild(b"metrics", MetricsPage(relay))
    root.putChild(b"reload", ReloadPage(relay))
    root.putChild(b"routes", _Routes(relay))
    return root
