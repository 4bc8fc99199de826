"""Issue 13 (scope): the version class a component's API contract needs, table-tested."""

from __future__ import annotations

import copy
import json

import pytest

from releasetrain.core.contract import (
    ContractError,
    class_problem,
    contract_class,
    declared_class,
    diff_contracts,
    load_contract,
)

BASE = {
    "openapi": "3.0.3",
    "info": {"title": "cart", "version": "1.0.0"},
    "paths": {
        "/carts/{id}": {
            "parameters": [{"name": "id", "in": "path", "required": True, "schema": {"type": "string"}}],
            "get": {
                "parameters": [{"name": "expand", "in": "query", "schema": {"type": "boolean"}}],
                "responses": {
                    "200": {
                        "description": "a cart",
                        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Cart"}}},
                    },
                    "404": {"description": "no such cart"},
                },
            },
            "put": {
                "requestBody": {
                    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Cart"}}},
                },
                "responses": {"204": {"description": "saved"}},
            },
        },
    },
    "components": {
        "schemas": {
            "Cart": {
                "type": "object",
                "required": ["id"],
                "properties": {
                    "id": {"type": "string"},
                    "total": {"type": "number"},
                    "items": {"type": "array", "items": {"$ref": "#/components/schemas/Item"}},
                    "parent": {"$ref": "#/components/schemas/Cart"},  # a cycle: followed once
                },
            },
            "Item": {"type": "object", "properties": {"sku": {"type": "string"}, "qty": {"type": "integer"}}},
        }
    },
}


def changed(edit) -> dict:
    new = copy.deepcopy(BASE)
    edit(new)
    return new


def cart(doc):
    return doc["components"]["schemas"]["Cart"]


CASES = [
    ("nothing", lambda d: None, "patch", []),
    ("removed endpoint", lambda d: d["paths"]["/carts/{id}"].pop("put"), "major", ["removed endpoint PUT /carts/{id}"]),
    (
        "added endpoint",
        lambda d: d["paths"].update({"/health": {"get": {"responses": {"200": {"description": "ok"}}}}}),
        "minor",
        ["added endpoint GET /health"],
    ),
    (
        "removed response field (through a $ref)",
        lambda d: cart(d)["properties"].pop("total"),
        "major",
        ["removed field GET /carts/{id} response 200.total", "removed field PUT /carts/{id} request.total"],
    ),
    (
        "changed field type",
        lambda d: cart(d)["properties"]["total"].update(type="string"),
        "major",
        ["changed type of GET /carts/{id} response 200.total: number -> string"],
    ),
    (
        "changed nested item type",
        lambda d: d["components"]["schemas"]["Item"]["properties"]["qty"].update(type="number"),
        "major",
        ["changed type of GET /carts/{id} response 200.items[].qty: integer -> number"],
    ),
    (
        "added optional field",
        lambda d: cart(d)["properties"].update(currency={"type": "string"}),
        "minor",
        ["added field GET /carts/{id} response 200.currency", "added field PUT /carts/{id} request.currency"],
    ),
    (
        "added required request field",
        lambda d: (cart(d)["properties"].update(currency={"type": "string"}), cart(d)["required"].append("currency")),
        "major",
        ["added required field PUT /carts/{id} request.currency"],
    ),
    (
        "field became required",
        lambda d: cart(d)["required"].append("total"),
        "major",
        ["field PUT /carts/{id} request.total became required"],
    ),
    (
        "removed parameter",
        lambda d: d["paths"]["/carts/{id}"]["get"].pop("parameters"),
        "major",
        ["removed query parameter expand of GET /carts/{id}"],
    ),
    (
        "added optional parameter",
        lambda d: d["paths"]["/carts/{id}"]["get"]["parameters"].append(
            {"name": "lang", "in": "query", "schema": {"type": "string"}}
        ),
        "minor",
        ["added query parameter lang of GET /carts/{id}"],
    ),
    (
        "added required parameter",
        lambda d: d["paths"]["/carts/{id}"]["get"]["parameters"].append(
            {"name": "tenant", "in": "header", "required": True, "schema": {"type": "string"}}
        ),
        "major",
        ["added required header parameter tenant of GET /carts/{id}"],
    ),
    (
        "changed parameter type",
        lambda d: d["paths"]["/carts/{id}"]["parameters"][0]["schema"].update(type="integer"),
        "major",
        ["changed type of path parameter id of GET /carts/{id}: string -> integer"],
    ),
    (
        "removed response status",
        lambda d: d["paths"]["/carts/{id}"]["get"]["responses"].pop("404"),
        "major",
        ["removed response 404 of GET /carts/{id}"],
    ),
]


