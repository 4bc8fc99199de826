"""The journey hook against a small cart API (a local HTTP server in a thread)."""

from __future__ import annotations

import base64
import http.server
import json
import logging
import threading
import uuid

import pytest

from releasetrain.core.journey import JourneyError, load_journey, parse_journey
from releasetrain.hooks.journey import JourneyHook
from tests.conftest import PROJECT_ROOT

USER, PASSWORD = "shopper", "s3cret-cart-pass"
CHECKOUT = PROJECT_ROOT / "include" / "journeys" / "checkout.yaml"


class CartApi(http.server.BaseHTTPRequestHandler):
    """``/shop/app/cart``: POST creates a cart, GET ``cart/{id}`` reads it, POST ``cart/{id}/checkout``
    orders it, for anyone (it is the application, not the deploy API); a ``session`` cookie
    is set on the first answer. It records every request's headers."""

    carts: dict[str, dict]
    seen: list[dict]

    def log_message(self, *args):
        pass

    def _send(self, code, payload, cookie=None):
        body = json.dumps(payload).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        if cookie:
            self.send_header("Set-Cookie", f"session={cookie}; Path=/")
        self.end_headers()
        self.wfile.write(body)

    def _handle(self, method):
        length = int(self.headers.get("Content-Length") or 0)
        body = json.loads(self.rfile.read(length)) if length else None
        self.seen.append({"method": method, "path": self.path, "headers": dict(self.headers), "json": body})
        parts = self.path.strip("/").split("/")
        if parts[:3] != ["shop", "app", "cart"]:
            return self._send(404, {"error": f"no route {self.path}"})
        rest = parts[3:]
        if method == "POST" and not rest:
            if not isinstance(body, dict) or "sku" not in body:
                return self._send(400, {"error": "sku required"})
            cart_id = uuid.uuid4().hex[:12]
            self.carts[cart_id] = {"id": cart_id, "items": [body["sku"]], "state": "open"}
            return self._send(200, {"ok": True, **self.carts[cart_id]}, cookie="abc123")
        cart = self.carts.get(rest[0]) if rest else None
        if cart is None:
            return self._send(404, {"ok": False, "error": "no such cart"})
        if method == "GET" and len(rest) == 1:
            return self._send(200, {"ok": True, **cart})
        if method == "POST" and rest[1:] == ["checkout"]:
            cart["state"] = "ordered"
            return self._send(200, {"ok": True, "order": f"o-{cart['id']}"})
        return self._send(405, {"error": "method not allowed"})

    def do_GET(self):  # noqa: N802
        self._handle("GET")

    def do_POST(self):  # noqa: N802
        self._handle("POST")


def connection(url, password=PASSWORD):
    return json.dumps({"conn_type": "http", "host": url, "login": USER, "password": password})


@pytest.fixture
def cart_api(monkeypatch):
    handler = type("Handler", (CartApi,), {"carts": {}, "seen": []})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}/shop"
    monkeypatch.setenv("AIRFLOW_CONN_CART_SHOP", connection(base))
    try:
        yield handler
    finally:
        server.shutdown()
        server.server_close()


def test_the_example_checkout_journey_parses():
    journey = load_journey(CHECKOUT, PROJECT_ROOT)
    assert journey.name == "checkout" and [s.name for s in journey.steps] == ["add to cart", "view cart", "check out"]


def test_checkout_journey_runs_through_the_connection(cart_api):
    result = JourneyHook("cart_shop").run(load_journey(CHECKOUT))
    assert result.ok, result.summary
    cart_id = result.extracted["cart_id"]
    assert len(cart_id) == 12 and cart_api.carts[cart_id]["state"] == "ordered"
    assert [(r["method"], r["path"]) for r in cart_api.seen] == [
        ("POST", "/shop/app/cart"),
        ("GET", f"/shop/app/cart/{cart_id}"),
        ("POST", f"/shop/app/cart/{cart_id}/checkout"),
    ]
    assert cart_api.seen[0]["json"] == {"sku": "A1"}
    assert [(s.name, s.ok, s.status) for s in result.steps] == [
        ("add to cart", True, 200),
        ("view cart", True, 200),
        ("check out", True, 200),
    ]
    assert all(s.elapsed_ms > 0 for s in result.steps)
    assert json.loads(json.dumps(result.to_dict()))["extracted"] == {"cart_id": cart_id}


