"""How long an app lives: `--ttl`, the blueprint's `lifetime`, and `--budget` turned into time
by the plan's cost per hour (the smaller wins). Pure."""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..model.blueprint import Lifetime


@dataclass(frozen=True)
class LifetimeChoice:
    ttl_s: int
    action: str  # destroy | stop
    source: str  # what decided it: "--ttl", "lifetime.ttl" (the blueprint), "--budget"


def budget_seconds(amount: float, cost_per_hour: float) -> int | None:
    """How long `amount` pays for at `cost_per_hour`, in whole seconds (rounded down: a budget
    is never overrun); None when the plan costs nothing (the budget never runs out)."""
    if cost_per_hour <= 0:
        return None
    return int(math.floor(amount / cost_per_hour * 3600))


def choose_lifetime(ttl_s: int | None, budget: float | None, cost_per_hour: float,
                    blueprint: Lifetime | None) -> LifetimeChoice | None:
    """`--ttl` replaces the blueprint's ttl; a budget caps whichever applies."""
    action = blueprint.action if blueprint else "destroy"
    choice = None
    if ttl_s is not None:
        choice = LifetimeChoice(ttl_s, action, "--ttl")
    elif blueprint is not None:
        choice = LifetimeChoice(blueprint.ttl_s, action, "lifetime.ttl")
    if budget is not None:
        paid = budget_seconds(budget, cost_per_hour)
        if paid is not None and (choice is None or paid < choice.ttl_s):
            choice = LifetimeChoice(max(paid, 1), action, "--budget")
    return choice
