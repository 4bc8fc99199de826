"""The release spec: one YAML file per release, validated by a typed model.

Every error names the file, the field path and what is wrong, e.g.::

    include/releases/storefront.yaml: environments[2].deploy_target: field required
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable
from datetime import date as Date
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from releasetrain.core.canary import AnalysisPolicy
from releasetrain.core.trends import TrendRule
from releasetrain.core.versioning import SEMVER_PATTERN, is_semver
from releasetrain.core.windows import CalendarError, CalendarSpec, IcsBlackout, ReleaseCalendar, SharedCalendar

_YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml when available
NAME_PATTERN = r"^[a-z][a-z0-9_-]{0,62}$"
# task ids of the release DAG that an environment's task group must not collide with
RESERVED_ENVIRONMENT_NAMES = frozenset(
    {"prepare", "package", "scope", "libraries", "hotfix_policy", "release_complete"}
)
CONN_ID_PATTERN = r"^[A-Za-z0-9_.-]+$"
USER_PATTERN = r"^[A-Za-z0-9_.@+-]+$"


def unique_names(items: list[Any], what: str = "name") -> list[Any]:
    """``items`` (with ``.name``) unchanged, or a ValueError naming the first repeated name."""
    seen: set[str] = set()
    for item in items:
        if item.name in seen:
            raise ValueError(f"{what} {item.name!r} is used more than once")
        seen.add(item.name)
    return items


class ReleaseSpecError(ValueError):
    """A release spec that cannot be used. ``str()`` is the message a release manager reads."""

    def __init__(self, source: str, problems: list[tuple[str, str]]):
        self.source = source
        self.problems = problems
        lines = [f"{source}: {path}: {reason}" if path else f"{source}: {reason}" for path, reason in problems]
        super().__init__("\n".join(lines))

    @classmethod
    def combined(cls, message: str) -> ReleaseSpecError:
        """One error carrying several already formatted messages (one per line)."""
        error = cls("", [])
        error.args = (message,)
        return error

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, str_strip_whitespace=True)


class HttpCheck(_Model):
    """One HTTP request with explicit success criteria.

    ``endpoint`` is relative to the connection (by default the environment's deploy target).
    ``${version}``, ``${digest}``, ``${environment}`` and ``${release}`` are substituted in
    ``endpoint``, ``expect_json`` values and ``body_contains``.
    """

    name: str = Field(min_length=1, description="What this check proves, shown in logs and approvals.")
    endpoint: str = Field(default="", description="Path relative to the connection's base URL.")
    method: Literal["GET", "HEAD", "POST"] = "GET"
    conn_id: str | None = Field(
        default=None, pattern=CONN_ID_PATTERN, description="Airflow connection; default: the deploy target."
    )
    expect_status: list[int] | int = Field(default=[200], description="Accepted HTTP status code(s).")
    expect_json: dict[str, Any] = Field(
        default_factory=dict, description="Dotted JSON paths and the values they must have."
    )
    body_contains: str | None = Field(default=None, description="Text the response body must contain.")
    max_latency_ms: int | None = Field(default=None, gt=0, description="Upper bound for the response time.")
    timeout_seconds: float = Field(default=10.0, gt=0, le=300)

    @field_validator("expect_status")
    @classmethod
    def _status_range(cls, value: list[int] | int) -> list[int]:
        value = [value] if isinstance(value, int) else value
        bad = [code for code in value if not 100 <= code <= 599]
        if bad or not value:
            raise ValueError(f"HTTP status codes must be between 100 and 599, got {bad or value}")
        return value


class HealthVerification(_Model):
    """Post-deploy health: ``checks`` run every ``interval_seconds`` for ``period_seconds``;
    more than ``max_failures`` failing rounds make the environment unhealthy."""

    period_seconds: int = Field(default=60, ge=1, le=24 * 3600)
    interval_seconds: int = Field(default=10, ge=1, le=3600)
    max_failures: int = Field(default=0, ge=0)
    checks: list[HttpCheck] = Field(min_length=1)

    @model_validator(mode="after")
    def _interval_fits(self) -> HealthVerification:
        if self.interval_seconds > self.period_seconds:
            raise ValueError("interval_seconds must not be longer than period_seconds")
        rounds = self.period_seconds // self.interval_seconds
        if self.max_failures >= rounds:
            raise ValueError(
                f"max_failures {self.max_failures} allows every one of the {rounds} health rounds to fail: "
                "the health check could never fail"
            )
        return self


class Approval(_Model):
    """Who may let a release into an environment. The release's authors never may.

    ``approvers`` and members of ``groups`` form the pool; ``quorum`` distinct people of
    the pool must approve, one after the other (each request goes to those who have not
    approved yet). Every group in ``reviews`` must also approve (a readiness review, asked
    in parallel), each by a different person. Nobody counts twice.
    """

    required: bool = False
    approvers: list[str] = Field(default_factory=list, description="User ids allowed to approve.")
    groups: list[str] = Field(default_factory=list, description="Approver groups whose members may approve.")
    quorum: int = Field(default=1, ge=1, le=5, description="Distinct approvers needed from approvers and groups.")
    reviews: list[str] = Field(
        default_factory=list, description="Readiness review: each of these groups must approve (in parallel)."
    )
    timeout_hours: float | None = Field(default=None, gt=0, description="Unanswered requests are rejected.")
    on_timeout: Literal["reject"] = Field(
        default="reject", description="What a timeout means: the release is rejected and the change canceled."
    )
    reason: str | None = Field(
        default=None,
        min_length=10,
        description="Why an environment marked production needs no human approval (required: false): the "
        "written opt-out that production environments need.",
    )

    @field_validator("approvers")
    @classmethod
    def _approver_ids(cls, value: list[str]) -> list[str]:
        for user in value:
            if not re.match(USER_PATTERN, user):
                raise ValueError(f"{user!r} is not a valid user id")
        if len(set(value)) != len(value):
            raise ValueError("approvers are listed more than once")
        return value

    @field_validator("groups", "reviews")
    @classmethod
    def _group_names(cls, value: list[str]) -> list[str]:
        for name in value:
            if not re.match(NAME_PATTERN, name):
                raise ValueError(f"{name!r} is not a valid group name")
        if len(set(value)) != len(value):
            raise ValueError("a group is listed more than once")
        return value

    @model_validator(mode="after")
    def _approvers_when_required(self) -> Approval:
        if self.required and not (self.approvers or self.groups):
            raise ValueError("an approval that is required needs approvers or approver groups")
        if not self.required and (
            self.approvers or self.groups or self.reviews or self.timeout_hours or self.quorum != 1
        ):
            raise ValueError(
                "approvers, groups, reviews, quorum or timeout_hours are set but required is false, so no "
                "approval would be asked: set required: true, or remove them"
            )
        return self


class MetricsProvider(_Model):
    """Where an analysis reads its metrics: a Prometheus HTTP API or any JSON endpoint."""

    kind: Literal["prometheus", "json"] = "prometheus"
    conn_id: str = Field(pattern=CONN_ID_PATTERN, description="Airflow HTTP connection of the provider.")
    endpoint: str = Field(default="", description="json: the endpoint, relative to the connection's host.")
    path: str = Field(default="", description="json: dotted path of the sample list in the answer.")


class Analysis(AnalysisPolicy):
    """A canary analysis: metrics judged against bounds and the baseline version."""

    provider: MetricsProvider


class Strategy(_Model):
    """How a new version takes over an environment's traffic."""

    kind: Literal["rolling", "canary", "blue_green"] = Field(
        default="rolling",
        description="rolling: replace in place; canary: shift traffic in steps with an analysis after each; "
        "blue_green: deploy to the idle colour, analyse, switch, analyse again, switch back on failure.",
    )
    steps: list[int] | None = Field(
        default=None, description="canary: traffic weights in percent, increasing, ending at 100 (default 10, 50, 100)."
    )
    analysis: Analysis | None = Field(
        default=None, description="canary: after each step; blue_green: before the switch (on the idle colour)."
    )
    watch: Analysis | None = Field(
        default=None,
        description="After the new version is live (blue_green: the post-promotion analysis; any strategy: error "
        "rate within a time window): a failure rolls back.",
    )
    decision_timeout_hours: float = Field(
        default=4, gt=0, le=24 * 7, description="Inconclusive analysis: no decision in this time rolls back."
    )
    abort: bool | None = Field(
        default=None, description="Offer a manual abort while the new version rolls out (default: on production)."
    )

    @model_validator(mode="after")
    def _consistent(self) -> Strategy:
        if self.kind == "canary":
            weights = self.weights
            if any(not 1 <= w <= 100 for w in weights):
                raise ValueError(f"steps must be percentages from 1 to 100, got {weights}")
            if any(b <= a for a, b in zip(weights, weights[1:], strict=False)) or weights[-1] != 100:
                raise ValueError(f"steps must increase and end at 100, got {weights}")
        elif self.steps is not None:
            raise ValueError(f"steps are for the canary strategy, not {self.kind}")
        if self.kind in ("canary", "blue_green") and self.analysis is None:
            raise ValueError(f"the {self.kind} strategy needs an analysis")
        if self.kind == "rolling" and self.analysis is not None:
            raise ValueError("a rolling deploy has no pre-promotion analysis: use watch for checks after it")
        # after the new version took all traffic (any watch; blue-green reuses its analysis after
        # the switch when it has no watch of its own) the old version serves nobody
        post = self.watch or (self.analysis if self.kind == "blue_green" else None)
        for metric in post.metrics if post else []:
            if metric.sessions is not None and metric.sessions.baseline == "concurrent":
                reused = " (blue_green reuses its analysis after the switch: give it a watch)" if not self.watch else ""
                raise ValueError(
                    f"watch metric {metric.name!r}: once the new version has all the traffic the old version serves "
                    f"no sessions; set sessions.baseline: before_deploy{reused}"
                )
        return self

    @property
    def weights(self) -> list[int]:
        return list(self.steps) if self.steps is not None else ([10, 50, 100] if self.kind == "canary" else [])

    @property
    def progressive(self) -> bool:
        return self.kind != "rolling"


CONFIG_KEY_PATTERN = r"^[A-Za-z_][A-Za-z0-9_.-]{0,127}$"


class Suite(_Model):
    """A test suite run against an environment after its deploy, beside the other suites and
    the next environments: it does not hold up the next non-production environment, but no
    production environment is deployed before it passed (on a production environment it is
    part of the stage: a failure rolls the environment back)."""

    name: str = Field(pattern=NAME_PATTERN)
    checks: list[HttpCheck] = Field(default_factory=list, description="HTTP checks of the suite.")
    journeys: list[Annotated[str, Field(pattern=NAME_PATTERN)]] = Field(
        default_factory=list, description="Synthetic journeys (include/journeys/<name>.yaml) of the suite."
    )

    @model_validator(mode="after")
    def _not_empty(self) -> Suite:
        if not self.checks and not self.journeys:
            raise ValueError(f"test suite {self.name!r} has no checks and no journeys")
        return self


class SecretRef(_Model):
    """A secret by reference, resolved by the deploy task at deploy time: an Airflow
    connection's password (or login), or a variable from the secrets backend."""

    connection: str | None = Field(default=None, pattern=CONN_ID_PATTERN, description="Airflow connection id.")
    field: Literal["password", "login"] = Field(default="password", description="connection: which of its fields.")
    variable: str | None = Field(
        default=None, pattern=r"^[A-Za-z0-9_./-]+$", description="Variable (secrets backend path) holding it."
    )

    @field_validator("variable")
    @classmethod
    def _no_climbing(cls, value: str | None) -> str | None:
        if value is not None and (".." in value.split("/") or value.startswith("/")):
            raise ValueError(f"{value!r}: a variable path may not start with '/' or contain '..'")
        return value

    @model_validator(mode="after")
    def _one_source(self) -> SecretRef:
        if (self.connection is None) == (self.variable is None):
            raise ValueError("a secret reference names either a connection or a variable")
        return self


class ConfigProfile(_Model):
    """An environment's configuration, versioned with the spec: sent with every deploy to
    the environment (the bundle carries none), hashed and recorded in the ledger and the
    evidence. Secrets appear only as references."""

    version: str = Field(min_length=1, max_length=64, description="The profile's version (bump it on every change).")
    values: dict[Annotated[str, Field(pattern=CONFIG_KEY_PATTERN)], str | int | float | bool] = Field(
        default_factory=dict, description="Plain settings, e.g. LOG_LEVEL: info."
    )
    secrets: dict[Annotated[str, Field(pattern=CONFIG_KEY_PATTERN)], SecretRef] = Field(
        default_factory=dict,
        description="Settings that are secrets, by reference: {connection: ID} or {variable: PATH}.",
    )

    @model_validator(mode="after")
    def _no_literal_secrets(self) -> ConfigProfile:
        from releasetrain.core.profile import literal_secrets

        both = sorted(set(self.values) & set(self.secrets))
        if both:
            raise ValueError(f"{both} are both values and secrets")
        problems = literal_secrets(self.values, "values")
        if problems:
            raise ValueError("; ".join(problems))
        return self

    @property
    def digest(self) -> str:
        from releasetrain.core.profile import profile_digest

        refs = {k: v.model_dump(exclude_defaults=True) for k, v in self.secrets.items()}
        return profile_digest(self.version, self.values, refs)

    def plan(self) -> dict[str, Any]:
        """Plain data for the deploy step: version, digest, values, secret references."""
        return {
            "version": self.version,
            "sha256": self.digest,
            "values": dict(self.values),
            "secrets": {k: v.model_dump(exclude_defaults=True) for k, v in self.secrets.items()},
        }


class Environment(_Model):
    name: str = Field(pattern=NAME_PATTERN)

    deploy_target: str = Field(pattern=CONN_ID_PATTERN, description="Airflow connection id of the target.")
    approval: Approval = Field(default_factory=Approval)
    smoke_checks: list[HttpCheck] = Field(default_factory=list)
    journeys: list[Annotated[str, Field(pattern=NAME_PATTERN)]] = Field(
        default_factory=list,
        description="Synthetic journeys (include/journeys/<name>.yaml) run with the smoke checks.",
    )
    health_checks: HealthVerification | None = None
    deploy_timeout_seconds: int = Field(default=900, ge=1)
    poll_interval_seconds: float = Field(default=2.0, gt=0, le=300)
    calendar: CalendarSpec | None = Field(
        default=None, description="Windows and blackouts of this environment, on top of the release's."
    )
    expected_duration_minutes: int = Field(
        default=30, ge=0, le=24 * 60, description="A deploy starts only with this much time left in its window."
    )
    owner: str | None = Field(
        default=None,
        pattern=NAME_PATTERN,
        description="Group that owns this environment: only its members may approve for it or release into it.",
    )
    production: bool | None = Field(
        default=None, description="Production for risk and change control (default: the last environment)."
    )
    strategy: Strategy = Field(default_factory=Strategy)
    config: ConfigProfile | None = Field(
        default=None, description="The environment's configuration profile, sent with every deploy to it."
    )
    test_suites: list[Suite] = Field(
        default_factory=list,
        description="Test suites run in parallel after the deploy: not blocking the next non-production "
        "environment, blocking every production one.",
    )

    @field_validator("test_suites")
    @classmethod
    def _unique_suites(cls, value: list[Suite]) -> list[Suite]:
        return unique_names(value)

    @field_validator("name")
    @classmethod
    def _not_reserved(cls, value: str) -> str:
        if value in RESERVED_ENVIRONMENT_NAMES:
            raise ValueError(f"{value!r} is reserved for a task of the release DAG; choose another name")
        return value

    @model_validator(mode="after")
    def _safe_production(self) -> Environment:
        """Safe defaults for environments marked ``production: true``."""
        if self.production:
            if not self.approval.required and not self.approval.reason:
                raise ValueError(
                    "production needs at least one human approval: set approval.required: true with "
                    "approvers, or opt out in writing with approval: {required: false, reason: ...}"
                )
            if not self.smoke_checks and not self.journeys:
                raise ValueError("production needs at least one smoke check (smoke_checks or journeys)")
        return self


class ScopeFreeze(_Model):
    """When the release's contents (components and their versions) freeze, in each cycle (the
    runs since it last reached production): on a date, or once a run passed an environment.
    After it, a run with other contents needs a scope exception, granted with a reason by
    someone other than its author (production's approvers, else the release's reviewers)."""

    date: Date | None = Field(
        default=None, description="From this day (UTC) on: the contents packaged last before it are frozen."
    )
    environment: str | None = Field(
        default=None, pattern=NAME_PATTERN, description="Once a run passed this environment: its contents are frozen."
    )

    @model_validator(mode="after")
    def _one(self) -> ScopeFreeze:
        if (self.date is None) == (self.environment is None):
            raise ValueError("scope_freeze names either a date or an environment")
        return self


SEVERITIES = ("sev1", "sev2", "sev3", "sev4")  # sev1: the most severe


class HotfixPolicy(_Model):
    """What a hotfix run (trigger params ``hotfix``, ``severity``, ``incident``) may carry;
    decided before packaging, recorded with its reasons, refused with the criteria missed."""

    severities: list[Literal["sev1", "sev2", "sev3", "sev4"]] = Field(
        default_factory=lambda: ["sev1", "sev2"], min_length=1, description="Severities a hotfix may be for."
    )
    components: list[Annotated[str, Field(pattern=NAME_PATTERN)]] | None = Field(
        default=None, description="Components a hotfix may change (default: any)."
    )
    exclude_in_test: bool = Field(
        default=True,
        description="Refuse a hotfix carrying a component version that another open run of the release still "
        "has in test (not yet in production).",
    )


class ChangePolicy(_Model):
    """How each release run is recorded as a change (ServiceNow's change state model)."""

    backend: Literal["builtin", "servicenow", "jira"] = Field(
        default="builtin",
        description="builtin: kept in the release ledger; servicenow: the Table API; jira: issues whose workflow "
        "is the change state model (the Atlassian Jira provider).",
    )
    conn_id: str | None = Field(
        default=None,
        pattern=CONN_ID_PATTERN,
        description="Connection of the backend (servicenow: HTTP; jira: a jira connection whose extra names the "
        "project).",
    )
    type: Literal["standard", "normal"] = Field(
        default="normal",
        description="standard (pre-approved) is kept only at low risk; emergency runs are emergency changes.",
    )
    advisory_board: str | None = Field(
        default=None,
        pattern=NAME_PATTERN,
        description="Group of the change advisory board: a new or changed configuration profile of an "
        "environment needs one of its members' approval (never an author's) before a release deploys it.",
    )

    @model_validator(mode="after")
    def _conn_for_servicenow(self) -> ChangePolicy:
        if self.backend == "servicenow" and not self.conn_id:
            raise ValueError("the servicenow backend needs conn_id (an HTTP connection to the instance)")
        if self.backend == "jira" and not self.conn_id:
            raise ValueError("the jira backend needs conn_id (a jira connection whose extra names the project)")
        return self


class Notification(_Model):
    """Who is told when a rollback starts, succeeds or fails, and when a bundle is tampered with.

    ``webhook`` (the default): the HTTP connection ``conn_id`` receives the JSON document.
    ``notifier``: an Airflow notifier class from the deployment's allow-list (the Slack,
    SMTP and Apprise providers' by default; see ``releasetrain.core.policy``), built with
    ``args``; in their strings ``${text}`` is the notification's one-line summary and
    ``${json}`` the whole document.
    """

    kind: Literal["webhook", "notifier"] = "webhook"
    conn_id: str | None = Field(default=None, pattern=CONN_ID_PATTERN, description="webhook: HTTP connection.")
    endpoint: str = Field(default="", description="webhook: path relative to the connection's base URL.")
    notifier: str | None = Field(
        default=None,
        pattern=r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)+$",
        description="notifier: import path of an Airflow notifier on the deployment's allow-list, e.g. "
        "airflow.providers.slack.notifications.slack.SlackNotifier.",
    )
    args: dict[str, Any] = Field(default_factory=dict, description="notifier: its keyword arguments.")
    audience: str = Field(
        default="on-call",
        pattern=NAME_PATTERN,
        description="Who this route tells (e.g. business, on-call, change-management): in every message, so a "
        "receiver can route it; several routes may serve one audience.",
    )
    moments: list[Literal["started", "succeeded"]] = Field(
        default_factory=lambda: ["started", "succeeded"],
        description="When this audience is told: a rollback starting (with the backout estimate as the expected "
        "duration) and succeeding. A failed rollback (or one that needs a human) and a tampered bundle are told to "
        "every route, always.",
    )

    @model_validator(mode="after")
    def _complete(self) -> Notification:
        if self.kind == "webhook" and not self.conn_id:
            raise ValueError("a webhook notification needs conn_id")
        if self.kind == "notifier" and not self.notifier:
            raise ValueError("a notifier notification needs notifier (the class's import path)")
        from releasetrain.core.profile import literal_secrets

        problems = literal_secrets(self.args, "args")
        if problems:
            raise ValueError("; ".join(problems))
        return self


