"""No connection leaves 127.0.0.1: installed in the test process (conftest) and, through this file
being on PYTHONPATH, in every Python process the tests start (``python -m hfaug ...``, app.py).

A connection or a name lookup for anything but the loopback is refused (as on a machine without
internet) and written to ``HFAUG_NETGUARD_LOG``; conftest fails the test that made it. Catching
the refusal does not hide it: libraries that swallow network errors (a model card lookup, a
version check) are exactly what this finds.
"""

from __future__ import annotations

import os
import socket
import traceback

LOCAL = {"127.0.0.1", "::1", "localhost", "0.0.0.0", "::", None}


def _note(what: str) -> None:
    path = os.environ.get("HFAUG_NETGUARD_LOG")
    if path:
        stack = "".join(traceback.format_stack(limit=40)[:-2])
        with open(path, "a", encoding="utf-8") as f:
            f.write(f"--- pid {os.getpid()}: {what}\n{stack}")


def install() -> None:
    if getattr(socket, "_hfaug_netguard", False):
        return
    connect, lookup = socket.socket.connect, socket.getaddrinfo

    def guarded_connect(self, address):
        host = address[0] if isinstance(address, tuple) else None
        if self.family in (socket.AF_INET, socket.AF_INET6) and host not in LOCAL:
            _note(f"connect {address}")
            raise OSError(f"network access outside 127.0.0.1 is blocked in tests: {address}")
        return connect(self, address)

    def guarded_getaddrinfo(host, *args, **kwargs):
        name = host.decode() if isinstance(host, bytes) else host
        if name not in LOCAL and name != socket.gethostname():
            _note(f"lookup {name}")
            raise socket.gaierror(socket.EAI_NONAME, f"name lookups outside 127.0.0.1 are blocked in tests: {name}")
        return lookup(host, *args, **kwargs)

    socket.socket.connect = guarded_connect
    socket.getaddrinfo = guarded_getaddrinfo
    socket._hfaug_netguard = True


if os.environ.get("HFAUG_NETGUARD_LOG"):
    install()
