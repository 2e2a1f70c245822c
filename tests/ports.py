"""A free port on 127.0.0.1, for a server that a test or a benchmark starts.

The port is free when this returns; the server binds it a moment later (another
process could take it in between, which on a test machine does not happen in
practice). UDP and TCP ports are separate spaces: ask for the kind the server binds.
"""

from __future__ import annotations

import socket


def free_port(kind: socket.SocketKind = socket.SOCK_STREAM) -> int:
    """A port on 127.0.0.1 that no socket of ``kind`` (TCP by default) is bound to."""
    with socket.socket(socket.AF_INET, kind) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