def test_values_headers_and_cookies_go_with_the_requests(cart_api):
    journey = parse_journey(
        {
            "name": "cart",
            "steps": [
                {
                    "name": "add",
                    "request": {"method": "POST", "path": "app/cart", "json": {"sku": "${sku}"}},
                    "extract": {"cart_id": "id"},
                },
                {
                    "name": "view",
                    "request": {"path": "app/cart/${cart_id}", "headers": {"X-Request-Id": "r-${cart_id}"}},
                    "expect": {"json": {"items.0": "${sku}", "state": "open"}, "contains": "${cart_id}"},
                },
            ],
        }
    )
    result = JourneyHook("cart_shop").run(journey, {"sku": "B7"})
    assert result.ok, result.summary
    view = cart_api.seen[1]["headers"]
    assert view["X-Request-Id"] == f"r-{result.extracted['cart_id']}"
    assert view["Cookie"] == "session=abc123"  # one session for the whole journey


def test_an_unexpected_answer_stops_the_journey(cart_api):
    journey = parse_journey(
        {
            "name": "lost",
            "steps": [
                {"name": "view", "request": {"path": "app/cart/nope"}, "expect": {"status": 200}},
                {"name": "never", "request": {"path": "app/cart"}},
            ],
        }
    )
    result = JourneyHook("cart_shop").run(journey)
    assert not result.ok and result.failed_step == "view" and result.skipped == ["never"]
    assert result.steps[0].error == 'HTTP 404, expected 200: {"ok": false, "error": "no such cart"}'
    assert len(cart_api.seen) == 1


def test_the_deploy_targets_credentials_never_reach_the_application(cart_api, caplog, capsys):
    """Issue 11 finding 6: journeys called the application with the deploy target's credentials."""
    caplog.set_level(logging.DEBUG)
    result = JourneyHook("cart_shop").run(load_journey(CHECKOUT))
    assert result.ok, result.summary
    assert cart_api.seen and not [r for r in cart_api.seen if "Authorization" in r["headers"]]
    captured = capsys.readouterr()
    for text in (json.dumps(result.to_dict()), caplog.text, captured.out, captured.err):
        assert PASSWORD not in text
    secret = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
    assert not [r for r in cart_api.seen if secret in json.dumps(r)]


def test_an_unreachable_target_is_a_failed_step_naming_the_connection(monkeypatch):
    monkeypatch.setenv("AIRFLOW_CONN_CART_GONE", connection("http://127.0.0.1:9/shop"))
    result = JourneyHook("cart_gone", timeout=5).run(load_journey(CHECKOUT))
    assert not result.ok and result.failed_step == "add to cart" and result.steps[0].status is None
    error = result.steps[0].error
    assert error.startswith("request failed: POST app/cart on 'cart_gone' failed:") and PASSWORD not in error


def test_a_missing_connection_is_a_failed_step_naming_it():
    result = JourneyHook("cart_nowhere").run(load_journey(CHECKOUT))
    assert not result.ok and result.steps[0].error.startswith("request failed: connection 'cart_nowhere':")


def test_an_unknown_variable_raises_before_any_request(cart_api):
    journey = parse_journey({"name": "x", "steps": [{"name": "view", "request": {"path": "app/cart/${cart}"}}]})
    with pytest.raises(JourneyError, match=r"journey 'x': steps\[0\].request.path: step 'view': unknown variable"):
        JourneyHook("cart_shop").run(journey)
    assert cart_api.seen == []
