"""Classifying what the load generator saw into one `Outcome` per request."""

from __future__ import annotations

import pytest

from bench.outcome import BodyFields, ClientError, classify, read_body
from bench.records import Outcome


@pytest.mark.parametrize("status", [200, 201, 202, 204, 299])
def test_any_2xx_is_accepted(status: int) -> None:
    assert classify(status, None, None) is Outcome.ACCEPTED


def test_503_naming_the_breaker_is_breaker_open() -> None:
    assert classify(503, "breaker_open", None) is Outcome.BREAKER_OPEN


@pytest.mark.parametrize("cause", [None, "peer_unavailable", "stream_full"])
def test_503_without_the_breaker_is_a_server_error(cause: str | None) -> None:
    assert classify(503, cause, None) is Outcome.SERVER_ERROR


@pytest.mark.parametrize("cause", [None, "timeout"])
def test_504_is_a_timeout(cause: str | None) -> None:
    assert classify(504, cause, None) is Outcome.TIMEOUT


@pytest.mark.parametrize("client_error", [ClientError.TIMEOUT, ClientError.ABANDONED])
def test_no_answer_within_the_client_timeout_is_a_timeout(
    client_error: ClientError,
) -> None:
    assert classify(0, None, client_error) is Outcome.TIMEOUT


@pytest.mark.parametrize(
    "client_error",
    [
        ClientError.REFUSED,
        ClientError.RESET,
        ClientError.CLOSED,
        ClientError.BAD_RESPONSE,
        f"{ClientError.OS_ERROR}:EMFILE",
    ],
)
def test_no_http_answer_is_refused(client_error: str) -> None:
    assert classify(0, None, client_error) is Outcome.REFUSED


def test_status_zero_without_a_client_error_is_refused() -> None:
    assert classify(0, None, None) is Outcome.REFUSED


@pytest.mark.parametrize(
    ("status", "cause"), [(500, "peer_failed"), (502, None), (599, None)]
)
def test_other_5xx_is_a_server_error(status: int, cause: str | None) -> None:
    assert classify(status, cause, None) is Outcome.SERVER_ERROR


@pytest.mark.parametrize("status", [100, 301, 304])
def test_answers_outside_the_contract_are_server_errors(status: int) -> None:
    assert classify(status, None, None) is Outcome.SERVER_ERROR


@pytest.mark.parametrize(
    ("status", "cause"), [(400, "invalid_body"), (404, None), (429, None)]
)
def test_4xx_is_a_client_error(status: int, cause: str | None) -> None:
    assert classify(status, cause, None) is Outcome.CLIENT_ERROR


@pytest.mark.parametrize("status", [-1, 42, 600])
def test_a_status_that_is_not_http_is_refused_loudly(status: int) -> None:
    with pytest.raises(ValueError, match=str(status)):
        classify(status, None, None)


def test_body_fields_are_read_from_json() -> None:
    assert read_body(b'{"error": "breaker_open", "detail": "x"}') == BodyFields(
        error_cause="breaker_open", request_id=None
    )
    assert read_body(b'{"id": "ab12", "status": "accepted"}') == BodyFields(
        error_cause=None, request_id="ab12"
    )


@pytest.mark.parametrize(
    "body", [b"", b"not json", b"[1, 2]", b'{"error": 3, "id": null}']
)
def test_bodies_without_the_fields_give_none(body: bytes) -> None:
    assert read_body(body) == BodyFields(None, None)
