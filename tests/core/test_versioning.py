from __future__ import annotations

import pytest

from releasetrain.core.versioning import Version, VersionClass, VersionError, classify_change, is_semver


@pytest.mark.parametrize(
    "text, ok",
    [
        ("1.0.0", True),
        ("0.0.1", True),
        ("1.2.3-rc.1", True),
        ("1.2.3+build.5", True),
        ("10.20.30", True),
        ("1.2", False),
        ("01.2.3", False),
        ("v1.2.3", False),
        ("1.2.3-", False),
        ("", False),
        ("latest", False),
    ],
)
def test_is_semver(text, ok):
    assert is_semver(text) is ok


def test_precedence_follows_semver():
    ordered = [
        "1.0.0-alpha",
        "1.0.0-alpha.1",
        "1.0.0-beta",
        "1.0.0-beta.2",
        "1.0.0-rc.1",
        "1.0.0",
        "1.0.1",
        "1.1.0",
        "2.0.0",
    ]
    parsed = [Version.parse(v) for v in ordered]
    assert sorted(reversed(parsed)) == parsed


@pytest.mark.parametrize(
    "old, new, kind",
    [
        ("1.2.3", "2.0.0", VersionClass.MAJOR),
        ("1.2.3", "1.3.0", VersionClass.MINOR),
        ("1.2.3", "1.2.4", VersionClass.PATCH),
        ("1.2.3-rc.1", "1.2.3", VersionClass.PRERELEASE),
        ("1.2.3", "1.2.3", VersionClass.SAME),
    ],
)
def test_classify_change(old, new, kind):
    assert classify_change(old, new) is kind


def test_parse_error_names_the_value():
    with pytest.raises(VersionError, match="'1.x' is not a semantic version"):
        Version.parse("1.x")
