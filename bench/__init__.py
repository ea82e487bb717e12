"""
wsrelay's benchmark suite: wsrelay beside nginx and HAProxy on loopback.

Run it with C{make bench}, or C{.venv/bin/python -m bench --help}; the
results and how to read them are in C{BENCHMARKS.md}.
"""
