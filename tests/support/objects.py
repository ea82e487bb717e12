"""
Probes of how CPython lays out an object, for the tests that show the
relay's legs are never asked for their C{__dict__} on the open path.
"""

from __future__ import annotations

import ctypes
import sys

PROBES_DICT = sys.implementation.name == "cpython" and sys.version_info[:2] == (3, 11)


def dictMade(obj: object) -> bool:
    """
    @return: Whether CPython 3.11 made C{obj}'s C{__dict__}, found without
        making it: the pointer three words before the object (its values
        without a dictionary are four words before).
    """
    assert type(obj).__flags__ & (1 << 4)  # Py_TPFLAGS_MANAGED_DICT
    size = ctypes.sizeof(ctypes.c_void_p)
    return ctypes.c_void_p.from_address(id(obj) - 3 * size).value is not None
