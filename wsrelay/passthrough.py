"""
Compatibility for L{wsrelay.session}, which still imports the passthrough
pipe from here: the lead removes this module when C{session.py} moves into
L{wsrelay.proxy}.  Everything else imports from L{wsrelay.proxy.pipe}.
"""

from wsrelay.proxy.pipe import Pipe

__all__ = ["Pipe"]
