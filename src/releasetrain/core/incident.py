"""What a rollback leaves behind: the timeline, a postmortem draft, the notification payload."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

from releasetrain.core.ledger import LedgerEvent
from releasetrain.core.vocabulary import Event

_SUMMARY = {
    "triggered": lambda d: f"triggered: {d.get('version')} ({d.get('change_summary') or 'no summary'})",
    "risk_assessed": lambda d: f"risk {d.get('level')} (score {d.get('score')})" if "level" in d else "risk refused",
    "packaged": lambda d: f"packaged {d.get('version')} {d.get('digest')}",
    "verified": lambda d: f"bundle verified {d.get('digest')}",
    "approval_given": lambda d: f"approved ({d.get('group') or 'approval'}) for {d.get('digest')}",
    "approval_refused": lambda d: f"approval refused: {d.get('reason')}",
    "approval_rejected": lambda d: "rejected",
    "deployed": lambda d: f"deployed {d.get('version')} (before: {d.get('previous_version')})",
    "deploy_failed": lambda d: f"deploy failed: {d.get('message') or d.get('state')}",
    "checks_passed": lambda d: f"{d.get('kind')} checks passed",
    "checks_failed": lambda d: f"{d.get('kind')} checks FAILED: {d.get('reason') or _failed_checks(d)}",
    "exception": lambda d: f"exception: {d.get('kind')} ({d.get('justification')})",
    "rollback": lambda d: f"rolled back to {d.get('restored_version')}",
    "change_transition": lambda d: f"change {d.get('number')} -> {d.get('state')}",
    "change_closed": lambda d: f"change {d.get('number')} {d.get('state')}",
    "run_state": lambda d: f"run {d.get('state')}",
    "task_state": lambda d: f"{d.get('task_id')} set to {d.get('state')} by hand",
}


def _failed_checks(details: dict[str, Any]) -> str:
    failed = [c for c in details.get("checks") or [] if not c.get("passed")]
    return "; ".join(f"{c.get('name')}: {', '.join(c.get('failures') or [])}" for c in failed) or "see the task log"


def timeline(events: Iterable[LedgerEvent]) -> list[dict[str, str]]:
    """The run's ledger events as timeline rows: at, environment, actor, what."""
    rows = []
    for event in events:
        summarise = _SUMMARY.get(event.kind)
        what = summarise(event.details) if summarise else event.kind.replace("_", " ")
        rows.append({"at": event.at, "environment": event.environment, "actor": event.actor, "what": what})
    return rows


