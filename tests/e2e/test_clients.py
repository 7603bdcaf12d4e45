"""The relay URL the gateway prints works in the major Nostr client kits: nostr-tools and NDK (Node, driven
through ``clients/check.mjs``) and nostr-sdk (Python). Each connects with ``ws://…/<64-hex relay key>?token=…``
(NDK rewrites it to ``…/<key>/?token=…/``), publishes with its own fresh key, reads the event back, receives a
live event published by another client, and fetches the NIP-11 document (with the kit's helper when it has
one). The relay is a reference worker that accepts any key; its token is issued through the gateway's API.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import urllib.request
from datetime import timedelta

import pytest

from hypertuna.compat.relaykeys import relay_url
from tests.e2e.harness import ROOT

CLIENTS_DIR = ROOT / "clients"
NIP11_FIELDS = {"name", "description", "supported_nips", "software", "version", "limitation", "pubkey"}


@pytest.fixture(scope="module")
def printed(stack):
    """The relay URL as the gateway prints it, and the worker's token marker."""
    worker = stack.start_worker("clients", "--issue-token")
    token = worker.wait_marker("HYPERTUNA_WORKER_TOKEN")
    url = relay_url(stack.ws_url, token["relayKey"], gateway_path=token["gatewayPath"], token=token["token"])
    assert url == f"{stack.ws_url}/{token['relayKey']}?token={token['token']}"
    return url, token


def _check_nip11(document: dict, token: dict) -> None:
    assert NIP11_FIELDS <= set(document), document
    assert document["name"] == "clients"
    assert document["pubkey"] == token["pubkey"]
    assert 1 in document["supported_nips"] and 11 in document["supported_nips"]
    assert document["limitation"]["auth_required"] is False
    assert document["limitation"]["max_message_length"] > 0


@pytest.mark.parametrize("library", ["nostr-tools", "ndk"])
def test_node_client_kits_use_the_printed_url(printed, library):
    if not (CLIENTS_DIR / "node_modules").is_dir():
        pytest.fail("the client kits are missing: `make install-clients` (make test runs it) installs them")
    url, token = printed
    result = subprocess.run(
        ["node", "check.mjs", library, url], cwd=CLIENTS_DIR, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr[-3000:]
    seen = json.loads(result.stdout.strip().splitlines()[-1])
    if library == "ndk":  # NDK appends "/" to the URL, so after the token value
        assert seen["url"] == url + "/"
    assert seen["readBack"] == [seen["published"]]
    assert seen["live"] and seen["live"] != seen["published"]
    _check_nip11(seen["nip11"], token)


def test_nostr_sdk_uses_the_printed_url(printed):
    from nostr_sdk import (
        Client,
        EventBuilder,
        Filter,
        Keys,
        Kind,
        RelayInformationDocument,
        RelayUrl,
        ReqTarget,
        Timestamp,
    )

    url, token = printed
    relay = RelayUrl.parse(url)

    async def connected() -> Client:
        client = Client()  # events are signed with each client's own keys below
        await client.add_relay(relay)
        await client.connect()
        return client

    async def scenario() -> None:
        author = Keys.generate()
        writer, reader = await connected(), await connected()
        stored = EventBuilder(Kind(1), "nostr-sdk stored").finalize(author)
        output = await writer.send_event(stored)
        assert output.success == [relay], output.failed
        mine = Filter().author(author.public_key()).kind(Kind(1))
        found = await reader.fetch_events(ReqTarget.single(relay, [mine]), timedelta(seconds=15))
        assert [e.id().to_hex() for e in found] == [stored.id().to_hex()]

        notifications = reader.notifications()
        await reader.subscribe(ReqTarget.single(relay, [mine.since(Timestamp.now())]))
        live = EventBuilder(Kind(1), "nostr-sdk live").finalize(author)
        assert (await writer.send_event(live)).success == [relay]
        while True:
            notification = await asyncio.wait_for(notifications.next(), 15)
            assert notification is not None, "the notification stream ended"
            if notification.is_new_event() and notification.event.id().to_hex() == live.id().to_hex():
                break
        await writer.shutdown()
        await reader.shutdown()

    asyncio.run(scenario())
    # nostr-sdk has no NIP-11 fetcher: fetch as NIP-11 says and parse with its document type.
    request = urllib.request.Request(url.replace("ws://", "http://"), headers={"Accept": "application/nostr+json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.headers["Access-Control-Allow-Origin"] == "*"
        body = response.read().decode()
    document = RelayInformationDocument.from_json(body)
    assert document.name() == "clients" and 11 in document.supported_nips()
    _check_nip11(json.loads(body), token)
