from __future__ import annotations

import json

import pytest

from releasetrain.core.journey import (
    Journey,
    JourneyError,
    JourneyResult,
    StepResult,
    load_journey,
    parse_journey,
    render,
    run_journey,
)
from tests.conftest import PROJECT_ROOT


def journey(*steps, variables=None):
    return parse_journey({"name": "shop", "variables": variables or {}, "steps": list(steps)}, "j.yaml")


def step(name="s", path="app", method="GET", expect=None, extract=None, **request):
    data = {"name": name, "request": {"method": method, "path": path, **request}}
    if expect is not None:
        data["expect"] = expect
    if extract is not None:
        data["extract"] = extract
    return data


class Recorder:
    """A fake ``send``: answers from a list (status, body, elapsed) and records the requests."""

    def __init__(self, *answers):
        self.answers = list(answers)
        self.requests = []

    def __call__(self, method, path, headers, body):
        self.requests.append((method, path, headers, body))
        status, payload, elapsed = self.answers.pop(0)
        text = payload if isinstance(payload, str) else json.dumps(payload)
        return status, text, elapsed


def answer(status=200, payload=None, elapsed=5.0):
    return (status, {} if payload is None else payload, elapsed)


# -- templating --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value, expected",
    [
        pytest.param("app/${id}", "app/c1", id="in-text"),
        pytest.param("${n}", 2, id="whole-keeps-type"),
        pytest.param("n=${n}", "n=2", id="in-text-as-json"),
        pytest.param("${flag}", True, id="whole-bool"),
        pytest.param("a$${id}b", "a${id}b", id="escaped"),
        pytest.param("$id and $ alone", "$id and $ alone", id="only-braces"),
        pytest.param({"k-${id}": ["${id}", {"x": "${n}"}], "y": 1}, {"k-c1": ["c1", {"x": 2}], "y": 1}, id="nested"),
        pytest.param(None, None, id="none"),
    ],
)
def test_render(value, expected):
    assert render(value, {"id": "c1", "n": 2, "flag": True}) == expected


def test_placeholders_fill_path_headers_and_body_in_precedence_order():
    j = journey(
        step(
            method="POST",
            path="shops/${shop}/cart/${sku}",
            headers={"X-Trace": "t-${trace}"},
            json={"sku": "${sku}", "qty": "${qty}", "note": "from ${shop}"},
        ),
        variables={"shop": "default", "sku": "A1", "trace": "0"},
    )
    send = Recorder(answer())
    result = run_journey(j, send, {"shop": "berlin", "qty": 3, "trace": "42"})
    assert result.ok
    assert send.requests == [
        ("POST", "shops/berlin/cart/A1", {"X-Trace": "t-42"}, {"sku": "A1", "qty": 3, "note": "from berlin"})
    ]


def test_extracted_values_feed_later_steps_and_the_result():
    j = journey(
        step("add", method="POST", path="cart", json={}, extract={"cart_id": "id", "first": "items.0.sku"}),
        step("view", path="cart/${cart_id}", expect={"json": {"id": "${cart_id}", "items.0.sku": "${first}"}}),
    )
    body = {"id": 17, "items": [{"sku": "A1"}]}
    send = Recorder(answer(payload=body), answer(payload=body))
    result = run_journey(j, send)
    assert result.ok and result.failed_step is None and result.skipped == []
    assert send.requests[1][1] == "cart/17"
    assert result.extracted == {"cart_id": 17, "first": "A1"}
    assert [s.name for s in result.steps] == ["add", "view"] and all(s.ok for s in result.steps)


def test_inputs_are_what_the_caller_must_give():
    j = journey(
        step("a", path="u/${user}/${region}", extract={"token": "t"}),
        step("b", path="x/${token}", headers={"X": "${user}-${tenant}"}),
        variables={"region": "eu"},
    )
    assert j.inputs() == ["user", "tenant"]


