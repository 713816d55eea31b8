"""Who may call what on /v1, checked on the real router (FastAPI's TestClient: its client address
is not a loopback one, like a visitor from the network). The admin and key checks run before any
engine work, so these need no models; the served app's own tests cover the rest."""

from __future__ import annotations

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from api.routes import ApiContext, build_router

KEY = "access-key-0123456789"


def client(api_key: str | None, loopback_only: bool) -> TestClient:
    app = FastAPI()
    app.include_router(build_router(ApiContext(engine=None, api_key=api_key, loopback_only=loopback_only)))
    return TestClient(app, raise_server_exceptions=False)


def test_deleting_a_voice_from_the_network_without_a_key_is_refused_with_403():
    response = client(api_key=None, loopback_only=False).delete("/v1/voices/calm-narrator")
    assert response.status_code == 403
    error = response.json()["error"]
    assert "admin key" in error["message"] and "--api-key" in error["message"]


@pytest.mark.parametrize("header", [None, "Bearer wrong-key-000", "Basic " + KEY, "Bearer"])
def test_a_server_with_a_key_refuses_requests_without_it_before_any_work(header):
    headers = {"Authorization": header} if header else {}
    response = client(api_key=KEY, loopback_only=False).delete("/v1/voices/calm-narrator", headers=headers)
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "invalid_api_key"