@pytest.mark.parametrize(("case", "edit", "klass", "expected"), CASES, ids=[c[0] for c in CASES])
def test_the_diff_rules(case, edit, klass, expected):
    changes = diff_contracts(BASE, changed(edit))
    found = [c.what for c in changes if c.level == klass] if klass != "patch" else [c.what for c in changes]
    for what in expected:
        assert what in found, (case, [c.what for c in changes])
    assert contract_class(changes) == klass


@pytest.mark.parametrize(
    ("live", "declared", "klass"),
    [
        ("1.4.2", "2.0.0", "major"),
        ("1.4.2", "1.5.0", "minor"),
        ("1.4.2", "1.4.3", "patch"),
        ("1.4.2", "1.4.2", "none"),
        ("2.0.0-rc.1", "2.0.0-rc.2", "none"),
    ],
)
def test_the_declared_step(live, declared, klass):
    assert declared_class(live, declared) == klass


def test_a_declared_version_smaller_than_the_contract_needs_is_refused_with_the_breaking_changes():
    breaking = diff_contracts(BASE, changed(lambda d: d["paths"]["/carts/{id}"].pop("put")))
    problem = class_problem("cart-api", "1.4.2", "1.5.0", breaking)
    assert problem == (
        "component cart-api 1.4.2 -> 1.5.0 is a minor version step, but its API contract changes need a major "
        "version: removed endpoint PUT /carts/{id}"
    )
    assert class_problem("cart-api", "1.4.2", "2.0.0", breaking) is None
    feature = diff_contracts(BASE, changed(lambda d: cart(d)["properties"].update(currency={"type": "string"})))
    assert "need a minor version" in class_problem("cart-api", "1.4.2", "1.4.3", feature)
    assert class_problem("cart-api", "1.4.2", "1.5.0", feature) is None
    assert class_problem("cart-api", "1.4.2", "1.4.3", []) is None


def test_contracts_are_validated_by_the_openapi_library():
    assert load_contract(json.dumps(BASE).encode(), "cart-api/openapi.json")["info"]["title"] == "cart"
    with pytest.raises(ContractError, match="cart-api/openapi.yaml: not a valid OpenAPI document"):
        load_contract(b"openapi: 3.0.3\ninfo: {title: x}\npaths: {}\n", "cart-api/openapi.yaml")
    with pytest.raises(ContractError, match="must be a mapping"):
        load_contract(b"- a list", "x.yaml")
    with pytest.raises(ContractError, match="not YAML or JSON"):
        load_contract(b"{: :", "x.yaml")


def test_the_same_contract_needs_no_step_and_an_older_version_may_not_change_it():
    assert class_problem("cart-api", "1.4.2", "1.4.2", []) is None, "the live version packaged again"
    breaking = diff_contracts(BASE, changed(lambda d: d["paths"]["/carts/{id}"].pop("put")))
    problem = class_problem("cart-api", "1.4.2", "0.9.0", breaking)
    assert problem == (
        "component cart-api 0.9.0 is older than 1.4.2, live in production, but changes its API contract: "
        "removed endpoint PUT /carts/{id}"
    )
    assert class_problem("cart-api", "1.4.2", "1.3.9", breaking) is not None


@pytest.mark.parametrize("ref", ["file:///etc/passwd", "http://169.254.169.254/latest/meta-data", "other.yaml#/X"])
def test_a_contract_may_not_point_outside_itself(ref):
    doc = copy.deepcopy(BASE)
    doc["components"]["schemas"]["Item"] = {"$ref": ref}
    with pytest.raises(ContractError, match=r"\$ref may only point inside the document \(#/...\), not to "):
        load_contract(json.dumps(doc).encode(), "cart-api/openapi.json")