class Migrations(_Model):
    """A component's database schema migrations: a folder of the component with plain SQL steps
    (``NNNN_name.sql`` with ``-- phase: expand`` or ``-- phase: contract`` at the top, and an
    optional ``NNNN_name.reconcile.sql``) and ``schema.yaml`` (``compatible: {min: N, max: M}``,
    the schema versions that version of the component works with), applied by
    ``<env>.migrate`` before the deploy."""

    path: str = Field(
        pattern=r"^[A-Za-z0-9_.][A-Za-z0-9_./-]*$",
        description="The folder of steps and schema.yaml, a path inside the component (packaged and signed with it).",
    )
    databases: dict[Annotated[str, Field(pattern=NAME_PATTERN)], Annotated[str, Field(pattern=CONN_ID_PATTERN)]] = (
        Field(
            min_length=1,
            description="Environment -> the Airflow connection of its database (PostgreSQL), one for every "
            "environment of the release.",
        )
    )
    wait_minutes: int = Field(
        default=30,
        ge=0,
        description="How long migrate waits (deferred) while another migration holds the database; then it fails.",
    )

    @field_validator("path")
    @classmethod
    def _inside(cls, value: str) -> str:
        if ".." in value.split("/"):
            raise ValueError(f"{value!r} must be a path inside the component (no '..')")
        return value.strip("/")


