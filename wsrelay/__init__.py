"""
wsrelay: a WebSocket reverse proxy and fan-out relay on Twisted and Autobahn.

Run it with C{twistd wsrelay --config conf/relay.ini}.
"""

__version__ = "0.1.0"
