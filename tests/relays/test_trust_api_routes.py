"""Routes workers call that this gateway does not serve answer JSON, never an HTML page."""

from __future__ import annotations

import pytest

from tests.conftest import hex_key

pytestmark = pytest.mark.django_db


@pytest.mark.parametrize("method", ["get", "post", "put", "delete"])
@pytest.mark.parametrize("path", ["/api/nope", "/api/relays/x/y/z", "/api/relays/abc/members/authorize", "/api/"])
def test_unknown_api_routes_answer_json_404(client, method, path):
    response = getattr(client, method)(path)
    assert response.status_code == 404
    assert response["Content-Type"].startswith("application/json")
    assert response.json()["error"] == "not-found" and path in response.json()["message"]


def test_open_join_pool_answers_a_clean_json_404(client):
    response = client.post(
        f"/api/relays/{hex_key()}/open-join/pool", data={"entries": []}, content_type="application/json"
    )
    assert response.status_code == 404
    assert response.json() == {"error": "not-found", "message": "This gateway does not offer open-join pools."}


def test_known_api_routes_still_answer(client):
    assert client.post("/api/relays", data={}, content_type="application/json").status_code == 400
    assert client.get("/api/schema/").status_code == 200