class Component(_Model):
    name: str = Field(pattern=NAME_PATTERN)
    source: str = Field(
        min_length=1,
        description="Folder or file with the component's artifacts: a path inside the project "
        "(relative), or an object storage URL (s3://, gs://, file://) under a source root the "
        "deployment configured (AIRFLOW__RELEASETRAIN__SOURCE_ROOTS).",
    )
    version: str | None = Field(default=None, description="Defaults to the release version.")
    schema_migration: bool = Field(
        default=False,
        description="The component changes a database schema outside releasetrain (risk only); components with "
        "migrations count as such.",
    )
    migrations: Migrations | None = Field(
        default=None,
        description="Schema migrations releasetrain applies before each environment's deploy (expand/contract, "
        "with a journal in the database and reconciliation when one fails half-way).",
    )
    contract: str | None = Field(
        default=None,
        pattern=r"^[A-Za-z0-9_.][A-Za-z0-9_./-]*\.(yaml|yml|json)$",
        description="The component's API contract: an OpenAPI document among its files (a path inside the "
        "component, e.g. openapi.yaml). Packaging computes the version class its changes need against the "
        "contract of the version live in production and refuses a smaller declared step.",
    )
    coupled_with: list[Annotated[str, Field(pattern=NAME_PATTERN)]] = Field(
        default_factory=list,
        description="Components that always move with this one (packaging: modular): they share one bundle, "
        "one deploy and one rollback.",
    )

    @field_validator("version")
    @classmethod
    def _semver(cls, value: str | None) -> str | None:
        if value is not None and not is_semver(value):
            raise ValueError(f"{value!r} is not a semantic version (MAJOR.MINOR.PATCH)")
        return value

    @field_validator("contract")
    @classmethod
    def _inside(cls, value: str | None) -> str | None:
        if value is not None and ".." in value.split("/"):
            raise ValueError(f"{value!r} must be a path inside the component (no '..')")
        return value


