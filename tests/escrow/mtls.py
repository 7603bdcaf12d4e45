"""A real escrow listener (uvicorn, mutual TLS 1.3) on 127.0.0.1 in a background thread, for tests."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from asgiref.sync import sync_to_async
from django.conf import settings
from django.core.handlers.asgi import ASGIHandler
from django.db import connections

from escrow import pki
from escrow.server import build_server
from escrow.transport import MTLSClient


@dataclass
class Pki:
    directory: Path
    ca: pki.Issued
    server: pki.Issued
    gateway: pki.Issued
    worker: pki.Issued
    operator: pki.Issued
    foreign_ca: pki.Issued
    foreign_gateway: pki.Issued
    no_role: pki.Issued

    def client(self, url: str, issued: pki.Issued, *, timeout: float = 10.0) -> MTLSClient:
        return MTLSClient(url, ca=str(self.ca.cert), cert=str(issued.cert), key=str(issued.key), timeout=timeout)


def make_pki(directory: Path) -> Pki:
    ca = pki.create_ca(directory)
    foreign_dir = directory / "foreign"
    foreign_ca = pki.create_ca(foreign_dir, name="Someone else's CA")
    return Pki(
        directory=directory,
        ca=ca,
        server=pki.issue(
            ca, directory, stem="server", common_name="localhost", role=None, server_names=("localhost", "127.0.0.1")
        ),
        gateway=pki.issue(ca, directory, stem="gateway", common_name="gw-1", role="gateway"),
        worker=pki.issue(ca, directory, stem="worker", common_name="worker-1", role="worker"),
        operator=pki.issue(ca, directory, stem="operator", common_name="alice", role="operator"),
        foreign_ca=foreign_ca,
        foreign_gateway=pki.issue(foreign_ca, foreign_dir, stem="gateway", common_name="gw-evil", role="gateway"),
        no_role=pki.issue(ca, directory, stem="norole", common_name="nobody", role=None),
    )


@contextmanager
def escrow_listener(certs: Pki) -> Iterator[str]:
    """Serve the escrow URLconf over mTLS on a free port; yields the base URL."""
    database = settings.DATABASES["default"]
    saved_max_age = database.get("CONN_MAX_AGE")
    # Each ASGI request runs in its own thread: close its connection at request end (as the escrow role does).
    database["CONN_MAX_AGE"] = 0
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = build_server(
        # ASGIHandler rather than get_asgi_application(): the latter re-runs django.setup(), which reconfigures
        # logging and would detach pytest's log capture.
        ASGIHandler(),
        host="127.0.0.1",
        port=port,
        certfile=str(certs.server.cert),
        keyfile=str(certs.server.key),
        cafile=str(certs.ca.cert),
    )
    holder: dict[str, Any] = {}

    async def serve() -> None:
        holder["loop"] = asyncio.get_running_loop()
        await server.serve(sockets=[sock])

    thread = threading.Thread(target=lambda: asyncio.run(serve()), name="escrow-listener", daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("escrow listener did not start")
        time.sleep(0.02)
    try:
        yield f"https://127.0.0.1:{port}"
    finally:
        loop = holder.get("loop")
        if loop is not None and thread.is_alive():
            asyncio.run_coroutine_threadsafe(sync_to_async(connections.close_all)(), loop).result(timeout=10)
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()
        database["CONN_MAX_AGE"] = saved_max_age
