"""Semantic versions (https://semver.org), the only version scheme a release accepts."""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum

# The official semver 2.0.0 regular expression (semver.org, "numbered capture groups").
SEMVER_PATTERN = (
    r"^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)"
    r"(?:-((?:0|[1-9]\d*|\d*[a-zA-Z-][0-9a-zA-Z-]*)(?:\.(?:0|[1-9]\d*|\d*[a-zA-Z-][0-9a-zA-Z-]*))*))?"
    r"(?:\+([0-9a-zA-Z-]+(?:\.[0-9a-zA-Z-]+)*))?$"
)
_SEMVER = re.compile(SEMVER_PATTERN)


class VersionError(ValueError):
    """A string that is not a semantic version."""


class VersionClass(StrEnum):
    MAJOR = "major"
    MINOR = "minor"
    PATCH = "patch"
    PRERELEASE = "prerelease"
    SAME = "same"


@dataclass(frozen=True, order=False)
class Version:
    major: int
    minor: int
    patch: int
    prerelease: tuple[str, ...] = ()
    build: str = ""

    @classmethod
    def parse(cls, text: str) -> Version:
        match = _SEMVER.match(text or "")
        if not match:
            raise VersionError(f"{text!r} is not a semantic version (MAJOR.MINOR.PATCH, e.g. 1.4.2)")
        major, minor, patch, pre, build = match.groups()
        return cls(int(major), int(minor), int(patch), tuple(pre.split(".")) if pre else (), build or "")

    def _key(self) -> tuple:
        # Precedence per semver 11: a pre-release sorts before its release; build is ignored.
        pre_key: tuple = (
            (1,)
            if not self.prerelease
            else (0,) + tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in self.prerelease)
        )
        return (self.major, self.minor, self.patch, pre_key)

    def __lt__(self, other: Version) -> bool:
        return self._key() < other._key()

    def __le__(self, other: Version) -> bool:
        return self._key() <= other._key()

    def __str__(self) -> str:
        text = f"{self.major}.{self.minor}.{self.patch}"
        if self.prerelease:
            text += "-" + ".".join(self.prerelease)
        if self.build:
            text += "+" + self.build
        return text


def is_semver(text: str) -> bool:
    return bool(_SEMVER.match(text or ""))


def classify_change(previous: str, new: str) -> VersionClass:
    """Classify the step from ``previous`` to ``new`` as major, minor, patch or pre-release."""
    old, cur = Version.parse(previous), Version.parse(new)
    if (old.major, old.minor, old.patch) != (cur.major, cur.minor, cur.patch):
        if cur.major != old.major:
            return VersionClass.MAJOR
        if cur.minor != old.minor:
            return VersionClass.MINOR
        return VersionClass.PATCH
    if old.prerelease != cur.prerelease:
        return VersionClass.PRERELEASE
    return VersionClass.SAME
