"""The file-system Celery broker of ``make run``, with messages and exchange tables that appear whole.

kombu's file-system transport creates a message file, then writes it; a consumer that lists the folder in
between claims the empty file and fails to decode it, and Celery treats that as unrecoverable: the worker
exits (``JSONDecodeError('Expecting value: line 1 column 1 (char 0)')``). An exchange table is created the
same way, so a fan-out publish (a broadcast to the workers) can read it empty. Claimed messages go to the
system's temporary folder, which may be another file system, where a move is a copy and not a claim.

Here every file appears under its final name only once complete (written under a name no reader matches,
then renamed in one step), a consumer claims a message by renaming it into the broker's own
``processed`` folder (atomic: of two consumers exactly one gets it), and changes to an exchange table are
serialised by one lock file and replace the table whole; a file a writer left half-written when it died is
removed by a consumer once it is ``ABANDONED_AFTER_SECONDS`` old. Production uses Redis; this is the no-server
default that web, worker and beat processes share.
"""

from __future__ import annotations

import fcntl
import os
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from queue import Empty
from typing import Any

from kombu.exceptions import ChannelError
from kombu.transport import filesystem
from kombu.utils.json import dumps, loads

BINDINGS_LOCK = ".bindings.lock"
PARTIAL = ".partial"
# A file still being written after this long belongs to a writer that died mid-write.
ABANDONED_AFTER_SECONDS = 300.0


def _remove_if_abandoned(path: Path) -> None:
    try:
        if time.time() - path.stat().st_mtime > ABANDONED_AFTER_SECONDS:
            path.unlink()
    except FileNotFoundError:  # renamed into place, or removed by another consumer
        pass


def write_whole(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that a reader sees either no file or all of it (never a part)."""
    partial = path.with_name(f".{uuid.uuid4().hex}{PARTIAL}")
    try:
        with open(partial, "wb") as file:
            file.write(data)
        os.replace(partial, path)
    except OSError as exc:
        partial.unlink(missing_ok=True)
        raise ChannelError(f"cannot write {path}") from exc


def _binding(routing_key: str, pattern: str, queue: str) -> list[str]:
    """One row of an exchange table, as kombu stores it."""
    return [routing_key or "", pattern or "", queue or ""]


class Channel(filesystem.Channel):
    # kombu names the second parameter "message" in one base class and "payload" in the other.
    def _put(self, queue: str, payload: Any, **kwargs: Any) -> None:  # type: ignore[override]
        # The name sorts by enqueue time (zero-padded nanoseconds of the system-wide monotonic clock; kombu's
        # milliseconds left messages of the same millisecond in random order): consumers take the oldest first.
        name = f"{time.monotonic_ns():020d}_{uuid.uuid4().hex}.{queue}.msg"
        write_whole(Path(self.data_folder_out) / name, dumps(payload).encode())

    def _get(self, queue: str, timeout: float | None = None) -> Any:
        wanted = f"{queue}.msg"
        inbox, claimed_dir = Path(self.data_folder_in), Path(self.processed_folder)
        for name in sorted(os.listdir(inbox)):
            if name.endswith(PARTIAL):
                _remove_if_abandoned(inbox / name)
            if name.partition(".")[2] != wanted:
                continue
            claimed = claimed_dir / f"{name}.{uuid.uuid4().hex}"
            try:
                os.rename(inbox / name, claimed)
            except FileNotFoundError:  # another consumer claimed it first
                continue
            try:
                payload = claimed.read_bytes()
            finally:
                claimed.unlink(missing_ok=True)
            return loads(payload.decode())
        raise Empty()

    @contextmanager
    def _bindings_locked(self) -> Iterator[None]:
        self.control_folder.mkdir(parents=True, exist_ok=True)
        with open(self.control_folder / BINDINGS_LOCK, "a") as lock:
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock.fileno(), fcntl.LOCK_UN)

    def _update_table(self, exchange: str, change: Callable[[list[list[str]]], list[list[str]] | None]) -> None:
        """Apply ``change`` to the exchange's table (``None``: leave it as it is) under the bindings lock."""
        with self._bindings_locked():
            table = [list(entry) for entry in self.get_table(exchange)]
            updated = change(table)
            if updated is not None:
                write_whole(self._exchange_file(exchange), dumps(updated).encode())

    def _queue_bind(self, exchange: str, routing_key: str, pattern: str, queue: str) -> None:
        entry = _binding(routing_key, pattern, queue)
        self._update_table(exchange, lambda table: None if entry in table else [entry, *table])

    def _delete(self, queue: str, exchange: str, routing_key: str, pattern: str, *args: Any, **kwargs: Any) -> None:
        # The virtual channel's own bookkeeping, skipping kombu's in-place rewrite of the table.
        super(filesystem.Channel, self)._delete(queue, exchange, routing_key, pattern, *args, **kwargs)
        entry = _binding(routing_key, pattern, queue)
        self._update_table(exchange, lambda table: [e for e in table if e != entry] if entry in table else None)


class Transport(filesystem.Transport):
    Channel = Channel