@pytest.mark.parametrize(
    "steps, field",
    [
        pytest.param([step(path="cart/${cart}")], "steps[0].request.path", id="path"),
        pytest.param([step(headers={"X-Id": "${cart}"})], "steps[0].request.headers.X-Id", id="header"),
        pytest.param([step(method="POST", json={"a": ["${cart}"]})], "steps[0].request.json", id="body"),
        pytest.param([step(expect={"json": {"id": "${cart}"}})], "steps[0].expect.json.id", id="expect-json"),
        pytest.param([step(expect={"contains": "${cart}"})], "steps[0].expect.contains", id="contains"),
        pytest.param(
            [step("first", path="a/${cart}"), step("second", extract={"cart": "id"})],
            "steps[0].request.path",
            id="extracted-only-later",
        ),
    ],
)
def test_unknown_variable_names_the_step_and_field_before_sending(steps, field):
    send = Recorder()
    with pytest.raises(JourneyError) as info:
        run_journey(journey(*steps), send, {"given": "x"})
    message = str(info.value)
    assert message.startswith(f"journey 'shop': {field}: step ")
    assert "unknown variable ${cart}" in message and "known: given" in message
    assert send.requests == []


def test_malformed_placeholder_is_an_error():
    with pytest.raises(JourneyError, match=r"steps\[0\].request.path: step 's': malformed placeholder"):
        run_journey(journey(step(path="a/${cart")), Recorder())


# -- expectations --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "expect, reply, error",
    [
        pytest.param({}, answer(200), None, id="default-2xx"),
        pytest.param({}, answer(204, ""), None, id="default-2xx-204"),
        pytest.param({}, answer(302, ""), "HTTP 302, expected 2xx", id="default-not-3xx"),
        pytest.param({"status": 201}, answer(201), None, id="status-int"),
        pytest.param({"status": 201}, answer(200), "HTTP 200, expected 201: {}", id="status-int-bad"),
        pytest.param({"status": [200, 404]}, answer(404), None, id="status-list"),
        pytest.param(
            {"status": 200},
            answer(500, {"error": "injected fault"}),
            'HTTP 500, expected 200: {"error": "injected fault"}',
            id="status-quotes-answer",
        ),
        pytest.param({"json": {"ok": True}}, answer(payload={"ok": True}), None, id="json-ok"),
        pytest.param(
            {"json": {"ok": True}},
            answer(payload={"ok": False}),
            "JSON field 'ok' is False, expected True",
            id="json-mismatch",
        ),
        pytest.param(
            {"json": {"ok": True}},
            answer(payload={"ok": 1}),
            "JSON field 'ok' is 1, expected True",
            id="json-1-not-true",
        ),
        pytest.param(
            {"json": {"items.1.sku": "B2"}}, answer(payload={"items": [{}, {"sku": "B2"}]}), None, id="nested"
        ),
        pytest.param(
            {"json": {"items.2.sku": "B2"}},
            answer(payload={"items": []}),
            "JSON field 'items.2.sku' is missing",
            id="json-missing",
        ),
        pytest.param({"json": {"ok": True}}, answer(payload="<html>"), "the answer is not JSON: <html>", id="not-json"),
        pytest.param({"json": {"v": "${version}"}}, answer(payload={"v": "1.2.3"}), None, id="json-templated"),
        pytest.param({"contains": "ready"}, answer(payload="all ready"), None, id="contains"),
        pytest.param({"contains": "v=${version}"}, answer(payload="v=1.2.3"), None, id="contains-templated"),
        pytest.param(
            {"contains": "ready"}, answer(payload="starting"), "the answer does not contain 'ready'", id="not-contains"
        ),
        pytest.param({"max_ms": 100}, answer(elapsed=99.0), None, id="fast"),
        pytest.param({"max_ms": 100}, answer(elapsed=250.0), "took 250 ms, more than 100 ms", id="slow"),
        pytest.param(
            {"json": {"ok": True}, "contains": "zzz", "max_ms": 1},
            answer(payload={"ok": False}, elapsed=5.0),
            "JSON field 'ok' is False, expected True; the answer does not contain 'zzz'; took 5 ms, more than 1 ms",
            id="all-failures-listed",
        ),
    ],
)
def test_expectations(expect, reply, error):
    result = run_journey(journey(step(expect=expect)), Recorder(reply), {"version": "1.2.3"})
    (only,) = result.steps
    assert only.error == error
    assert only.ok is result.ok is (error is None)
    assert only.status == reply[0]


