"""Environment promotion: an environment only receives the exact digest that succeeded
in the environment before it."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


class PromotionError(RuntimeError):
    """A promotion that would ship something other than what was proven before."""


def check_promotion(
    environment: str,
    digest: str,
    previous_environment: str | None,
    previous_result: Mapping[str, Any] | None,
) -> None:
    """Refuse to deploy ``digest`` to ``environment`` unless it passed ``previous_environment``.

    ``previous_result`` is what the previous environment's last gate recorded:
    ``{"environment": ..., "digest": ..., "passed": True}``.
    """
    if previous_environment is None:
        return
    if not previous_result:
        raise PromotionError(
            f"{environment}: no successful result recorded for {previous_environment}; "
            f"a release reaches {environment} only after passing {previous_environment}"
        )
    if previous_result.get("environment") != previous_environment or not previous_result.get("passed"):
        raise PromotionError(f"{environment}: {previous_environment} did not pass: {dict(previous_result)}")
    if previous_result.get("digest") != digest:
        raise PromotionError(
            f"{environment}: digest {digest} is not the digest that passed {previous_environment} "
            f"({previous_result.get('digest')})"
        )
