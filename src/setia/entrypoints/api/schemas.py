"""OpenAPI descriptions of bodies and answers, kept beside the handlers that use them.

The services check every body themselves (with errors naming the field); these
schemas tell clients, /docs and schemathesis what the server accepts and says.
"""

from __future__ import annotations

from typing import Any

DECIMAL = {"type": "string", "pattern": r"^[0-9]+(\.[0-9]+)?$", "examples": ["42.50"]}
TIME = {"type": "string", "format": "date-time", "examples": ["2027-03-01T10:00:00+08:00"]}

PROBLEM: dict[str, Any] = {
    "type": "object",
    "required": ["type", "title", "status", "detail"],
    "properties": {
        "type": {"type": "string"},
        "title": {"type": "string"},
        "status": {"type": "integer"},
        "detail": {"type": "string"},
        "field": {"type": "string"},
    },
}
_problem = {"content": {"application/problem+json": {"schema": PROBLEM}}}
PROBLEM_RESPONSES: dict[int | str, dict[str, Any]] = {
    code: {"description": text, **_problem}
    for code, text in [
        (400, "malformed JSON"),
        (401, "no or a wrong API key"),
        (403, "wrong scope"),
        (404, "not found"),
        (409, "conflict with the current state"),
        (413, "body over 1 MiB"),
        (415, "not JSON"),
        (422, "invalid input"),
        (503, "busy: retry after Retry-After seconds"),
    ]
}


def _json_body(schema: dict[str, Any], *, also_yaml: bool = False) -> dict[str, Any]:
    content = {"application/json": {"schema": schema}}
    if also_yaml:
        content["application/yaml"] = {"schema": {"type": "string"}}
    return {"requestBody": {"required": True, "content": content}}


LINE = {
    "type": "object",
    "required": ["sku", "amount"],
    "additionalProperties": False,
    "properties": {
        "sku": {"type": "string", "minLength": 1},
        "category": {"type": "string"},
        "quantity": {"type": "integer", "minimum": 1},
        "amount": DECIMAL,
    },
}
EVENT = {
    "type": "object",
    "required": ["id", "type", "member", "occurred_at"],
    "additionalProperties": False,
    "properties": {
        "id": {"type": "string", "minLength": 1, "maxLength": 128},
        "type": {"type": "string", "examples": ["purchase", "refund", "review"]},
        "member": {"type": "string", "minLength": 1, "maxLength": 128},
        "occurred_at": TIME,
        "order_id": {"type": "string"},
        "amount": DECIMAL,
        "currency": {"type": "string"},
        "store": {"type": "string"},
        "channel": {"type": "string"},
        "partner": {"type": "string", "maxLength": 64},  # a coalition partner (docs/partners.md)
        "lines": {"type": "array", "items": LINE},
        "attributes": {"type": "object"},
    },
}
EVENT_BODY = _json_body(EVENT)
BATCH_BODY = _json_body(
    {
        "type": "object",
        "required": ["events"],
        "additionalProperties": False,
        "properties": {
            "events": {"type": "array", "items": EVENT, "minItems": 1, "maxItems": 1000}
        },
    }
)
PROGRAMME_BODY = _json_body(
    {"type": "object", "description": "a programme file (docs/programme.md)"}, also_yaml=True
)
MEMBER_BODY = _json_body(
    {
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "name": {"type": "string"},
            "email": {"type": "string"},
            "phone": {"type": "string"},
            "birthday": {"type": "string", "format": "date"},
            "attributes": {"type": "object"},
            "enrolled_at": TIME,
        },
    }
)
REDEMPTION_BODY = _json_body(
    {
        "type": "object",
        "required": ["member"],
        "additionalProperties": False,
        "properties": {
            "member": {"type": "string"},
            "reward": {"type": "string"},
            "points": {"type": "integer", "minimum": 1},
            "hold": {"type": "boolean"},
            "partner": {"type": "string"},  # where the points are burned (docs/partners.md)
        },
    }
)
ADJUSTMENT_BODY = _json_body(
    {
        "type": "object",
        "required": ["member", "points", "reason"],
        "additionalProperties": False,
        "properties": {
            "member": {"type": "string"},
            "points": {"type": "integer"},
            "reason": {"type": "string"},
        },
    }
)

REVERSAL_BODY = _json_body({
    "type": "object", "required": ["ref", "reason"], "additionalProperties": False,
    "properties": {"ref": {"type": "string", "examples": ["adjust:key-1", "till-7-000124"]},
                   "reason": {"type": "string"}},
})

BALANCES = {
    "type": "object",
    "required": ["available", "pending", "reserved"],
    "properties": {k: {"type": "integer"} for k in ("available", "pending", "reserved")},
}
TIER = {
    "type": "object",
    "required": ["id", "name", "multiplier"],
    "properties": {
        "id": {"type": "string"},
        "name": {"type": "string"},
        "multiplier": {"type": "string"},
        "next": {"anyOf": [{"type": "object"}, {"type": "null"}]},
    },
}
MEMBER_RESPONSE = {
    "description": "the member",
    "content": {
        "application/json": {
            "schema": {
                "type": "object",
                "required": [
                    "id",
                    "name",
                    "email",
                    "phone",
                    "birthday",
                    "attributes",
                    "enrolled_at",
                    "tier",
                    "balances",
                    "expiring",
                ],
                "properties": {
                    "id": {"type": "string"},
                    "tier": TIER,
                    "balances": BALANCES,
                    "expiring": {"type": "array", "items": {"type": "object"}},
                },
            }
        }
    },
}
EVENT_RESULT = {
    "description": "what the event earned",
    "content": {
        "application/json": {
            "schema": {
                "type": "object",
                "required": ["event", "status", "points", "postings", "balances", "tier"],
                "properties": {
                    "event": {"type": "string"},
                    "status": {"enum": ["applied", "replayed", "simulated"]},
                    "points": {"type": "integer"},
                    "balances": BALANCES,
                    "tier": TIER,
                    "postings": {
                        "type": "array",
                        "items": {
                            "type": "object",
                            "properties": {
                                "rule": {"type": ["string", "null"]},
                                "points": {"type": "integer"},
                                "explanation": {"type": "string"},
                            },
                        },
                    },
                },
            }
        }
    },
}
REDEMPTION_RESPONSE = {
    "description": "the redemption",
    "content": {
        "application/json": {
            "schema": {
                "type": "object",
                "required": ["id", "status", "member", "reward", "points", "voucher", "balances"],
                "properties": {
                    "id": {"type": "string"},
                    "status": {"enum": ["held", "captured", "released"]},
                    "member": {"type": "string"},
                    "reward": {"type": ["string", "null"]},
                    "points": {"type": "integer"},
                    "balances": BALANCES,
                    "voucher": {
                        "anyOf": [{"type": "null"}, {"type": "object", "required": ["code"]}]
                    },
                },
            }
        }
    },
}
