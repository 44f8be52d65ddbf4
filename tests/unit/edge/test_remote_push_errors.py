"""How the edge reads the `err` of a connector's answer to a configuration push: burrow's
connector sends text, cloudflared marshals Go errors into JSON structures (often `{}`)."""

from __future__ import annotations

import asyncio
import json

import pytest

from burrow.edge.remote_config import _PushHandler, describe_push_error


@pytest.mark.parametrize(
    ("err", "expected"),
    [
        (None, None),
        ("", None),
        (
            'strconv.ParseInt: parsing "10s": invalid syntax',
            'strconv.ParseInt: parsing "10s": invalid syntax',
        ),
        ({}, "the connector reported an error without details (see its log)"),
        (
            {"Func": "ParseInt", "Num": '"10s"', "Err": {}},
            '{"Err":{},"Func":"ParseInt","Num":"\\"10s\\""}',
        ),
        ({"Offset": 12}, '{"Offset":12}'),
    ],
)
def test_describe_push_error(err: object, expected: str | None) -> None:
    assert describe_push_error(err) == expected


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (b'{"lastAppliedVersion":2,"err":null}', (2, None)),
        (b'{"lastAppliedVersion":2,"err":{}}', (2, describe_push_error({}))),
        (
            json.dumps({"lastAppliedVersion": 2, "err": {"Func": "ParseInt", "Err": {}}}).encode(),
            (2, '{"Err":{},"Func":"ParseInt"}'),
        ),
    ],
)
async def test_cloudflared_shaped_answers(body: bytes, expected: tuple[int, str | None]) -> None:
    """The exact bodies cloudflared 2026.8 sends (observed in the interop test)."""
    result: asyncio.Future[tuple[int, str | None]] = asyncio.get_running_loop().create_future()
    handler = _PushHandler(result)

    class _Stream:
        def consumed(self, n: int) -> None:
            pass

    handler.on_headers(_Stream(), [(b":status", b"200")], False)  # type: ignore[arg-type]
    handler.on_data(_Stream(), body, True)  # type: ignore[arg-type]
    assert result.result() == expected
