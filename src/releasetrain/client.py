"""A small client for Airflow's REST API (v2), as a CI system or a release manager's
script would use it: trigger a release, follow it, answer an approval."""

from __future__ import annotations

import time
from typing import Any

import requests

TERMINAL_RUN_STATES = frozenset({"success", "failed"})


class AirflowAPIError(RuntimeError):
    def __init__(self, response: requests.Response):
        self.status_code = response.status_code
        self.body = response.text
        super().__init__(
            f"{response.request.method} {response.url}: HTTP {response.status_code}: {response.text[:500]}"
        )


class AirflowClient:
    """:param base_url: the API server, e.g. ``http://127.0.0.1:8080``"""

    def __init__(self, base_url: str, username: str, password: str, *, timeout: float = 30.0):
        self.base_url = base_url.rstrip("/")
        self.username = username
        self.timeout = timeout
        self._session = requests.Session()
        self._login(username, password)

    def _login(self, username: str, password: str) -> None:
        response = self._session.post(
            f"{self.base_url}/auth/token", json={"username": username, "password": password}, timeout=self.timeout
        )
        if response.status_code not in (200, 201):
            raise AirflowAPIError(response)
        self._session.headers["Authorization"] = f"Bearer {response.json()['access_token']}"

    def request(self, method: str, path: str, *, expect: tuple[int, ...] = (200,), **kwargs: Any) -> Any:
        response = self._session.request(method, f"{self.base_url}/api/v2{path}", timeout=self.timeout, **kwargs)
        if response.status_code not in expect:
            raise AirflowAPIError(response)
        return response.json() if response.content else None

    # --- runs -------------------------------------------------------------------------
    def trigger(self, dag_id: str, conf: dict[str, Any], *, run_id: str | None = None, note: str | None = None) -> dict:
        body: dict[str, Any] = {"logical_date": None, "conf": conf}
        if run_id:
            body["dag_run_id"] = run_id
        if note:
            body["note"] = note
        return self.request("POST", f"/dags/{dag_id}/dagRuns", json=body, expect=(200,))

    def run(self, dag_id: str, run_id: str) -> dict:
        return self.request("GET", f"/dags/{dag_id}/dagRuns/{run_id}")

    def task_states(self, dag_id: str, run_id: str) -> dict[str, str | None]:
        data = self.request("GET", f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances", params={"limit": 1000})
        return {ti["task_id"]: ti["state"] for ti in data["task_instances"]}

    def task_instance(self, dag_id: str, run_id: str, task_id: str) -> dict:
        return self.request("GET", f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}")

    def runs(self, dag_id: str) -> list[dict]:
        return self.request("GET", f"/dags/{dag_id}/dagRuns", params={"limit": 100})["dag_runs"]

    def xcom(self, dag_id: str, run_id: str, task_id: str, key: str = "return_value") -> Any:
        data = self.request(
            "GET",
            f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}/xcomEntries/{key}",
            params={"deserialize": "true"},
        )
        return data["value"]

    def set_xcom(self, dag_id: str, run_id: str, task_id: str, value: Any, key: str = "return_value") -> None:
        """Create or overwrite a task's XCom entry, as any ``user``-role account may over REST."""
        base = f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}/xcomEntries"
        try:
            self.request("PATCH", f"{base}/{key}", json={"value": value}, expect=(200,))
        except AirflowAPIError as exc:
            if exc.status_code != 404:
                raise
            self.request("POST", base, json={"key": key, "value": value}, expect=(201,))

    def set_task_state(self, dag_id: str, run_id: str, task_id: str, state: str) -> Any:
        """Set a task instance's state by hand (the UI's "Mark as success/failed")."""
        return self.request(
            "PATCH", f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}", json={"new_state": state}
        )

    def clear_tasks(
        self, dag_id: str, run_id: str, task_ids: list[str], *, only_failed: bool = False, downstream: bool = False
    ) -> Any:
        body = {
            "dag_run_id": run_id,
            "task_ids": task_ids,
            "only_failed": only_failed,
            "include_downstream": downstream,
            "dry_run": False,
        }
        return self.request("POST", f"/dags/{dag_id}/clearTaskInstances", json=body)

    def wait_for_task(
        self,
        dag_id: str,
        run_id: str,
        task_id: str,
        states: tuple[str, ...],
        *,
        timeout: float = 600,
        poll: float = 1.0,
    ) -> str:
        """Wait until ``task_id`` is in one of ``states`` (or the run ends); return its state."""
        deadline = time.monotonic() + timeout
        while True:
            state = self.task_states(dag_id, run_id).get(task_id)
            if state in states:
                return state
            if self.run(dag_id, run_id)["state"] in TERMINAL_RUN_STATES:
                return str(state)
            if time.monotonic() > deadline:
                raise TimeoutError(f"{task_id} still {state} after {timeout}s: {self.task_states(dag_id, run_id)}")
            time.sleep(poll)

    def wait_for_run(self, dag_id: str, run_id: str, *, timeout: float = 600, poll: float = 2.0) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            run = self.run(dag_id, run_id)
            if run["state"] in TERMINAL_RUN_STATES:
                return run
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"{dag_id} {run_id} still {run['state']} after {timeout}s: {self.task_states(dag_id, run_id)}"
                )
            time.sleep(poll)

    def set_paused(self, dag_id: str, paused: bool) -> dict:
        return self.request("PATCH", f"/dags/{dag_id}", json={"is_paused": paused})

    def import_errors(self) -> list[dict]:
        return self.request("GET", "/importErrors", params={"limit": 100})["import_errors"]

    def dag_ids(self) -> list[str]:
        return [d["dag_id"] for d in self.request("GET", "/dags", params={"limit": 1000})["dags"]]

    # --- approvals (human-in-the-loop) ------------------------------------------------
    def pending_approvals(self, dag_id: str, run_id: str) -> list[dict]:
        data = self.request(
            "GET", f"/dags/{dag_id}/dagRuns/{run_id}/hitlDetails", params={"response_received": "false"}
        )
        return data["hitl_details"]

    def wait_for_approval(
        self, dag_id: str, run_id: str, task_id: str, *, timeout: float = 600, poll: float = 2.0, settle: float = 3.0
    ) -> dict:
        """Wait until ``task_id`` awaits a human answer, and return its request.

        Airflow 3.3 fails a HITL task whose answer arrives before the scheduler has
        processed the worker's exit from parking it (usually under a second, seen up to
        six on a loaded machine); people are never that fast, scripts are. So once the
        task is parked this waits until the scheduler has gone round its loop a few times
        (the run's ``last_scheduling_decision`` moves on), and at least ``settle`` seconds.
        :meth:`answer` also recovers when it happens anyway.
        """
        deadline = time.monotonic() + timeout
        while True:
            for detail in self.pending_approvals(dag_id, run_id):
                if (
                    detail["task_instance"]["task_id"] == task_id
                    and self.task_states(dag_id, run_id).get(task_id) == "awaiting_input"
                ):
                    self.wait_for_scheduler(dag_id, run_id, settle=settle)
                    return detail
            run = self.run(dag_id, run_id)
            if run["state"] in TERMINAL_RUN_STATES:
                raise RuntimeError(
                    f"{dag_id} {run_id} ended {run['state']} before {task_id} asked for approval: "
                    f"{self.task_states(dag_id, run_id)}"
                )
            if time.monotonic() > deadline:
                raise TimeoutError(f"{task_id} did not ask for approval within {timeout}s")
            time.sleep(poll)

    def wait_for_scheduler(
        self, dag_id: str, run_id: str, *, loops: int = 3, settle: float = 3.0, timeout: float = 120
    ) -> None:
        """Wait until the scheduler has examined the run ``loops`` more times (and ``settle`` s)."""
        start = time.monotonic()
        seen = [self.run(dag_id, run_id).get("last_scheduling_decision")]
        while len(seen) <= loops and time.monotonic() - start < timeout:
            time.sleep(0.5)
            run = self.run(dag_id, run_id)
            if run["state"] in TERMINAL_RUN_STATES:
                return
            if run.get("last_scheduling_decision") != seen[-1]:
                seen.append(run.get("last_scheduling_decision"))
        time.sleep(max(0.0, settle - (time.monotonic() - start)))

    def respond(
        self,
        dag_id: str,
        run_id: str,
        task_id: str,
        option: str,
        *,
        params_input: dict[str, Any] | None = None,
        expect: tuple[int, ...] = (200,),
    ) -> Any:
        return self.request(
            "PATCH",
            f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}/-1/hitlDetails",
            json={"chosen_options": [option], "params_input": params_input or {}},
            expect=expect,
        )

    def abort(
        self, dag_id: str, run_id: str, environment: str, reason: str, *, timeout: float = 600, poll: float = 1.0
    ) -> str:
        """Abort a rollout in progress: answer its ``<environment>.abort`` request with a reason.

        Waits until the request is open (the task is deferred beside the rollout), answers
        it, and returns the abort task's final state (``failed`` when the abort took effect,
        ``skipped`` when the rollout ended first).
        """
        task_id = f"{environment}.abort"
        deadline = time.monotonic() + timeout
        while not (
            self.task_states(dag_id, run_id).get(task_id) == "deferred"
            and any(d["task_instance"]["task_id"] == task_id for d in self.pending_approvals(dag_id, run_id))
        ):
            if self.run(dag_id, run_id)["state"] in TERMINAL_RUN_STATES or time.monotonic() > deadline:
                raise RuntimeError(f"{task_id} is not waiting in {dag_id} {run_id}: {self.task_states(dag_id, run_id)}")
            time.sleep(poll)
        self.respond(dag_id, run_id, task_id, "Abort and roll back", params_input={"reason": reason})
        while (state := self.task_states(dag_id, run_id).get(task_id)) not in ("success", "failed", "skipped"):
            if time.monotonic() > deadline:
                raise TimeoutError(f"{task_id} still {state} after the abort")
            time.sleep(poll)
        return state

    def answer(
        self,
        dag_id: str,
        run_id: str,
        task_id: str,
        option: str,
        *,
        params_input: dict[str, Any] | None = None,
        timeout: float = 600,
        poll: float = 1.0,
        settle: float = 5.0,
    ) -> str:
        """Answer an approval and wait until the task has acted on it; return its final state.

        If Airflow loses the answer to the race described in :meth:`wait_for_approval`,
        the approval task retries and asks again (the operators retry twice for exactly
        this); the same answer is then given again.
        """
        self.respond(dag_id, run_id, task_id, option, params_input=params_input)
        deadline = time.monotonic() + timeout
        again = 0
        while True:
            state = self.task_states(dag_id, run_id).get(task_id)
            if state in ("success", "failed", "skipped", "upstream_failed"):
                return state
            if state == "awaiting_input" and any(
                d["task_instance"]["task_id"] == task_id for d in self.pending_approvals(dag_id, run_id)
            ):
                again += 1  # lost to the race: the machine is slow now, give the scheduler longer each time
                self.wait_for_scheduler(dag_id, run_id, settle=settle * (1 + again))
                self.respond(dag_id, run_id, task_id, option, params_input=params_input)
            if time.monotonic() > deadline:
                raise TimeoutError(f"{task_id} still {state} {timeout}s after the answer")
            time.sleep(poll)
