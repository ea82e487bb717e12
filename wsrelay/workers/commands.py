# -*- test-case-name: tests.test_workers_channel -*-
"""
The commands worker 0 sends the other workers, as AMP commands
(L{twisted.protocols.amp}): each has typed arguments and response, and the
errors a worker may answer with.

AMP limits a value to 64 KiB; a status or metrics page can be larger, so
those travel as L{Chunked} values, split over several keys.
"""

from __future__ import annotations

import json
from typing import Any, ClassVar

from twisted.protocols.amp import (
    MAX_VALUE_LENGTH,
    AmpBox,
    Argument,
    BinaryBoxProtocol,
    Command,
    Unicode,
)


class Boxes(BinaryBoxProtocol):
    """
    AMP's box protocol, parsing each read's boxes in one loop: AMP's own
    parser (L{twisted.protocols.basic.Int16StringReceiver}) makes several
    Python calls per key and per value, which was a third of a status
    round trip's CPU.  The channel never starts TLS or switches protocol,
    which this parser does not do.
    """

    _unparsed = b""
    _box: AmpBox | None = None
    _dead = False

    def dataReceived(self, data: bytes) -> None:
        """
        Hand each complete box to the box receiver.  The keys and values of
        an incomplete box are kept parsed (L{_box}), and only the
        incomplete key or value is kept as bytes for the next read: a large
        box that comes in many reads is parsed once.
        """
        if self._dead:
            return
        data = self._unparsed + data
        size = len(data)
        box = self._box
        at = 0
        while at + 2 <= size:
            keyAt = at + 2
            valueAt = keyAt + (data[at] << 8 | data[at + 1])
            if valueAt == keyAt:
                at = keyAt
                self.boxReceiver.ampBoxReceived(AmpBox() if box is None else box)
                box = None
            elif valueAt - keyAt > self._MAX_KEY_LENGTH:
                # AMP closes the connection; nothing after this is parsed.
                self._dead = True
                self._unparsed = b""
                self._box = None
                self.lengthLimitExceeded(valueAt - keyAt)
                return
            elif valueAt + 2 > size:
                break
            else:
                end = valueAt + 2 + (data[valueAt] << 8 | data[valueAt + 1])
                if end > size:
                    break
                if box is None:
                    box = AmpBox()
                box[data[keyAt:valueAt]] = data[valueAt + 2 : end]
                at = end
        self._box = box
        self._unparsed = data[at:]


class CommandFailed(Exception):
    """
    A worker could not carry out a command; the message says why.
    """


class ConfigRejected(Exception):
    """
    A worker rejected the configuration file on reload; the message is its
    L{wsrelay.config.ConfigError} (or plugin error).
    """


class NoSuchBackend(Exception):
    """
    A worker has no such route or backend; the message names it.
    """


class Chunked(Argument):
    """
    A value of any length, sent as C{NAME} (its first L{MAX_VALUE_LENGTH}
    bytes) and C{NAME.1}, C{NAME.2}... (the next ones, when there are).
    Subclasses say how the value is made bytes and back.
    """

    def encode(self, value: Any) -> bytes:
        """
        @return: C{value} as bytes.
        """
        raise NotImplementedError()

    def decode(self, data: bytes) -> Any:
        """
        @return: The value C{data} encodes.
        """
        raise NotImplementedError()

    def toBox(
        self, name: bytes, strings: dict[bytes, bytes], objects: Any, proto: Any
    ) -> None:
        """
        Put C{objects}' value for C{name} into C{strings}, in chunks.
        """
        data = self.encode(objects.pop(name.decode("ascii")))
        size = MAX_VALUE_LENGTH
        strings[name] = data[:size]
        for i in range(1, -(-len(data) // size)):
            strings[b"%s.%d" % (name, i)] = data[i * size : (i + 1) * size]

    def fromBox(
        self, name: bytes, strings: dict[bytes, bytes], objects: Any, proto: Any
    ) -> None:
        """
        Join the chunks of C{name} in C{strings} into C{objects}' value.
        """
        data = strings.pop(name)
        if len(data) == MAX_VALUE_LENGTH:
            chunks, i = [data], 1
            while (b"%s.%d" % (name, i)) in strings:
                chunks.append(strings.pop(b"%s.%d" % (name, i)))
                i += 1
            data = b"".join(chunks)
        objects[name.decode("ascii")] = self.decode(data)


class JSONValue(Chunked):
    """
    A JSON value (a status page), of any length.
    """

    def encode(self, value: Any) -> bytes:
        return json.dumps(value).encode("utf-8")

    def decode(self, data: bytes) -> Any:
        return json.loads(data)


class Text(Chunked):
    """
    Text (a metrics page), of any length.
    """

    def encode(self, value: Any) -> bytes:
        return str(value).encode("utf-8")

    def decode(self, data: bytes) -> Any:
        return data.decode("utf-8")


class WorkerCommand(Command):
    """
    A command to a worker: it may fail with L{CommandFailed}, whatever
    went wrong (AMP's commands inherit their errors).
    """

    errors: ClassVar[dict[type[Exception], bytes]] = {CommandFailed: b"FAILED"}


class Status(WorkerCommand):
    """
    The worker's whole C{/status} page.
    """

    response: ClassVar[list[tuple[bytes, Argument]]] = [(b"status", JSONValue())]


class Metrics(WorkerCommand):
    """
    The worker's C{/metrics} page.
    """

    response: ClassVar[list[tuple[bytes, Argument]]] = [(b"text", Text())]


class Reload(WorkerCommand):
    """
    Read the configuration file again, as C{SIGHUP} does; answered once
    applied.
    """

    errors: ClassVar[dict[type[Exception], bytes]] = {
        ConfigRejected: b"CONFIG_REJECTED"
    }


class Act(WorkerCommand):
    """
    Drain, enable or disable a backend, as the admin API's action did on
    worker 0.
    """

    arguments: ClassVar[list[tuple[bytes, Argument]]] = [
        (b"route", Unicode()),
        (b"backend", Unicode()),
        (b"action", Unicode()),
    ]
    errors: ClassVar[dict[type[Exception], bytes]] = {NoSuchBackend: b"NO_SUCH_BACKEND"}