def test_a_missing_extract_path_fails_the_step():
    result = run_journey(journey(step(extract={"cart_id": "id"})), Recorder(answer(payload={"ok": True})))
    assert not result.ok and result.steps[0].error == "cannot extract 'cart_id': JSON field 'id' is missing"
    assert result.extracted == {}


# -- running -------------------------------------------------------------------------------------


def test_stops_at_the_first_failing_step():
    j = journey(step("one", extract={"id": "id"}), step("two", path="x/${id}", expect={"status": 200}), step("three"))
    send = Recorder(answer(payload={"id": "c1"}), answer(503, {"error": "nothing is deployed"}))
    result = run_journey(j, send)
    assert not result.ok and result.failed_step == "two" and result.skipped == ["three"]
    assert [(s.name, s.ok, s.status) for s in result.steps] == [("one", True, 200), ("two", False, 503)]
    assert len(send.requests) == 2
    assert result.extracted == {"id": "c1"}
    assert result.summary == (
        "journey 'shop' failed at step 'two': HTTP 503, expected 200: {\"error\": \"nothing is deployed\"}"
    )


@pytest.mark.parametrize(
    "exc, error",
    [
        pytest.param(ConnectionError("connection refused"), "request failed: connection refused", id="message"),
        pytest.param(TimeoutError(), "request failed: TimeoutError", id="no-message"),
    ],
)
def test_a_send_that_raises_is_a_failed_step(exc, error):
    def send(method, path, headers, body):
        raise exc

    result = run_journey(journey(step("boom"), step("never")), send)
    assert not result.ok and result.failed_step == "boom" and result.skipped == ["never"]
    assert result.steps[0].error == error and result.steps[0].status is None


def test_a_variable_cannot_turn_the_path_into_a_url():
    send = Recorder(answer())
    result = run_journey(journey(step(path="${where}")), send, {"where": "http://elsewhere/steal"})
    assert result.ok and [r[1] for r in send.requests] == ["http%3A%2F%2Felsewhere%2Fsteal"], "one relative segment"


def test_an_answer_cannot_steer_a_later_request_to_the_targets_api():
    """Issue 11 finding 6: a candidate version's answer put `../../promote` into a later path,
    sent with the deploy target's credentials. Values are one encoded segment; the path
    stays inside the application's routes."""
    j = journey(
        step("cart", path="app/cart", method="POST", extract={"cart_id": "id"}),
        step("checkout", path="app/cart/${cart_id}/checkout"),
    )
    send = Recorder(answer(payload={"id": "../../promote"}), answer())
    result = run_journey(j, send, routes=("app", "preview"))
    assert [r[1] for r in send.requests] == ["app/cart"], "the steered request was never sent"
    assert result.steps[1].path == "app/cart/..%2F..%2Fpromote/checkout"
    assert not result.ok and "leaves the application's route" in result.steps[1].error


@pytest.mark.parametrize(
    "path, routes, problem",
    [
        ("app/version", ("app",), None),
        ("promote", ("app", "preview"), "outside the application's routes"),
        ("app/../promote", ("app",), "leaves the application's route"),
        ("app/%2e%2e/promote", ("app",), "leaves the application's route"),
        ("/environments/prod/promote", (), "not relative"),
        ("anything/at/all", (), None),
        ("components/web/app/version", ("app",), None),  # a deploy unit's application (packaging modular)
        ("components/web/rollback", ("app", "preview"), "outside the application's routes"),
        ("components/web/deployments", ("app",), "outside the application's routes"),
        ("components/app", ("app",), "outside the application's routes"),
        ("components/web/app/%2e%2e/%2e%2e/promote", ("app",), "leaves the application's route"),
        ("components//app/version", ("app",), "outside the application's routes"),
        ("components/x%2Fdeployments/app", ("app",), "outside the application's routes"),
        ("components/Web/app", ("app",), "outside the application's routes"),
    ],
)
def test_path_guard(path, routes, problem):
    from releasetrain.core.checks import path_problem

    found = path_problem(path, routes)
    assert (found is None) if problem is None else (problem in found), found