class Dependency(_Model):
    """A shared service this release needs: its deploy waits until the service's release runs
    at least ``min_version`` in the matching environment (from the ledger)."""

    release: str = Field(pattern=NAME_PATTERN, description="The shared service's release.")
    min_version: str = Field(description="The oldest version of it this release works with.")
    environments: dict[str, str] = Field(
        default_factory=dict,
        description="This release's environment -> the service's environment that must run min_version "
        "first. Empty: every environment of this release, under the same name.",
    )
    wait_minutes: int = Field(
        default=60, ge=0, description="How long the deploy waits (deferred) for it; then it fails. 0: fail at once."
    )

    @field_validator("min_version")
    @classmethod
    def _semver(cls, value: str) -> str:
        if not is_semver(value):
            raise ValueError(f"{value!r} is not a semantic version (MAJOR.MINOR.PATCH)")
        return value


class PostmortemReview(_Model):
    """A blameless postmortem review after each rollback: asked of the release's owners beside
    the rollback (never before it), recorded in the ledger and the evidence; the change record
    stays in Review until it is answered or its deadline passes."""

    owners: list[Annotated[str, Field(min_length=1)]] = Field(
        default_factory=list,
        description="Who is asked (user ids). Empty: the owner_team group's members, else the environment's "
        "owners, else its approvers.",
    )
    deadline_minutes: int = Field(
        default=4320,
        ge=1,
        description="How long the review waits (deferred, costing nothing); then the overdue review is recorded "
        "and the change record closes without it.",
    )


class AlertWatch(_Model):
    """Alerts as a rollback trigger: every environment is watched for ``watch_minutes`` after its
    deploy (deferred); an alert the alert webhook attaches to the run in that time rolls it back."""

    watch_minutes: float = Field(
        gt=0,
        le=60,
        description="How long after each deploy (its record; the checks after it count) a firing alert for the "
        "environment (Alertmanager's label environment) rolls it back; the environment passes only after a quiet "
        "watch. At most 60: alerts are attached within ALERT_WINDOW_MINUTES (default 60) of a deploy.",
    )


