"""The file-system broker of ``make run`` under concurrent producers and consumers (hypertuna/broker.py)."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from queue import Empty

import pytest
from kombu import Connection

from hypertuna.broker import ABANDONED_AFTER_SECONDS, Channel
from tests.e2e.harness import ROOT

PAYLOAD_BYTES = 256 * 1024  # large enough that a write takes several system calls


def connect(folder: Path) -> Connection:
    for sub in ("out", "processed", "control"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    options = {
        "data_folder_in": str(folder / "out"),
        "data_folder_out": str(folder / "out"),
        "processed_folder": str(folder / "processed"),
        "control_folder": str(folder / "control"),
    }
    return Connection("filesystem://", transport="hypertuna.broker:Transport", transport_options=options)


def channel(connection: Connection) -> Channel:
    opened = connection.default_channel
    assert isinstance(opened, Channel)
    return opened


def run_all(*targets) -> None:
    threads = [threading.Thread(target=target) for target in targets]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
        assert not thread.is_alive()


def test_make_runs_embedded_default_sends_tasks_through_this_transport(tmp_path):
    probe = (
        "from celery import current_app; import sys; "
        "conn = current_app.connection_for_write(); conn.as_uri(); "
        "sys.stdout.write(type(conn.transport).__module__)"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL")}
    env["HYPERTUNA_VAR_DIR"] = str(tmp_path)
    result = subprocess.run(
        [sys.executable, "manage.py", "shell", "-c", probe],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.endswith("\nhypertuna.broker")
    # The URL names its (unused) host: kombu warned "No hostname was supplied" on every task the web sent.
    assert "No hostname" not in result.stderr + result.stdout


def test_consumers_never_see_a_message_before_it_is_written_nor_the_same_one_twice(tmp_path):
    count = 120
    producer = channel(connect(tmp_path))
    consumers = [channel(connect(tmp_path)) for _ in range(2)]
    received: list[list[dict]] = [[], []]
    errors: list[BaseException] = []
    done = threading.Event()

    def produce() -> None:
        for n in range(count):
            producer._put("celery", {"n": n, "body": "x" * PAYLOAD_BYTES})
        done.set()

    def consume(index: int) -> None:
        while True:
            try:
                received[index].append(consumers[index]._get("celery"))
            except Empty:
                if done.is_set() and not list((tmp_path / "out").glob("*.msg")):
                    return
            except BaseException as exc:  # a half-written message fails to decode here
                errors.append(exc)
                return

    run_all(produce, lambda: consume(0), lambda: consume(1))

    assert errors == []
    numbers = [message["n"] for batch in received for message in batch]
    assert sorted(numbers) == list(range(count))  # each exactly once
    assert all(len(message["body"]) == PAYLOAD_BYTES for batch in received for message in batch)
    # Claimed messages are removed, and nothing is left half-written in the broker's folders.
    assert [p.name for p in (tmp_path / "processed").iterdir()] == []
    assert [p.name for p in (tmp_path / "out").iterdir()] == []


def test_a_consumer_takes_messages_oldest_first(tmp_path):
    chan = channel(connect(tmp_path))
    for n in range(5):
        chan._put("q", {"n": n})
    chan._put("other", {"n": "elsewhere"})
    assert [chan._get("q")["n"] for _ in range(5)] == [0, 1, 2, 3, 4]
    with pytest.raises(Empty):
        chan._get("q")
    assert chan._get("other") == {"n": "elsewhere"}


def test_exchange_tables_are_read_whole_while_queues_bind_and_unbind(tmp_path):
    binders = [channel(connect(tmp_path)) for _ in range(4)]
    reader = channel(connect(tmp_path))
    errors: list[BaseException] = []
    done = threading.Event()

    def bind(index: int) -> None:
        chan = binders[index]
        for n in range(40):
            chan._queue_bind("broadcast", "", "", f"q{index}-{n}")
            if n % 2:
                chan._delete(f"q{index}-{n}", "broadcast", "", "")

    def read() -> None:
        while not done.is_set():
            try:
                reader.get_table("broadcast")
            except BaseException as exc:
                errors.append(exc)
                return

    readers = [threading.Thread(target=read) for _ in range(2)]
    for thread in readers:
        thread.start()
    run_all(*(lambda i=i: bind(i) for i in range(4)))
    done.set()
    for thread in readers:
        thread.join(10)

    assert errors == []
    # No binding lost to a concurrent writer, and every unbinding applied.
    queues = sorted(entry.queue for entry in reader.get_table("broadcast"))
    assert queues == sorted(f"q{i}-{n}" for i in range(4) for n in range(0, 40, 2))


def test_a_fanout_publish_reaches_every_bound_queue(tmp_path):
    chan = channel(connect(tmp_path))
    for queue in ("a", "b"):
        chan._queue_bind("broadcast", "", "", queue)
    chan._queue_bind("broadcast", "", "", "a")  # binding twice keeps one entry
    chan._put_fanout("broadcast", {"ping": 1}, "")
    assert chan._get("a") == {"ping": 1} and chan._get("b") == {"ping": 1}
    with pytest.raises(Empty):
        chan._get("a")


def test_a_file_left_by_a_producer_that_died_mid_write_is_removed_once_abandoned(tmp_path):
    chan = channel(connect(tmp_path))
    out = tmp_path / "out"
    abandoned, fresh = out / ".dead.partial", out / ".writing.partial"
    abandoned.write_bytes(b'{"half')
    fresh.write_bytes(b'{"half')
    os.utime(abandoned, (time.time() - ABANDONED_AFTER_SECONDS - 1,) * 2)
    chan._put("q", {"n": 1})
    assert chan._get("q") == {"n": 1}
    assert not abandoned.exists() and fresh.exists()  # a write still under way is left to finish