def test_result_is_frozen_and_json_safe():
    j = journey(step("a", extract={"obj": "nested"}))
    result = run_journey(j, Recorder(answer(payload={"nested": {"n": [1, 2.5, None]}})))
    data = result.to_dict()
    assert json.loads(json.dumps(data)) == data
    assert data["ok"] is True and data["journey"] == "shop" and data["extracted"] == {"obj": {"n": [1, 2.5, None]}}
    assert data["steps"] == [
        {"name": "a", "ok": True, "status": 200, "elapsed_ms": 5.0, "error": None, "method": "GET", "path": "app"}
    ]
    with pytest.raises(AttributeError):
        result.ok = False  # type: ignore[misc]
    assert JourneyResult(False, "x", [StepResult("s", False, None, 0.0, "e")], "s").to_dict()["failed_step"] == "s"


# -- loading -------------------------------------------------------------------------------------

VALID = {"name": "shop", "steps": [{"name": "a", "request": {"path": "app"}}]}


def with_step(**changes):
    data = json.loads(json.dumps(VALID))
    data["steps"][0].update(changes)
    return data


@pytest.mark.parametrize(
    "data, problem",
    [
        pytest.param([], "j.yaml: a journey must be a YAML mapping", id="not-mapping"),
        pytest.param({"name": "shop"}, "j.yaml: steps: field required", id="no-steps"),
        pytest.param({"name": "shop", "steps": []}, "j.yaml: steps: List should have at least 1 item", id="zero-steps"),
        pytest.param({**VALID, "name": "Bad Name"}, "j.yaml: name: String should match pattern", id="name"),
        pytest.param({**VALID, "extra": 1}, "j.yaml: extra: unknown field (check the spelling)", id="unknown-top"),
        pytest.param(
            {**VALID, "variables": {"a-b": "x"}}, "j.yaml: variables: ['a-b'] are not valid variable", id="var-name"
        ),
        pytest.param(with_step(request={}), "j.yaml: steps[0].request.path: field required", id="no-path"),
        pytest.param(
            with_step(request={"path": "a", "method": "TRACE"}),
            "j.yaml: steps[0].request.method: Input should be 'GET', 'POST', 'PUT', 'PATCH' or 'DELETE'",
            id="method",
        ),
        pytest.param(
            with_step(request={"path": "https://evil.example/x"}),
            "j.yaml: steps[0].request.path: 'https://evil.example/x' must be a path relative",
            id="absolute-url",
        ),
        pytest.param(
            with_step(request={"path": "a", "json": {"x": 1}}),
            "j.yaml: steps[0].request: a GET request sends no JSON body",
            id="get-with-body",
        ),
        pytest.param(
            with_step(expect={"status": "ok"}),
            "j.yaml: steps[0].expect.status: must be an HTTP status code (100-599) or a non-empty list of them, "
            "got 'ok'",
            id="status-type",
        ),
        pytest.param(with_step(expect={"status": [200, 700]}), "j.yaml: steps[0].expect.status: must be", id="range"),
        pytest.param(with_step(expect={"status": []}), "j.yaml: steps[0].expect.status: must be", id="empty-status"),
        pytest.param(with_step(expect={"status": True}), "j.yaml: steps[0].expect.status: must be", id="bool-status"),
        pytest.param(
            with_step(expect={"max_ms": 0}), "j.yaml: steps[0].expect.max_ms: Input should be greater than 0", id="ms"
        ),
        pytest.param(
            with_step(expect={"body": "x"}), "j.yaml: steps[0].expect.body: unknown field", id="unknown-expect"
        ),
        pytest.param(
            with_step(extract={"cart id": "id"}),
            "j.yaml: steps[0].extract: 'cart id' is not a valid variable name",
            id="extract-name",
        ),
        pytest.param(
            {**VALID, "steps": VALID["steps"] * 2},
            "j.yaml: steps: step name 'a' is used more than once",
            id="duplicate-step",
        ),
    ],
)
def test_parse_errors_name_the_field_path(data, problem):
    with pytest.raises(JourneyError) as info:
        parse_journey(data, "j.yaml")
    assert str(info.value).startswith(problem), str(info.value)
    assert isinstance(info.value, ValueError)