class ReleaseSpec(_Model):
    """A release: what is shipped (components), where (environments, in promotion order),
    and under which controls (checks, approvals)."""

    name: str = Field(pattern=NAME_PATTERN)
    description: str = ""
    owner_team: str = Field(min_length=1)
    version: str | None = Field(
        default=None,
        description="Fixed version of a planned release. Omit for a release train: "
        "the version is then given when the run is triggered.",
    )
    components: list[Component] = Field(min_length=1)
    packaging: Literal["monolithic", "modular"] = Field(
        default="monolithic",
        description="'monolithic': one signed bundle with every component, one deploy and one rollback per "
        "environment. 'modular': each component (with those it is coupled_with) is its own signed bundle with "
        "its own deploy and rollback; the release bundle with every component stays the record that is "
        "approved and promoted.",
    )
    environments: list[Environment] = Field(min_length=1)
    artifact_store: str | None = Field(
        default=None,
        description="Where bundles are stored (ObjectStoragePath URL); default: the "
        "'releasetrain_artifact_store' Airflow variable, else $AIRFLOW_HOME/artifacts. A spec may set it "
        "only under a root the deployment allows (AIRFLOW__RELEASETRAIN__ARTIFACT_ROOTS).",
    )
    tags: list[str] = Field(default_factory=list)
    calendar: CalendarSpec | None = Field(
        default=None, description="Release windows and blackouts that apply to every environment."
    )
    schedule: Literal["windows"] | None = Field(
        default=None,
        description="'windows': a scheduled run starts at each opening of the release's windows "
        "(release-level calendar) that is not blacked out.",
    )
    planned_start: datetime | None = Field(
        default=None, description="When a planned release is to go out (with offset), for conflict reports."
    )
    planned_duration_minutes: int = Field(default=60, gt=0)
    business_impact: Literal["low", "medium", "high", "critical"] = Field(
        default="medium",
        description="What the business loses while this release waits: when runs of several releases queue "
        "for one deploy target, the higher impact goes first (then the earlier waiter), and Airflow runs its "
        "tasks first when slots are short.",
    )
    reviewers: list[str] = Field(
        default_factory=list,
        description="Who may give the post-implementation review of an emergency change; default: every "
        "environment's approvers. Never the release's authors.",
    )
    depends_on: list[str | Dependency] = Field(
        default_factory=list,
        description="Releases this one must not overlap with (shared dependencies): a name, or a shared "
        "service this release needs, {release, min_version, environments, wait_minutes}: each gated "
        "environment's deploy waits (deferred) until the service runs min_version there.",
    )
    rollback_plan: str | None = Field(
        default=None, min_length=10, description="How to back the release out (text or a link to the runbook)."
    )
    rollback_approvers: list[str] = Field(
        default_factory=list,
        description="Who must approve a manual rollback before it changes anything (never the person who "
        "triggers it). Empty: a manual rollback needs no second person before it, only the review after.",
    )
    backout_minutes: int | None = Field(default=None, gt=0, description="Estimated time to back the release out.")
    alerts: AlertWatch | None = Field(
        default=None,
        description="Roll back when an alert fires during a watch after each deploy. Without it, alerts are still "
        "attached to the release they follow (the alert webhook), and nothing rolls back on them.",
    )
    postmortem: PostmortemReview | None = Field(
        default=None,
        description="Ask the owners for a blameless postmortem review after each rollback (findings, contributing "
        "causes, actions). Without it a rollback still writes its postmortem draft and closes the change record.",
    )
    trends: list[TrendRule] = Field(
        default_factory=list,
        description="Procedure the release's recent history adds: e.g. after 2 rollbacks in 30 days, a soak in "
        "staging and an extra production approval (shown to approvers with the trend).",
    )
    change: ChangePolicy = Field(default_factory=lambda: ChangePolicy())
    hotfix_policy: HotfixPolicy | None = Field(
        default=None, description="Lets runs be hotfixes (trigger params hotfix, severity, incident) under rules."
    )
    scope_freeze: ScopeFreeze | None = Field(
        default=None,
        description="When the release's contents freeze: {date: 2026-12-01} or {environment: staging}; after "
        "it, other components or versions need a scope exception.",
    )
    notifications: list[Notification] = Field(
        default_factory=list,
        description="Who is told, by audience: when a rollback starts (expected duration: backout_minutes), "
        "succeeds (what failed, measurements, links) or fails, and when a bundle fails verification.",
    )
    closure: bool = Field(
        default=True,
        description="End with a closure step that records the runbook update before the change record closes.",
    )
    config_patterns: list[str] | None = Field(
        default=None,
        description="File names that hold one environment's configuration, refused in bundles ({environment} "
        "stands for each environment's name). Default: .env files and <name>.<environment>.* / "
        "<name>-<environment>.* style names; [] turns the check off.",
    )

    @field_validator("version")
    @classmethod
    def _semver(cls, value: str | None) -> str | None:
        if value is not None and not is_semver(value):
            raise ValueError(f"{value!r} is not a semantic version (MAJOR.MINOR.PATCH)")
        return value

    @field_validator("components", "environments")
    @classmethod
    def _unique_names(cls, value: list[Any]) -> list[Any]:
        return unique_names(value)

    @model_validator(mode="after")
    def _schedulable(self) -> ReleaseSpec:
        if self.schedule == "windows" and not (self.calendar and (self.calendar.windows or self.calendar.use)):
            raise ValueError("schedule 'windows' needs a release-level calendar with windows (or shared calendars)")
        if self.has_calendar and not self.review_users:
            raise ValueError(
                "a release with calendars needs someone to review emergency changes: set reviewers "
                "(or approvers on an environment)"
            )
        if self.planned_start is not None and self.planned_start.tzinfo is None:
            raise ValueError("planned_start needs an offset or Z, e.g. 2026-12-01T09:00:00+01:00")
        names = {env.name for env in self.environments}
        for i, dependency in enumerate(self.depends_on):
            if isinstance(dependency, Dependency):
                unknown = sorted(set(dependency.environments) - names)
                if unknown:
                    raise ValueError(f"depends_on[{i}].environments: {unknown} are not environments of this release")
                if dependency.release == self.name:
                    raise ValueError(f"depends_on[{i}]: a release cannot depend on itself")
        policy = self.hotfix_policy
        unknown = sorted(set(policy.components or []) - {c.name for c in self.components}) if policy else []
        if unknown:
            raise ValueError(f"hotfix_policy.components: {unknown} are not components of this release")
        freeze = self.scope_freeze
        if freeze and freeze.environment and freeze.environment not in names:
            raise ValueError(f"scope_freeze.environment: {freeze.environment!r} is not an environment of this release")
        if freeze and freeze.environment in self.production_environments:
            raise ValueError("scope_freeze.environment: passing production ends the release's cycle; freeze before it")
        self._modular_problems()
        self._migration_problems()
        self._trend_problems()
        return self

    def _trend_problems(self) -> None:
        names = [env.name for env in self.environments]
        for i, rule in enumerate(self.trends):
            if rule.soak and rule.soak.environment not in names:
                raise ValueError(f"trends[{i}].soak.environment: {rule.soak.environment!r} is not an environment")
            if rule.soak and rule.soak.environment == names[-1]:
                raise ValueError(
                    f"trends[{i}].soak.environment: a soak holds the promotion out of an environment; "
                    f"{names[-1]!r} is the last one"
                )
            approving = [e.name for e in self.environments if e.name in self.production_environments]
            approving = [n for n in approving if self.environment(n).approval.required]
            if rule.extra_approvals and not approving:
                raise ValueError(
                    f"trends[{i}].extra_approvals: no production environment asks for approval to add them to"
                )

    def _migration_problems(self) -> None:
        names = [env.name for env in self.environments]
        for i, component in enumerate(self.components):
            if component.migrations is None:
                continue
            databases = component.migrations.databases
            unknown = sorted(set(databases) - set(names))
            if unknown:
                raise ValueError(
                    f"components[{i}].migrations.databases: {unknown} are not environments of this release"
                )
            shared = sorted({c for c in databases.values() if list(databases.values()).count(c) > 1})
            if shared:
                raise ValueError(
                    f"components[{i}].migrations.databases: {shared} serve several environments; each environment "
                    "migrates a database of its own (one journal, one schema version per environment)"
                )
            missing = [n for n in names if n not in databases]
            if missing:
                raise ValueError(
                    f"components[{i}].migrations.databases: no database for {missing} (every environment the "
                    "component is deployed to migrates its own)"
                )

    def _modular_problems(self) -> None:
        known = {c.name for c in self.components}
        for i, component in enumerate(self.components):
            unknown = sorted(set(component.coupled_with) - known)
            if unknown:
                raise ValueError(f"components[{i}].coupled_with: {unknown} are not components of this release")
            if component.name in component.coupled_with:
                raise ValueError(f"components[{i}].coupled_with: {component.name} cannot be coupled with itself")
        if self.packaging != "modular":
            return
        for env in self.environments:
            if env.strategy.progressive:
                raise ValueError(
                    f"environment {env.name}: packaging 'modular' deploys each unit with its own rolling deploy; "
                    f"a {env.strategy.kind} strategy moves one bundle: use packaging 'monolithic' for it"
                )
            if env.strategy.watch is not None:
                raise ValueError(
                    f"environment {env.name}: packaging 'modular' has no watch analysis yet (its metrics are the "
                    "environment's, not a unit's): use smoke and health checks on components/<unit>/"
                )
            if env.config:
                raise ValueError(
                    f"environment {env.name}: packaging 'modular' does not send config profiles yet (each unit "
                    "would carry the environment's whole profile): use packaging 'monolithic' with config"
                )

    def units(self) -> list[tuple[str, list[str]]]:
        """The deploy units, in the spec's order: ``(name, components)``. Modular: each component
        with the ones it is coupled with (either way round, transitively), named after the first
        of them; monolithic: one unit, the release, with every component."""
        names = [c.name for c in self.components]
        if self.packaging != "modular":
            return [(self.name, names)]
        group = {n: n for n in names}

        def root(n: str) -> str:
            while group[n] != n:
                n = group[n]
            return n

        for component in self.components:
            for other in component.coupled_with:
                a, b = sorted((root(component.name), root(other)), key=names.index)
                group[b] = a
        units: dict[str, list[str]] = {}
        for n in names:
            units.setdefault(root(n), []).append(n)
        return list(units.items())

    @property
    def dependency_names(self) -> list[str]:
        """Every release named in ``depends_on`` (for overlap conflicts)."""
        return [d if isinstance(d, str) else d.release for d in self.depends_on]

    def requirements(self, environment: str) -> list[dict[str, Any]]:
        """What ``environment``'s deploy needs running first: ``{release, environment, min_version,
        wait_minutes}`` per shared service."""
        found = []
        for d in self.depends_on:
            if isinstance(d, str) or (d.environments and environment not in d.environments):
                continue
            where = d.environments.get(environment, environment)
            found.append(
                {
                    "release": d.release,
                    "environment": where,
                    "min_version": d.min_version,
                    "wait_minutes": d.wait_minutes,
                }
            )
        return found

    @property
    def production_environments(self) -> list[str]:
        marked = [env.name for env in self.environments if env.production]
        if marked or any(env.production is False for env in self.environments[-1:]):
            return marked
        return [self.environments[-1].name]

    @property
    def review_users(self) -> list[str]:
        """Who reviews emergency changes: ``reviewers``, else every environment's approvers."""
        return list(self.reviewers) or sorted({u for env in self.environments for u in env.approval.approvers})

    @property
    def has_calendar(self) -> bool:
        return self.calendar is not None or any(env.calendar is not None for env in self.environments)

    def calendar_layers(self, environment: str | None = None) -> list[CalendarSpec]:
        """The calendars that govern an environment (or, with None, the release itself)."""
        layers = [self.calendar] if self.calendar else []
        if environment is not None:
            env = self.environment(environment)
            if env.calendar:
                layers.append(env.calendar)
        return layers

    @property
    def priority(self) -> int:
        """The release's place in queues (deploy-target locks, Airflow's pools): its business impact."""
        from releasetrain.core.vocabulary import IMPACT_PRIORITY

        return IMPACT_PRIORITY[self.business_impact]

    @property
    def dag_id(self) -> str:
        return f"release_{self.name}"

    @property
    def is_train(self) -> bool:
        """A release train takes its version at trigger time."""
        return self.version is None

    def environment(self, name: str) -> Environment:
        for env in self.environments:
            if env.name == name:
                return env
        raise KeyError(name)

    def previous_environment(self, name: str) -> Environment | None:
        names = [env.name for env in self.environments]
        index = names.index(name)
        return self.environments[index - 1] if index else None


