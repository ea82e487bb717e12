# -*- test-case-name: tests.test_redis_source -*-
"""
The C{redis} source's options (the route keys it declares), checked.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from wsrelay.redis.client import (
    BadRedisSetting,
    RedisAddress,
    parseRedisURL,
    readPasswordFile,
)


@dataclass(frozen=True)
class RedisSourceSettings:
    """
    A C{redis} source's options, checked.

    @ivar address: The server (the password from C{redis_password_file}
        when given).
    @ivar caFile: C{redis_ca_file}, or L{None} for the system's CAs.
    @ivar stream: The stream's key, C{{channel}} expanded.
    @ivar history: Entries kept in the stream (C{XADD MAXLEN ~}) by the
        ingest: the resume window.
    @ivar ingest: Whether this relay may feed the stream from C{backends}.
    @ivar lease: Seconds the ingest lease lasts unless renewed.
    """

    address: RedisAddress
    caFile: str | None
    stream: str
    history: int
    ingest: bool
    lease: float


def _whole(options: Mapping[str, str], key: str, default: int) -> int:
    text = options.get(key)
    if text is None:
        return default
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise ValueError(f"{key}: want a whole number of at least 1, not {text!r}")
    return value


def _switch(options: Mapping[str, str], key: str) -> bool:
    text = options.get(key, "off").strip().lower()
    if text in ("on", "yes", "true", "1"):
        return True
    if text in ("off", "no", "false", "0"):
        return False
    raise ValueError(f"{key}: want on or off, not {text!r}")


def parseSettings(
    options: Mapping[str, str], key: str, address: RedisAddress | None = None
) -> RedisSourceSettings:
    """
    @param key: The channel's key, for C{{channel}} in C{stream}.
    @param address: The server, when already found from these options (by
        an earlier call): the password file is not read again.
    @return: The checked options of a C{redis} source.
    @raise ValueError: With one line naming the option that is wrong.
    """
    url = options.get("redis")
    if not url:
        raise ValueError("redis: missing: the redis source needs a Redis URL")
    known = address is not None
    if address is None:
        try:
            address = parseRedisURL(url)
        except BadRedisSetting as e:
            raise ValueError(f"redis: {e}") from None
    passwordFile = options.get("redis_password_file")
    if passwordFile and not known:
        if address.password is not None:
            raise ValueError(
                "redis_password_file: the redis URL has a password already"
            )
        try:
            password = readPasswordFile(passwordFile)
        except BadRedisSetting as e:
            raise ValueError(f"redis_password_file: {e}") from None
        address = RedisAddress(
            address.host,
            address.port,
            address.db,
            address.tls,
            address.username,
            password,
        )
    caFile = options.get("redis_ca_file") or None
    if caFile is not None and not address.tls:
        raise ValueError("redis_ca_file: only for a rediss:// URL")
    stream = options.get("stream", "").strip()
    if not stream:
        raise ValueError("stream: missing: the redis source needs a stream key")
    stream = stream.replace("{channel}", key)
    leaseText = options.get("lease", "5")
    try:
        lease = float(leaseText)
    except ValueError:
        lease = 0.0
    if not lease > 0 or lease == float("inf"):
        raise ValueError(f"lease: want a number of seconds above 0, not {leaseText!r}")
    return RedisSourceSettings(
        address=address,
        caFile=caFile,
        stream=stream,
        history=_whole(options, "history", 10000),
        ingest=_switch(options, "ingest"),
        lease=lease,
    )