def postmortem_markdown(incident: dict[str, Any]) -> str:
    """A blameless postmortem draft: what happened, when, what the data said, what to ask next."""
    lines = [
        f"# Postmortem draft: {incident['release']} {incident['failed_version']} rolled back in "
        f"{incident['environment']}",
        "",
        "_Draft written by releasetrain when the rollback finished. Blameless: it asks what in the process "
        "let this reach the environment, not who._",
        "",
        "| | |",
        "|---|---|",
        f"| Release run | {incident['run_id']} |",
        f"| Environment | {incident['environment']} |",
        f"| Failed version | {incident['failed_version']} ({incident.get('failed_digest') or '-'}) |",
        f"| Restored version | {incident['restored_version']} ({incident.get('restored_digest') or '-'}) |",
        f"| Rolled back at | {incident['rolled_back_at']} |",
        f"| Snapshot | {incident.get('snapshot') or '-'} |",
    ]
    if incident.get("run_url"):
        lines.append(f"| Run | [{incident['run_id']}]({incident['run_url']}) |")
    lines += ["", "## What failed", ""]
    lines += [f"- {reason}" for reason in incident.get("failures") or ["(no failure recorded in the ledger)"]]
    diff = incident.get("diff")
    if diff:
        lines += ["", "## What changed", ""]
        if isinstance(diff, str):
            lines.append(f"- {diff}")
        else:
            lines.append(f"From {diff['from']} to {diff['to']}:")
            for name, (was, now) in diff["components"].items():
                lines.append(f"- component `{name}`: {was or '-'} -> {now or '-'}")
            for kind in ("added", "removed", "changed"):
                shown = diff[kind][:20]
                more = f" (and {len(diff[kind]) - 20} more)" if len(diff[kind]) > 20 else ""
                if shown:
                    lines.append(f"- {kind}: " + ", ".join(f"`{p}`" for p in shown) + more)
    if incident.get("measurements"):
        lines += ["", "## Measurements", "", "```json", incident["measurements"], "```"]
    if incident.get("analysis"):
        lines += ["", "## Canary analysis", ""]
        for analysis in incident["analysis"]:
            weight = f" at {analysis['weight']}% traffic" if analysis.get("weight") is not None else ""
            lines += [f"**{analysis.get('stage')}{weight}: {analysis.get('outcome')}**: {analysis.get('reason')}", ""]
            lines += ["| # | verdict | score | reason |", "|---|---|---|---|"]
            for i, m in enumerate(analysis.get("measurements") or [], start=1):
                score = m.get("score")
                reason = str(m.get("reason") or "").replace("|", "\\|")
                lines.append(f"| {i} | {m.get('verdict')} | {'-' if score is None else f'{score:.1f}'} | {reason} |")
            lines.append("")
    lines += ["", "## Timeline (UTC)", "", "| at | environment | who | what |", "|---|---|---|---|"]
    for row in incident.get("timeline") or []:
        what = str(row["what"]).replace("|", "\\|")
        lines.append(f"| {row['at']} | {row['environment'] or '-'} | {row['actor'] or '-'} | {what} |")
    lines += [
        "",
        "## Questions for the review",
        "",
        "- Which check would have caught this before this environment (staging gate, canary analysis)?",
        "- Was the rollback plan followed, and how long did the backout take against its estimate?",
        "- Does this release roll back often? (Frequent rollbacks raise its risk score.)",
        "- What changes in the runbook?",
        "",
    ]
    return "\n".join(lines)


def route_moments(route: Mapping[str, Any]) -> set[str]:
    """When a notification route is told: what it asked for (``moments``), and always a failed
    rollback and a tampered bundle."""
    from releasetrain.core.vocabulary import ALWAYS_TOLD, MOMENT_STARTED, MOMENT_SUCCEEDED

    asked = route.get("moments")
    return {*((MOMENT_STARTED, MOMENT_SUCCEEDED) if asked is None else asked), *ALWAYS_TOLD}


def addressed(payload: dict[str, Any], route: Mapping[str, Any]) -> dict[str, Any]:
    """The message as one route gets it: with its audience."""
    return {**payload, "audience": route.get("audience") or "on-call"}


def rollback_started_payload(
    *,
    release: str,
    run_id: str,
    environment: str,
    failed_version: str | None,
    restore_to: str | None,
    how: str,
    expected_minutes: int | None,
    unit: str | None = None,
    started_at: str,
    run_url: str | None = None,
) -> dict[str, Any]:
    """What the audiences hear when a rollback starts: what goes, what returns, for how long."""
    where = f"{environment} ({unit})" if unit else environment
    expected = f"; expected to take about {expected_minutes} min" if expected_minutes else ""
    return {
        "event": "releasetrain.rollback.started",
        "text": f"{release}: rolling {where} back from {failed_version} to {restore_to} ({how}){expected}",
        "release": release,
        "run_id": run_id,
        "environment": environment,
        **({"unit": unit} if unit else {}),
        "failed_version": failed_version,
        "restore_to": restore_to,
        "how": how,
        "expected_minutes": expected_minutes,
        "started_at": started_at,
        "run_url": run_url,
    }


def rollback_failed_payload(
    *,
    release: str,
    run_id: str,
    environment: str,
    failed_version: str | None,
    reason: str,
    unit: str | None = None,
    run_url: str | None = None,
) -> dict[str, Any]:
    """What every audience hears when a rollback failed or needs a human."""
    where = f"{environment} ({unit})" if unit else environment
    return {
        "event": "releasetrain.rollback.failed",
        "text": f"ROLLBACK OF {release} IN {where} FAILED or needs a human: {reason}",
        "release": release,
        "run_id": run_id,
        "environment": environment,
        **({"unit": unit} if unit else {}),
        "failed_version": failed_version,
        "reason": reason,
        "run_url": run_url,
    }