def _format_location(loc: Iterable[Any]) -> str:
    path = ""
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        else:
            path += f".{part}" if path else str(part)
    return path


SPEC_SCHEMA_HINT = "; see include/schema/release-spec.schema.json"


def _reason(error: dict[str, Any], hint: str = SPEC_SCHEMA_HINT, known: Iterable[str] = ()) -> str:
    kind = error["type"]
    if kind == "missing":
        return "field required"
    if kind == "extra_forbidden":
        import difflib

        field = str(error["loc"][-1]) if error["loc"] else ""
        close = difflib.get_close_matches(field, list(known), n=1, cutoff=0.6)
        if close:
            return f"unknown field: did you mean {close[0]!r}?"
        return f"unknown field (check the spelling{hint})"
    message = error["msg"].removeprefix("Value error, ")
    return message + _yaml_hint(kind, error.get("input"))


def _yaml_hint(kind: str, value: Any) -> str:
    """YAML 1.1 reads some unquoted words and numbers as something else than they look."""
    if kind not in ("string_type", "literal_error", "enum", "string_pattern_mismatch"):
        return ""
    if isinstance(value, bool):
        return f' (YAML read an unquoted yes/no/on/off/y/n as {str(value).lower()}: quote it, e.g. "NO" for Norway)'
    if isinstance(value, float):
        return f' (YAML read an unquoted number as {value!r}, which drops trailing zeros: quote it, e.g. "1.10")'
    if isinstance(value, int):
        return f' (YAML read an unquoted number as {value!r}: quote it to keep it as written, e.g. "0755")'
    return ""


def _known_fields(model: Any, loc: list[Any]) -> list[str]:
    """The field names allowed where ``loc`` (a path to an unknown field) points."""
    import typing

    from pydantic import BaseModel

    def models_in(annotation: Any) -> list[type[BaseModel]]:
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            return [annotation]
        found: list[type[BaseModel]] = []
        for arg in typing.get_args(annotation):
            found += models_in(arg)
        return found

    current = [model]
    for part in loc[:-1]:
        if isinstance(part, int):
            continue
        following: list[type[BaseModel]] = []
        for each in current:
            field = each.model_fields.get(part)
            if field is None:
                field = next((f for f in each.model_fields.values() if f.alias == part), None)
            if field is not None:
                following += models_in(field.annotation)
        current = following or current
    names: list[str] = []
    for each in current:
        for name, field in each.model_fields.items():
            names.append(field.alias or name)
    return names


def _problems(exc: ValidationError, hint: str = SPEC_SCHEMA_HINT, model: Any = None) -> list[tuple[str, str]]:
    """(field path, reason) per validation error; ``hint`` follows "unknown field" (when no
    allowed field of ``model`` there is close to it)."""
    problems = []
    for error in exc.errors():
        loc = [part for part in error["loc"] if not (isinstance(part, str) and part.startswith("function-"))]
        known = _known_fields(model, loc) if model is not None and error["type"] == "extra_forbidden" else ()
        problems.append((_format_location(loc), _reason(error, hint, known)))
    return problems


def parse_spec(data: Any, source: str = "<spec>") -> ReleaseSpec:
    """Validate already-loaded data; raise :class:`ReleaseSpecError` naming field paths."""
    if not isinstance(data, dict):
        raise ReleaseSpecError(source, [("", "a release spec must be a YAML mapping")])
    try:
        return ReleaseSpec.model_validate(data)
    except ValidationError as exc:
        raise ReleaseSpecError(source, _problems(exc, model=ReleaseSpec)) from None


