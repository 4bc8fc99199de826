"""Extra links on releasetrain's tasks (the buttons on a task instance in Airflow's UI).

- **Change record**: the run's change record in its backend (ServiceNow, Jira), or the
  cockpit's story of the run for the built-in one (the ledger is that record);
- **Target status**: the deploy target's ``status`` endpoint;
- **Bundle**: where the run's signed bundle is stored;
- **Metrics graph**: the analysis's first query in Prometheus's graph page, over the
  analysis's own time span.

Airflow computes a link when the task ends, in the worker, from the run's ledger and the
connections' hosts (credentials stripped), and keeps it as an XCom entry for the UI: a
link is for people to click, never something a gate reads (UI users can edit XCom). A link
that cannot be made is empty (Airflow shows no button).
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote, urlencode

from airflow.sdk import BaseOperatorLink

from releasetrain.core.vocabulary import Event


def _events(operator: Any, ti_key: Any) -> list[Any]:
    from releasetrain.hooks.ledger import LedgerHook

    hook = LedgerHook()
    try:
        return list(hook.events(release=operator.release, run_id=ti_key.run_id, dag_id=ti_key.dag_id))
    finally:
        hook.close()


def _host(conn_id: str | None) -> str | None:
    """A connection's base URL, without its credentials."""
    if not conn_id:
        return None
    from urllib.parse import urlsplit, urlunsplit

    from airflow.sdk import BaseHook

    conn = BaseHook.get_connection(conn_id)
    host = (conn.host or "").rstrip("/")
    if not host:
        return None
    if "://" not in host:
        host = f"{conn.schema or 'http'}://{host}"
    try:
        parts = urlsplit(host)
        port = parts.port or conn.port
    except ValueError:  # not a URL with a number for a port
        return None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return None
    netloc = parts.hostname + (f":{port}" if port else "")
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))  # never a user or password from the host


def change_url(change: dict[str, Any], host: str | None, story: str | None) -> str | None:
    """Where a change record is read: its backend's page, or the run's story (built-in)."""
    backend, number, ident = change.get("backend"), change.get("number"), change.get("id")
    if backend == "servicenow" and host and ident:
        return f"{host}/nav_to.do?uri={quote(f'change_request.do?sys_id={ident}', safe='')}"
    if backend == "jira" and host and number:
        return f"{host}/browse/{quote(str(number))}"
    return story


def prometheus_graph_url(host: str, query: str, seconds: int) -> str:
    return f"{host}/graph?" + urlencode({"g0.expr": query, "g0.tab": "0", "g0.range_input": f"{max(seconds, 60)}s"})


def _story(ti_key: Any) -> str | None:
    from airflow.sdk.configuration import conf

    base = conf.get("api", "base_url", fallback=None)
    if not base:
        return None
    return f"{base.rstrip('/')}/releasetrain/cockpit/runs/{quote(ti_key.dag_id)}/{quote(ti_key.run_id)}"


class ChangeRecordLink(BaseOperatorLink):
    name = "Change record"

    def get_link(self, operator: Any, *, ti_key: Any) -> str:
        assessed = [e for e in _events(operator, ti_key) if e.kind == Event.RISK_ASSESSED and e.details.get("change")]
        if not assessed:
            return ""
        details = assessed[-1].details
        return change_url(details["change"], _host(details.get("change_conn_id")), _story(ti_key)) or ""


class TargetStatusLink(BaseOperatorLink):
    name = "Target status"

    def get_link(self, operator: Any, *, ti_key: Any) -> str:
        host = _host(getattr(operator, "deploy_target_conn_id", None))
        unit = getattr(operator, "unit", None)
        return f"{host}/{'components/' + unit + '/' if unit else ''}status" if host else ""


class BundleLink(BaseOperatorLink):
    name = "Bundle"

    def get_link(self, operator: Any, *, ti_key: Any) -> str:
        packaged = [e for e in _events(operator, ti_key) if e.kind == Event.PACKAGED]
        return str(packaged[-1].details.get("location") or "") if packaged else ""


class MetricsGraphLink(BaseOperatorLink):
    name = "Metrics graph"

    def get_link(self, operator: Any, *, ti_key: Any) -> str:
        analysis = getattr(operator, "analysis", None) or {}
        provider = analysis.get("provider") or {}
        queries = [m.get("query") for m in analysis.get("metrics") or [] if m.get("query")]
        if provider.get("kind", "prometheus") != "prometheus" or not queries:
            return ""
        host = _host(provider.get("conn_id"))
        if not host:
            return ""
        events = _events(operator, ti_key)
        version = next(
            (
                str(e.details.get("version"))
                for e in reversed(events)
                if e.kind == Event.ANALYSIS and e.details.get("version")
            ),
            "",
        )
        query = queries[0]
        for key, value in {
            "version": version,
            "environment": getattr(operator, "environment", ""),
            "route": getattr(operator, "route", "app"),
            "window": f"{analysis.get('interval_seconds', 30)}s",
        }.items():
            query = query.replace("${" + key + "}", str(value))
        span = int(analysis.get("interval_seconds", 30)) * int(analysis.get("count", 3))
        return prometheus_graph_url(host, query, span)


LINKS = [ChangeRecordLink(), TargetStatusLink(), BundleLink(), MetricsGraphLink()]
