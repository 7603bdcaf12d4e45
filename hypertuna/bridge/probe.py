"""Synchronous readiness probe of the bridge, for ``/ready`` (a sync Django view).

Opens a short-lived connection, says ``hello`` and ``ping``, and reports ``(ok, detail)``. It never
raises: a readiness endpoint reports failures, it does not crash on them.
"""

from __future__ import annotations

import json
import socket
import time
from typing import Any

from .client import PROTOCOL_VERSION


def _exchange(sock: socket.socket, frames: list[dict[str, Any]], deadline: float) -> list[dict[str, Any]]:
    sock.sendall(b"".join((json.dumps(f) + "\n").encode() for f in frames))
    replies: dict[Any, dict[str, Any]] = {}
    buf = b""
    want = {f["id"] for f in frames}
    while want - replies.keys():
        sock.settimeout(max(0.001, deadline - time.monotonic()))
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("bridge closed the connection")
        buf += chunk
        while b"\n" in buf:
            line, buf = buf.split(b"\n", 1)
            if not line.strip():
                continue
            frame = json.loads(line)
            if "event" not in frame and frame.get("id") in want:
                replies[frame["id"]] = frame
    return [replies[f["id"]] for f in frames]


def probe(
    *,
    socket_path: str | None = None,
    tcp: tuple[str, int] | None = None,
    secret: str | None = None,
    timeout: float = 1.0,
) -> tuple[bool, str]:
    """``(True, "ping 0.4ms")`` when the bridge answers, else ``(False, reason)``."""
    deadline = time.monotonic() + timeout
    try:
        if socket_path:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(timeout)
            sock.connect(socket_path)
        elif tcp:
            sock = socket.create_connection(tcp, timeout=timeout)
        else:
            return False, "bridge not configured"
    except OSError as exc:
        return False, f"unreachable: {exc.strerror or type(exc).__name__}"
    try:
        hello: dict[str, Any] = {"versions": [PROTOCOL_VERSION], "client": "readiness-probe"}
        if secret:
            hello["secret"] = secret
        started = time.monotonic()
        hello_reply, ping_reply = _exchange(
            sock,
            [{"id": 1, "method": "hello", "params": hello}, {"id": 2, "method": "ping", "params": {}}],
            deadline,
        )
        elapsed = (time.monotonic() - started) * 1000
        if not hello_reply.get("ok"):
            return False, f"hello refused: {(hello_reply.get('error') or {}).get('code', 'error')}"
        if not ping_reply.get("ok"):
            return False, f"ping failed: {(ping_reply.get('error') or {}).get('code', 'error')}"
        return True, f"ping {elapsed:.1f}ms"
    except (OSError, ValueError, ConnectionError) as exc:
        return False, f"no answer: {type(exc).__name__}"
    finally:
        sock.close()