def _read_yaml(path: Path, source: str, error: type[ValueError] = ReleaseSpecError) -> Any:
    """A YAML mapping from ``path``; ``error(source, [(field, reason)])`` names what is wrong and where."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise error(source, [("", f"cannot be read: {exc.strerror}")]) from None
    try:
        data = yaml.load(text, Loader=_YAML_LOADER)  # noqa: S506 - a safe loader
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise error(source, [("", f"{where}invalid YAML: {problem}")]) from None
    if not isinstance(data, dict):
        raise error(source, [("", "must be a YAML mapping")])
    return data


def load_spec(
    path: Path | str, *, display_root: Path | None = None, calendars: CalendarLibrary | None = None
) -> ReleaseSpec:
    """Read and validate one YAML release spec (and the calendars it names)."""
    path = Path(path)
    source = _display(path, display_root) if display_root else str(path)
    data = _read_yaml(path, source)
    spec = parse_spec(data, source)
    from releasetrain.core.policy import check_policy

    problems = check_policy(spec, data)
    if problems:
        raise ReleaseSpecError(source, problems)
    if spec.name != path.stem:
        raise ReleaseSpecError(source, [("name", f"{spec.name!r} must match the file name {path.stem!r}")])
    library = calendars or CalendarLibrary(display_root or Path.cwd())
    if spec.has_calendar:
        check_calendars(spec, source, library)
    check_groups(spec, source, library.groups())
    return spec


CALENDAR_DIRS_ENV = "RELEASETRAIN_CALENDAR_DIRS"


class CalendarLibrary:
    """Shared calendars (``<dir>/<name>.yaml``) and the ICS files calendars name.

    ICS paths are relative to the project root. Files are read when asked, so a blackout
    added to a shared calendar is seen by the next check.
    """

    def __init__(self, project_root: Path, directories: Iterable[Path] | None = None):
        self.project_root = Path(project_root)
        self.directories = list(directories) if directories is not None else calendar_dirs(self.project_root)
        self._texts: dict[tuple[str, int, int], str] = {}

    def shared(self, name: str) -> SharedCalendar:
        for directory in self.directories:
            for suffix in (".yaml", ".yml"):
                path = directory / f"{name}{suffix}"
                if path.is_file():
                    return _load_shared(path, self.project_root)
        where = ", ".join(str(d) for d in self.directories)
        raise CalendarError(f"no shared calendar {name!r} (looked for {name}.yaml in {where})")

    def read_text(self, relative: str) -> str:
        path = (self.project_root / relative).resolve()
        if not path.is_relative_to(self.project_root.resolve()):
            raise CalendarError(f"{relative} lies outside the project")
        try:
            stat = path.stat()
            key = (str(path), stat.st_mtime_ns, stat.st_size)
            if key not in self._texts:  # read once per version of the file
                self._texts[key] = path.read_text(encoding="utf-8")
            return self._texts[key]
        except OSError as exc:
            raise CalendarError(f"{relative} cannot be read: {exc.strerror}") from None

    def resolve(self, layers: list[CalendarSpec]) -> ReleaseCalendar:
        return ReleaseCalendar.resolve(layers, self.shared, self.read_text)

    def binding_all(self) -> list[str]:
        """Names of the shared calendars marked ``applies_to: all`` (first folder wins on a name)."""
        names: dict[str, str] = {}
        for directory in self.directories:
            for path in sorted([*directory.glob("*.yaml"), *directory.glob("*.yml")]):
                if path.stem not in names:
                    names[path.stem] = _load_shared(path, self.project_root).applies_to
        return [name for name, applies in names.items() if applies == "all"]

    def binding(self, spec: ReleaseSpec) -> ReleaseSpec:
        """The spec with every ``applies_to: all`` calendar added to its release-level calendar."""
        missing = [name for name in self.binding_all() if not (spec.calendar and name in spec.calendar.use)]
        if not missing:
            return spec
        calendar = spec.calendar or CalendarSpec()
        return spec.model_copy(update={"calendar": calendar.model_copy(update={"use": [*missing, *calendar.use]})})

    def groups(self) -> dict[str, list[str]]:
        """Approver groups (``include/groups.yaml`` or ``$RELEASETRAIN_GROUPS_FILE``): name -> user ids."""
        return load_groups(groups_file(self.project_root), self.project_root)

    def people(self) -> dict[str, str]:
        """The people directory of the groups file (``users: {<id>: <name>}``): user id -> name."""
        return load_people(groups_file(self.project_root), self.project_root)


GROUPS_FILE_ENV = "RELEASETRAIN_GROUPS_FILE"
_GROUPS_CACHE: dict[tuple[str, int, int], dict[str, list[str]]] = {}


def groups_file(project_root: Path) -> Path:
    from releasetrain.core.settings import setting

    return Path(setting("GROUPS_FILE") or Path(project_root) / "include" / "groups.yaml")


def load_groups(path: Path, root: Path) -> dict[str, list[str]]:
    """``groups: {name: [user, ...]}``; an absent file means no groups."""
    if not path.is_file():
        return {}
    stat = path.stat()
    key = (str(path), stat.st_mtime_ns, stat.st_size)
    if key not in _GROUPS_CACHE:
        source = _display(path, root)
        data = _read_yaml(path, source)
        groups = data.get("groups")
        problems: list[tuple[str, str]] = []
        if set(data) - {"groups", "users"}:
            unknown = sorted(set(data) - {"groups", "users"})
            problems.append(("", f"unknown keys {unknown}; only 'groups' and 'users' are allowed"))
        if not isinstance(groups, dict):
            raise ReleaseSpecError(source, problems + [("groups", "must map group names to lists of user ids")])
        for name, users in groups.items():
            if not isinstance(name, str) or not re.match(NAME_PATTERN, name):
                problems.append((f"groups.{name}", "is not a valid group name"))
            elif not isinstance(users, list) or not users:
                problems.append((f"groups.{name}", "must be a non-empty list of user ids"))
            else:
                bad = [u for u in users if not isinstance(u, str) or not re.match(USER_PATTERN, u)]
                if bad:
                    problems.append((f"groups.{name}", f"invalid user ids {bad}"))
        if problems:
            raise ReleaseSpecError(source, problems)
        _GROUPS_CACHE[key] = {name: list(dict.fromkeys(users)) for name, users in groups.items()}
    return _GROUPS_CACHE[key]


def load_people(path: Path, root: Path) -> dict[str, str]:
    """``users: {<user id>: <name>}`` of the groups file; absent: nobody (ids are names)."""
    if not path.is_file():
        return {}
    stat = path.stat()
    key = (str(path), stat.st_mtime_ns, stat.st_size)
    if key not in _PEOPLE_CACHE:
        _PEOPLE_CACHE[key] = _read_people(path, root)
    return dict(_PEOPLE_CACHE[key])


_PEOPLE_CACHE: dict[tuple[str, int, int], dict[str, str]] = {}


def _read_people(path: Path, root: Path) -> dict[str, str]:
    source = _display(path, root)
    users = _read_yaml(path, source).get("users") or {}
    if not isinstance(users, dict):
        raise ReleaseSpecError(source, [("users", "must map user ids to names")])
    people = {str(uid): str(name) for uid, name in users.items()}
    bad = [uid for uid in people if not re.match(USER_PATTERN, uid)]
    if bad:
        raise ReleaseSpecError(source, [("users", f"invalid user ids {bad}")])
    names = list(people.values())
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise ReleaseSpecError(source, [("users", f"names {twice} belong to more than one user id")])
    return people


def approval_pool(env: Environment, groups: dict[str, list[str]]) -> list[str]:
    """Everyone who may fill the quorum: approvers, then members of the approver groups;
    only members of the owning group when the environment has an owner."""
    pool = list(env.approval.approvers)
    for name in env.approval.groups:
        pool += [user for user in groups.get(name, []) if user not in pool]
    if env.owner:
        owners = set(groups.get(env.owner, []))
        pool = [user for user in pool if user in owners]
    return pool


def check_groups(spec: ReleaseSpec, source: str, groups: dict[str, list[str]]) -> None:
    """Every group a spec names exists, quorums can be met, owners' rules hold."""
    problems: list[tuple[str, str]] = []
    for i, env in enumerate(spec.environments):
        where = f"environments[{i}]"
        approval = env.approval
        for field_name in ("groups", "reviews"):
            for j, name in enumerate(getattr(approval, field_name)):
                if name not in groups:
                    problems.append((f"{where}.approval.{field_name}[{j}]", f"no approver group {name!r} is defined"))
        if env.owner and env.owner not in groups:
            problems.append((f"{where}.owner", f"no group {env.owner!r} is defined"))
        if problems:
            continue
        pool = approval_pool(env, groups)
        if approval.required and len(pool) < approval.quorum:
            problems.append(
                (
                    f"{where}.approval.quorum",
                    f"a quorum of {approval.quorum} needs at least {approval.quorum} possible approvers; found {pool}",
                )
            )
        extra = max((rule.extra_approvals for rule in spec.trends), default=0)
        if approval.required and extra and env.name in spec.production_environments:
            from releasetrain.core.risk import HIGH_RISK_QUORUM

            base = max(approval.quorum, HIGH_RISK_QUORUM)  # a high-risk run's quorum, before the rule's
            needed = base + extra
            if len(pool) < needed:
                problems.append(
                    (
                        f"{where}.approval.quorum",
                        f"a trend rule adds {extra} approval(s) to {env.name}'s quorum (up to {base} at high risk): "
                        f"{needed} possible approvers are needed; found {pool}",
                    )
                )
        if env.owner:
            members = set(groups[env.owner])
            outsiders = [u for u in approval.approvers if u not in members]
            if outsiders:
                problems.append(
                    (
                        f"{where}.approval.approvers",
                        f"{outsiders} are not members of {env.owner!r}, the owner of {env.name!r}",
                    )
                )
    board = spec.change.advisory_board
    if board and board not in groups:
        problems.append(("change.advisory_board", f"no group {board!r} is defined"))
    elif board and not groups[board]:
        problems.append(("change.advisory_board", f"group {board!r} has no members to approve profiles"))
    if problems:
        raise ReleaseSpecError(source, problems)


