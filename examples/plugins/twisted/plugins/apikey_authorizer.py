"""
An example authorizer: C{auth = apikey} lets on a client whose C{X-Api-Key}
header is one of the keys of C{apikey_file} (one C{KEY USER} a line) and
tells the backend who it is in C{X-User}; others get 401. See
docs/plugins.md, "Writing an authorizer".
"""

import hmac
import os
from collections.abc import Mapping

from zope.interface import implementer

from wsrelay.dropins import AuthorizerPlugin
from wsrelay.interfaces import (
    Allow,
    AuthRequest,
    Deny,
    IAuthorizer,
    IAuthorizerContext,
)

DENIED = Deny(401, [("WWW-Authenticate", "ApiKey")], b"an X-Api-Key is required\n")


@implementer(IAuthorizer)
class ApiKeyAuthorizer:
    """Built for one route at each (re)load: the key file is read here."""

    def __init__(self, options: Mapping[str, str], context: IAuthorizerContext):
        if "apikey_file" not in options:
            raise ValueError("apikey_file: required")
        path = os.path.join(context.directory, options["apikey_file"])
        try:
            with open(path, encoding="utf-8") as f:
                lines = [line.split() for line in f if line.strip()]
        except OSError as e:
            raise ValueError(
                f"apikey_file: cannot read {path!r}: {e.strerror}"
            ) from None
        if any(len(words) != 2 for words in lines):
            raise ValueError("apikey_file: expected 'KEY USER' lines")
        self.users = {key: user for key, user in lines}

    def authorize(self, request: AuthRequest) -> Allow | Deny:
        """Answer at once; a slow check would return a Deferred instead."""
        given = request.header("X-Api-Key") or ""
        for key, user in self.users.items():
            if hmac.compare_digest(key.encode(), given.encode()):
                return Allow(headers=[("X-User", user)])
        return DENIED


apikey = AuthorizerPlugin("apikey", ApiKeyAuthorizer, "API keys", ("apikey_file",))
