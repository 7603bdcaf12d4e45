"""Container health checks of docker-compose.yml (standard library only, so a check costs milliseconds).

    python deploy/healthcheck.py http URL          the URL answers 200 (web: /ready checks database, cache, bridge)
    python deploy/healthcheck.py bridge            the bridge RPC answers hello and ping on HYPERTUNA_BRIDGE_SOCKET,
                                                   with HYPERTUNA_BRIDGE_SECRET when one is set
    python deploy/healthcheck.py redis             REDIS_URL answers PING (beat: the broker it enqueues into)
    python deploy/healthcheck.py tcp HOST:PORT     a listener accepts connections (escrow: its mTLS port;
                                                   a full request would need a client certificate)

Exit status 0 when healthy, 1 with one line on stderr saying what failed.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import urllib.error
import urllib.request
from typing import IO
from urllib.parse import urlsplit

TIMEOUT = 4.0


class Unhealthy(Exception):
    pass


def check_http(url: str) -> str:
    if urlsplit(url).scheme not in ("http", "https"):
        raise Unhealthy(f"not an http(s) URL: {url!r}")
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT) as response:  # noqa: S310 (scheme checked above)
            status = response.status
    except urllib.error.HTTPError as exc:
        raise Unhealthy(f"{url} answered {exc.code}") from None
    except OSError as exc:
        raise Unhealthy(f"{url}: {exc}") from None
    if status != 200:
        raise Unhealthy(f"{url} answered {status}")
    return f"{url} answered 200"


def _rpc_call(stream: socket.socket, reader: IO[bytes], call: dict[str, object]) -> dict[str, object]:
    stream.sendall(json.dumps(call).encode() + b"\n")
    line = reader.readline()
    if not line:
        raise Unhealthy("the bridge closed the connection")
    try:
        answer = json.loads(line)
    except ValueError:
        raise Unhealthy("the bridge answered something that is not JSON") from None
    if not isinstance(answer, dict) or answer.get("id") != call["id"]:
        raise Unhealthy(f"unexpected bridge answer to {call['method']}")
    if not answer.get("ok"):
        error = answer.get("error") or {}
        code = error.get("code") if isinstance(error, dict) else error
        raise Unhealthy(f"bridge refused {call['method']}: {code}")
    return answer


def check_bridge(environ: dict[str, str]) -> str:
    path = environ.get("HYPERTUNA_BRIDGE_SOCKET") or "./var/bridge.sock"
    secret = environ.get("HYPERTUNA_BRIDGE_SECRET") or None
    hello: dict[str, object] = {"versions": [1], "client": "healthcheck"}
    if secret:
        hello["secret"] = secret
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as stream:
            stream.settimeout(TIMEOUT)
            stream.connect(path)
            with stream.makefile("rb") as reader:
                _rpc_call(stream, reader, {"id": 1, "method": "hello", "params": hello})
                _rpc_call(stream, reader, {"id": 2, "method": "ping", "params": {}})
    except OSError as exc:
        raise Unhealthy(f"bridge socket {path}: {exc}") from None
    return f"bridge at {path} answered ping"


def check_redis(environ: dict[str, str]) -> str:
    url = environ.get("REDIS_URL")
    if not url:
        raise Unhealthy("REDIS_URL is not set")
    parts = urlsplit(url)
    if parts.scheme != "redis":
        raise Unhealthy(f"REDIS_URL scheme {parts.scheme!r} is not checked by this probe (use redis://)")
    try:
        with socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 6379), timeout=TIMEOUT) as conn:
            if parts.password:
                user = parts.username or "default"
                conn.sendall(_resp("AUTH", user, parts.password))
                if not conn.recv(64).startswith(b"+OK"):
                    raise Unhealthy("Redis refused the credentials in REDIS_URL")
            conn.sendall(_resp("PING"))
            reply = conn.recv(64)
    except OSError as exc:
        raise Unhealthy(f"Redis at {parts.hostname}:{parts.port or 6379}: {exc}") from None
    if not reply.startswith(b"+PONG"):
        raise Unhealthy(f"Redis answered {reply[:40]!r} to PING")
    return "Redis answered PONG"


def _resp(*words: str) -> bytes:
    out = [f"*{len(words)}\r\n".encode()]
    for word in words:
        data = word.encode()
        out.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(out)


def check_tcp(target: str) -> str:
    host, _, port = target.rpartition(":")
    if not host or not port.isdigit():
        raise Unhealthy(f"expected HOST:PORT, got {target!r}")
    try:
        with socket.create_connection((host, int(port)), timeout=TIMEOUT):
            pass
    except OSError as exc:
        raise Unhealthy(f"{target}: {exc}") from None
    return f"{target} accepts connections"


def run(argv: list[str], environ: dict[str, str]) -> str:
    """The check named by ``argv``; its success message, or :class:`Unhealthy`."""
    if argv[:1] == ["http"] and len(argv) == 2:
        return check_http(argv[1])
    if argv == ["bridge"]:
        return check_bridge(environ)
    if argv == ["redis"]:
        return check_redis(environ)
    if argv[:1] == ["tcp"] and len(argv) == 2:
        return check_tcp(argv[1])
    raise Unhealthy(f"usage: healthcheck.py http URL | bridge | redis | tcp HOST:PORT (got {' '.join(argv)!r})")


def main(argv: list[str] | None = None) -> int:
    try:
        run(sys.argv[1:] if argv is None else argv, dict(os.environ))
    except Unhealthy as exc:
        print(f"unhealthy: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
