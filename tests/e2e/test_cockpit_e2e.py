"""Issue 15: the release cockpit in a real browser (Debian's Chromium driven by Playwright)
against the running stack. Its pages load inside Airflow's UI, what they show matches the
ledger, an approver follows the cockpit's link to Required Actions and answers there, and
a request without a valid token is refused.

Screenshots of each page go to ``$RELEASETRAIN_SCREENSHOTS`` (``make screenshots`` points
it at ``docs/cockpit``), else to the test's temporary folder."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
import requests

pytestmark = pytest.mark.e2e

CHROMIUM = os.environ.get("RELEASETRAIN_CHROMIUM", "/usr/bin/chromium")
DAG = "release_cockpit"


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: make test installs Debian's chromium (scripts/ensure-debian.sh)")
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield chromium
        chromium.close()


@pytest.fixture
def shots(tmp_path) -> Path:
    folder = Path(os.environ.get("RELEASETRAIN_SCREENSHOTS") or tmp_path)
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def token(stack, user: str) -> str:
    login = {"username": user, "password": user}
    response = requests.post(f"{stack.config.api_url}/auth/token", json=login, timeout=30)
    response.raise_for_status()
    return response.json()["access_token"]


def signed_in(browser, stack, user: str):
    """A browser session of ``user``, as Airflow's login leaves it (the ``_token`` cookie)."""
    context = browser.new_context(viewport={"width": 1440, "height": 900})
    context.add_cookies([{"name": "_token", "value": token(stack, user), "url": stack.config.api_url}])
    return context


def test_the_cockpit_shows_the_ledger_and_an_approver_answers_through_it(
    browser, stack, author, approver, ledger, shots
):
    from playwright.sync_api import expect

    api = stack.config.api_url
    run_id = author.trigger(DAG, {"version": "2.0.0", "change_summary": "cockpit 2.0.0"})["dag_run_id"]
    approver.wait_for_approval(DAG, run_id, "cockpit-prod.approve")
    [deployed] = [e for e in ledger.events("cockpit", run_id) if e.kind == "deployed"]
    assert (deployed.environment, deployed.details["version"]) == ("cockpit-stg", "2.0.0")

    context = signed_in(browser, stack, "approver")
    page = context.new_page()
    page.goto(f"{api}/plugin/releasetrain-cockpit")
    cockpit = page.frame_locator("iframe")
    row = cockpit.locator('#live-table tr[data-release="cockpit"][data-environment="cockpit-stg"]')
    expect(row.locator(".version")).to_contain_text("2.0.0", timeout=60_000)
    expect(row).to_contain_text(run_id)
    expect(row.locator(".pill")).to_have_text("healthy")  # its smoke checks passed
    expect(cockpit.locator('#live-table tr[data-release="cockpit"][data-environment="cockpit-prod"]')).to_have_count(0)
    page.screenshot(path=str(shots / "environments.png"), full_page=True)

    cockpit.locator('#tabs a[data-tab="waits"]').click()
    waiting = cockpit.locator('#waits-table tr[data-task="cockpit-prod.approve"]')
    expect(waiting).to_contain_text("approval")
    expect(waiting).to_contain_text("approver")
    page.screenshot(path=str(shots / "waits.png"), full_page=True)

    cockpit.locator('#tabs a[data-tab="calendar"]').click()
    expect(cockpit.locator("#calendar-table")).to_contain_text("cockpit-prod")
    page.screenshot(path=str(shots / "calendar.png"), full_page=True)

    cockpit.locator('#tabs a[data-tab="trends"]').click()
    expect(cockpit.locator("#trends-table")).to_contain_text("cockpit-stg")
    expect(cockpit.locator("#charts svg")).to_have_count(3)
    page.screenshot(path=str(shots / "trends.png"), full_page=True)

    # the approver follows the cockpit's link to Airflow's Required Actions and answers there
    cockpit.locator('#tabs a[data-tab="waits"]').click()
    waiting.locator("a.answer").click()
    expect(page).to_have_url(re.compile(rf"/dags/{DAG}/runs/.+/tasks/cockpit-prod\.approve/required_actions"))
    page.get_by_role("button", name="Approve").first.click(timeout=60_000)
    run = author.wait_for_run(DAG, run_id, timeout=300)
    assert run["state"] == "success", author.task_states(DAG, run_id)
    given = [e for e in ledger.events("cockpit", run_id) if e.kind == "approval_given"]
    assert [e.actor for e in given] == ["approver"], "answered in the browser, as the approver"

    # the deploy's extra links: its change record (built-in: the run's story), its target, its bundle
    path = f"/dags/{DAG}/dagRuns/{run_id}/taskInstances/cockpit-prod.deploy/links"
    links = author.request("GET", path)["extra_links"]
    from urllib.parse import quote

    assert links["Change record"].endswith(f"/releasetrain/cockpit/runs/{DAG}/{quote(run_id)}"), links
    assert links["Target status"].endswith("/environments/cockpit-prod/status"), links
    assert links["Bundle"].endswith("/cockpit/2.0.0"), links

    # the run's story: every ledger event of the run, in order, and the chain verified
    events = ledger.wait_for("cockpit", run_id, "run_state")
    story = context.new_page()
    story.goto(f"{api}/dags/{DAG}/runs/{run_id}/plugin/releasetrain-release")
    timeline = story.frame_locator("iframe").locator("#story-table tbody tr")
    expect(timeline).to_have_count(len(events), timeout=60_000)
    assert [timeline.nth(i).get_attribute("data-kind") for i in range(len(events))] == [e.kind for e in events]
    expect(story.frame_locator("iframe").locator("#ledger-status")).to_have_text("ledger verified")
    story.screenshot(path=str(shots / "story.png"), full_page=True)
    context.close()


def test_the_cockpit_refuses_a_request_without_a_valid_token(browser, stack):
    api = stack.config.api_url
    anonymous = browser.new_context()
    page = anonymous.new_page()
    assert page.goto(f"{api}/releasetrain/cockpit/").status == 401
    assert page.goto(f"{api}/releasetrain/cockpit/api/overview").status == 401
    anonymous.close()
    forged = browser.new_context()
    forged.add_cookies([{"name": "_token", "value": "forged.token.value", "url": api}])
    assert forged.new_page().goto(f"{api}/releasetrain/cockpit/api/overview").status in (401, 403)
    forged.close()
    bearer = requests.get(
        f"{api}/releasetrain/cockpit/api/overview", headers={"Authorization": f"Bearer {token(stack, 'author')}"}
    )
    assert bearer.status_code == 200 and bearer.json()["user"] == "author"


def test_the_connection_form_shows_releasetrains_connection_types(stack):
    """The UI's connection form (its hook metadata, from the provider info): a signing key is
    a PEM private key with its pinned public key; a deploy target is a base URL."""
    import json

    response = requests.get(
        f"{stack.config.api_url}/ui/connections/hook_meta",
        headers={"Authorization": f"Bearer {token(stack, 'admin')}"},
        timeout=60,
    )
    assert response.status_code == 200, response.text
    types = {entry["connection_type"]: entry for entry in response.json()}
    signing, target = types["releasetrain_signing"], types["releasetrain_deploy_target"]
    assert signing["hook_name"] == "releasetrain signing key"
    assert "Private key (PEM)" in json.dumps(signing["standard_fields"])
    assert "public_key" in json.dumps(signing["extra_fields"])
    assert "Base URL" in json.dumps(target["standard_fields"])
