"""Admin API for WAF custom rules under ``/api/v1/waf/rules`` (operator tokens only):

    GET    /api/v1/waf/rules            the managed rules, in evaluation order
    POST   /api/v1/waf/rules            {"expression", "action", "id"?, "hostnames"?, ...}
    GET    /api/v1/waf/rules/{id}
    DELETE /api/v1/waf/rules/{id}
    POST   /api/v1/waf/rules/test       {"expression"?, "request": {host, path, method, ...}}

Rules are stored in the control plane; this node applies a change at once, the others within
their poll interval. A malformed expression is refused with 400 and the 1-based `position` of
the error in the error object.
"""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

from burrow.admin.app import context, json_response, principal, read_json
from burrow.admin.auth import CODE_BAD_REQUEST, ApiError, forbidden
from burrow.store.waf_rules import (
    compile_records,
    create_waf_rule,
    delete_waf_rule,
    get_waf_rule,
    list_waf_rules,
)
from burrow.waf.parse import RuleSyntaxError
from burrow.waf.trial import SampleRequest, evaluate_rules, expression_matches

PREFIX = "/api/v1/waf/rules"


def add_routes(router: web.UrlDispatcher) -> None:
    router.add_get(PREFIX, list_rules)
    router.add_post(PREFIX, create_rule)
    router.add_post(PREFIX + "/test", test_rules)
    router.add_get(PREFIX + "/{rule}", get_rule)
    router.add_delete(PREFIX + "/{rule}", delete_rule)


def _operator(request: web.Request) -> None:
    if not principal(request).operator:
        raise forbidden("WAF rules need an operator token")


def syntax_error(exc: RuleSyntaxError) -> web.Response:
    """400 with the position (1-based column) as a field, so tools can point at it."""
    body = {
        "success": False,
        "errors": [
            {
                "code": CODE_BAD_REQUEST,
                "message": f"invalid expression: {exc.message} at position {exc.column}",
                "position": exc.column,
            }
        ],
        "messages": [],
        "result": None,
    }
    return web.Response(
        status=400, body=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )


def _str_list(body: dict[str, Any], key: str) -> list[str]:
    value = body.get(key) or []
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ApiError(400, CODE_BAD_REQUEST, f"{key} must be a list of strings")
    return value


async def list_rules(request: web.Request) -> web.Response:
    _operator(request)
    records = await list_waf_rules(context(request).store)
    return json_response([r.as_json() for r in records])


async def get_rule(request: web.Request) -> web.Response:
    _operator(request)
    record = await get_waf_rule(context(request).store, request.match_info["rule"])
    return json_response(record.as_json())


async def create_rule(request: web.Request) -> web.Response:
    _operator(request)
    body = await read_json(request)
    expression, action = body.get("expression"), body.get("action")
    if not isinstance(expression, str) or not isinstance(action, str):
        raise ApiError(400, CODE_BAD_REQUEST, "expression and action (strings) are required")
    rule_id = body.get("id")
    if rule_id is not None and not isinstance(rule_id, str):
        raise ApiError(400, CODE_BAD_REQUEST, "id must be a string")
    try:
        record = await create_waf_rule(
            context(request).store,
            expression,
            action,
            rule_id=rule_id,
            hostnames=_str_list(body, "hostnames"),
            description=str(body.get("description") or ""),
            enabled=bool(body.get("enabled", True)),
        )
    except RuleSyntaxError as exc:
        return syntax_error(exc)
    await context(request).reload()
    return json_response(record.as_json(), status=201)


async def delete_rule(request: web.Request) -> web.Response:
    _operator(request)
    rule_id = request.match_info["rule"]
    await delete_waf_rule(context(request).store, rule_id)
    await context(request).reload()
    return json_response({"id": rule_id})


async def test_rules(request: web.Request) -> web.Response:
    """One expression (`matched`), or else the managed rules (the edge's verdict)."""
    _operator(request)
    body = await read_json(request)
    sample_json = body.get("request") or {}
    if not isinstance(sample_json, dict):
        raise ApiError(400, CODE_BAD_REQUEST, "request must be an object")
    sample = SampleRequest.from_json(sample_json)
    expression = body.get("expression")
    if expression is not None:
        if not isinstance(expression, str):
            raise ApiError(400, CODE_BAD_REQUEST, "expression must be a string")
        try:
            return json_response({"matched": expression_matches(expression, sample)})
        except RuleSyntaxError as exc:
            return syntax_error(exc)
    rules = compile_records(await list_waf_rules(context(request).store))
    return json_response(evaluate_rules(rules, sample))