def calendar_dirs(project_root: Path) -> list[Path]:
    from releasetrain.core.settings import setting

    configured = setting("CALENDAR_DIRS")
    if configured:
        return [Path(p) for p in configured.split(os.pathsep) if p]
    return [Path(project_root) / "include" / "calendars"]


def _display(path: Path, root: Path) -> str:
    return str(path.relative_to(root)) if path.is_relative_to(root) else str(path)


_SHARED_CACHE: dict[tuple[str, int, int], SharedCalendar] = {}


def _load_shared(path: Path, root: Path) -> SharedCalendar:
    """A shared calendar file, parsed once per version of the file (path, mtime, size)."""
    stat = path.stat()
    key = (str(path), stat.st_mtime_ns, stat.st_size)
    if key not in _SHARED_CACHE:
        if len(_SHARED_CACHE) > 256:
            _SHARED_CACHE.clear()
        _SHARED_CACHE[key] = _parse_shared(path, root)
    return _SHARED_CACHE[key]


def _parse_shared(path: Path, root: Path) -> SharedCalendar:
    source = _display(path, root)
    data = _read_yaml(path, source)
    try:
        calendar = SharedCalendar.model_validate(data)
    except ValidationError as exc:
        raise ReleaseSpecError(source, _problems(exc)) from None
    if calendar.name != path.stem:
        raise ReleaseSpecError(source, [("name", f"{calendar.name!r} must match the file name {path.stem!r}")])
    return calendar


def check_calendars(spec: ReleaseSpec, source: str, library: CalendarLibrary) -> None:
    """Resolve every calendar the spec names (shared files, ICS) and report problems by field."""
    problems: list[tuple[str, str]] = []
    layers = [("calendar", spec.calendar)] + [
        (f"environments[{i}].calendar", env.calendar) for i, env in enumerate(spec.environments)
    ]
    for path, layer in layers:
        if layer is None:
            continue
        for j, name in enumerate(layer.use):
            try:
                library.shared(name)
            except (CalendarError, ReleaseSpecError) as exc:
                problems.append((f"{path}.use[{j}]", str(exc)))
        for k, rule in enumerate(layer.blackouts):
            if isinstance(rule, IcsBlackout):
                try:
                    from releasetrain.core.windows import parse_ics

                    parse_ics(library.read_text(rule.ics), rule.ics)
                except CalendarError as exc:
                    problems.append((f"{path}.blackouts[{k}].ics", str(exc)))
    if not problems:
        for path, layer_list in [("calendar", spec.calendar_layers(None))] + [
            (f"environments[{i}].calendar", spec.calendar_layers(env.name)) for i, env in enumerate(spec.environments)
        ]:
            try:
                resolved = library.resolve(layer_list)
            except (CalendarError, ReleaseSpecError) as exc:
                problems.append((path, str(exc)))
                continue
            if path == "calendar" and spec.schedule == "windows" and not resolved.windows:
                problems.append(("schedule", "'windows' needs allowed windows in the release's calendars"))
    if problems:
        raise ReleaseSpecError(source, problems)


def discover_specs(directories: Iterable[Path]) -> list[Path]:
    """Every ``*.yaml``/``*.yml`` file in the given folders, sorted by name."""
    found: list[Path] = []
    for directory in directories:
        if directory.is_dir():
            found.extend(p for p in directory.iterdir() if p.suffix in {".yaml", ".yml"} and p.is_file())
    return sorted(found, key=lambda p: (p.name, str(p)))


def json_schema() -> dict[str, Any]:
    """The JSON Schema of a release spec (exported to include/schema/release-spec.schema.json)."""
    schema = ReleaseSpec.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["$id"] = "https://releasetrain.dev/schema/release-spec.schema.json"
    schema["properties"]["version"]["anyOf"][0]["pattern"] = SEMVER_PATTERN
    return schema


def json_schema_text() -> str:
    return json.dumps(json_schema(), indent=2, sort_keys=True) + "\n"
