"""GET /readyz: ready only while the table, the bucket and the queue answer; /healthz regardless."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from imagepipe.core.aws import make_clients
from imagepipe.core.provision import provision
from imagepipe.local.stack import free_port, local_environ, start_moto, stop_processes
from imagepipe.local.state import local_session


def test_ready_when_every_part_answers(app: Any) -> None:
    response = app.test_client().get("/readyz")

    assert response.status_code == 200
    assert response.get_json() == {"status": "ready",
                                   "checks": {"table": "ok", "bucket": "ok", "queue": "ok"}}


def test_not_ready_names_the_part_that_is_missing(settings, clients, store, resources) -> None:
    from imagepipe.app import create_app

    clients.sqs.delete_queue(QueueUrl=resources.queue_url)
    app = create_app(settings, clients, store)

    response = app.test_client().get("/readyz")

    assert response.status_code == 503
    error = response.get_json()["error"]
    assert error["code"] == "not_ready"
    assert error["checks"]["table"] == error["checks"]["bucket"] == "ok"
    assert error["checks"]["queue"] != "ok"


@pytest.mark.slow
def test_not_ready_while_the_local_endpoint_is_down_and_ready_again_after(settings) -> None:
    """The front keeps running through an endpoint restart; /healthz says up all along."""
    from imagepipe.app import create_app

    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    env = local_environ(endpoint)
    local = dataclasses.replace(settings, endpoint_url=endpoint, auth=False)
    moto = start_moto("127.0.0.1", port, env)
    try:
        provision(local, make_clients(local, local_session()))
        # The front's own clients, as `make run` builds them.
        front = create_app(local).test_client()
        assert front.get("/readyz").status_code == 200

        stop_processes(moto)
        down = front.get("/readyz")
        assert down.status_code == 503
        assert set(down.get_json()["error"]["checks"].values()) != {"ok"}
        assert front.get("/healthz").status_code == 200

        moto = start_moto("127.0.0.1", port, env)
        # moto keeps nothing across a restart: `make run` provisions again, as here.
        provision(local, make_clients(local, local_session()))
        assert front.get("/readyz").status_code == 200
    finally:
        stop_processes(moto)