def tampered_payload(*, release: str, run_id: str, environment: str, version: str, reason: str) -> dict[str, Any]:
    """What every audience hears when a bundle fails verification (nothing of it is deployed)."""
    return {
        "event": "releasetrain.bundle.tampered",
        "text": f"{release} {version}: the bundle failed verification before {environment}; nothing deployed: {reason}",
        "release": release,
        "run_id": run_id,
        "environment": environment,
        "version": version,
        "reason": reason,
    }


def notification_payload(incident: dict[str, Any]) -> dict[str, Any]:
    """What a webhook receives after a rollback succeeded (JSON)."""
    return {
        "event": "releasetrain.rollback.succeeded",
        "text": (
            f"{incident['release']} {incident['failed_version']} was rolled back in {incident['environment']} "
            f"to {incident['restored_version']}: {'; '.join(incident.get('failures') or ['see the run'])}"
        ),
        **{
            key: incident.get(key)
            for key in (
                "release",
                "run_id",
                "environment",
                "failed_version",
                "failed_digest",
                "restored_version",
                "restored_digest",
                "failures",
                "snapshot",
                "analysis",
                "diff",
                "postmortem",
                "run_url",
                "rolled_back_at",
            )
        },
    }


def last_good_version(events: Iterable[Any], environment: str, current: str | None) -> dict[str, Any] | None:
    """The newest version a release run deployed to ``environment`` and kept there.

    A version counts as good when the run that deployed it ended ``success`` (its
    ``run_state``) or, for runs still open, was never rolled back there. The version live
    now (``current``) is never the answer. Returns ``{"version", "digest", "run_id", "seq"}``.
    """
    deployed: dict[tuple[str, str], dict[str, Any]] = {}  # by (dag_id, run_id): run ids repeat across DAGs
    rolled_back: set[tuple[str, str]] = set()
    ended: dict[tuple[str, str], str] = {}
    for event in events:
        run = (getattr(event, "dag_id", ""), event.run_id)
        if event.kind == Event.DEPLOYED and event.environment == environment and not event.details.get("noop"):
            deployed[run] = {
                "version": event.details.get("version"),
                "digest": event.details.get("digest"),
                "run_id": event.run_id,
                "seq": event.seq,
            }
        elif event.kind == "rollback" and event.environment == environment:
            rolled_back.add(run)
        elif event.kind == "run_state":
            ended[run] = event.details.get("state", "")
    good = [
        d
        for run, d in deployed.items()
        if run not in rolled_back and ended.get(run, "success") == "success" and d["version"] != current
    ]
    return max(good, key=lambda d: d["seq"]) if good else None


def live_version(events: Iterable[Any], environments: Iterable[str]) -> str | None:
    """The version running now in any of ``environments``, from the ledger: the newest
    deploy there (a no-op deploy too: it found the version live; a deploy to the idle colour
    only once promoted) or rollback (what it restored)."""
    names = set(environments)
    live = None
    for event in events:
        if event.environment not in names:
            continue
        if event.kind == Event.DEPLOYED and event.details.get("version") and not event.details.get("slot"):
            live = event.details["version"]
        elif event.kind == Event.PROMOTED and event.details.get("version"):
            live = event.details["version"]  # a progressive rollout's version takes the traffic
        elif event.kind == Event.ROLLBACK and event.details.get("restored_version"):
            live = event.details["restored_version"]
    return live


def unmet_requirements(requirements: Iterable[Mapping[str, Any]], live: Callable[[str, str], str | None]) -> list[str]:
    """Why shared services a deploy needs are not there yet ([]: all are); ``live(release,
    environment)`` is the version running there (from the ledger)."""
    from releasetrain.core.versioning import Version

    problems = []
    for need in requirements:
        release, environment, minimum = need["release"], need["environment"], need["min_version"]
        current = live(release, environment)
        if current is None:
            problems.append(f"{release} runs nothing in {environment} yet (needs {minimum} or newer)")
        elif Version.parse(current) < Version.parse(minimum):
            problems.append(f"{release} runs {current} in {environment} (needs {minimum} or newer)")
    return problems