def test_several_problems_are_reported_at_once():
    data = {"name": "shop", "steps": [{"name": "a", "request": {"path": "x"}}, {"name": "b"}]}
    data["steps"][0]["expect"] = {"status": "x"}
    with pytest.raises(JourneyError) as info:
        parse_journey(data, "j.yaml")
    assert [p for p, _ in info.value.problems] == ["steps[0].expect.status", "steps[1].request"]


def test_load_journey_reports_broken_yaml_with_line(tmp_path):
    path = tmp_path / "shop.yaml"
    path.write_text("name: shop\nsteps:\n  - name: a\n    request: {path: [\n")
    with pytest.raises(JourneyError, match=r"^shop.yaml: line \d+, column \d+: invalid YAML"):
        load_journey(path, display_root=tmp_path)


def test_load_journey_names_file_and_field(tmp_path):
    path = tmp_path / "shop.yaml"
    path.write_text(
        "name: shop\nsteps:\n  - name: a\n    request: {path: app}\n  - name: b\n    request: {path: x}\n"
        "    expect: {status: nope}\n"
    )
    with pytest.raises(JourneyError) as info:
        load_journey(path, tmp_path)
    assert str(info.value).startswith("shop.yaml: steps[1].expect.status: must be an HTTP status code")


def test_load_journey_name_must_match_file(tmp_path):
    path = tmp_path / "other.yaml"
    path.write_text("name: shop\nsteps: [{name: a, request: {path: app}}]\n")
    with pytest.raises(JourneyError, match=r"other.yaml: name: 'shop' must match the file name 'other'"):
        load_journey(path)


def test_load_journey_missing_file(tmp_path):
    with pytest.raises(JourneyError, match="cannot be read"):
        load_journey(tmp_path / "nope.yaml", tmp_path)


def test_the_example_checkout_journey_parses():
    j = load_journey(PROJECT_ROOT / "include" / "journeys" / "checkout.yaml", PROJECT_ROOT)
    assert isinstance(j, Journey) and j.name == "checkout" and j.inputs() == []
    assert [(s.request.method, s.request.path) for s in j.steps] == [
        ("POST", "${route}/cart"),
        ("GET", "${route}/cart/${cart_id}"),
        ("POST", "${route}/cart/${cart_id}/checkout"),
    ]
    assert j.steps[0].request.body == {"sku": "${sku}"} and j.steps[0].extract == {"cart_id": "id"}
    fleet_reply = {"ok": True, "environment": "prod", "version": "1.0.0", "path": "cart", "id": "0123456789ab"}
    send = Recorder(answer(payload=fleet_reply), answer(payload=fleet_reply), answer(payload=fleet_reply))
    result = run_journey(j, send)
    assert result.ok, result.summary
    assert [r[:2] for r in send.requests] == [
        ("POST", "app/cart"),
        ("GET", "app/cart/0123456789ab"),
        ("POST", "app/cart/0123456789ab/checkout"),
    ]
    assert send.requests[0][3] == {"sku": "A1"}
    faulty = run_journey(j, Recorder(answer(500, {"error": "injected fault"})))
    assert faulty.failed_step == "add to cart" and "HTTP 500" in faulty.steps[0].error
