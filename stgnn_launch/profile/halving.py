"""Successive halving (profile.method=halving): the rung schedule, who survives a rung, and the ranking.

Every trainable candidate trains `epochs[0]` profiling epochs (rung 0); the best ceil(n / eta) by validation
MAE continue, resumed from their last checkpoint (not restarted), to `epochs[1]`; and so on while at least two
candidates remain to compare. Profiling epochs see profile.train_fraction of the training windows, as the
curve method's do.

Equal budgets. The curve method trains each of its n candidates E profiling epochs: n x E profiling epochs
in all. The schedule spends the same: rung k ends at r x eta^k epochs for the largest integer r that fits,
and the last rung's survivors share whatever the earlier rungs left, so the total is n x E up to rounding
(n=4, E=4, eta=2: four candidates 2 epochs, two of them on to 6: 4 x 2 + 2 x 4 = 16 = 4 x 4).

Ranking: the candidates that reached the last rung by their validation MAE there, then those eliminated at
each earlier rung, latest rung first, each group by its MAE at the rung that eliminated it. A baseline (exact
MAE, not trained) goes just before the first trained candidate in that order whose MAE is above its own.
"""

from __future__ import annotations

import math


def rung_sizes(n: int, eta: int) -> list[int]:
    """Candidates per rung: n, ceil(n/eta), ... while at least 2 remain (one candidate is not a ranking)."""
    sizes = [n]
    while sizes[-1] > 2 and math.ceil(sizes[-1] / eta) >= 2:
        sizes.append(math.ceil(sizes[-1] / eta))
    return sizes


def spent(sizes: list[int], epochs: list[int]) -> int:
    """Profiling epochs trained in all (a survivor resumes: a rung costs only its epochs past the last one)."""
    return sum(n * (e - (epochs[k - 1] if k else 0)) for k, (n, e) in enumerate(zip(sizes, epochs)))


def schedule(n: int, budget_epochs: int, eta: int = 2) -> list[tuple[int, int]]:
    """[(candidates, cumulative profiling epochs)] per rung, spending `budget_epochs` (n x E for the curve
    method's E) as fully as whole epochs allow; at least one epoch a rung."""
    if n < 1:
        return []
    sizes = rung_sizes(n, eta)
    best = 1
    for r in range(1, budget_epochs + 1):
        if spent(sizes, [r * eta ** k for k in range(len(sizes))]) <= budget_epochs:
            best = r
    epochs = [best * eta ** k for k in range(len(sizes))]
    before = spent(sizes[:-1], epochs[:-1])
    last_start = epochs[-2] if len(sizes) > 1 else 0
    epochs[-1] = max(epochs[-1], last_start + (budget_epochs - before) // sizes[-1])
    return list(zip(sizes, epochs))


def survivors(mae: dict[str, float], keep: int) -> list[str]:
    """The `keep` best by MAE (ties: the given order)."""
    return sorted(mae, key=lambda label: mae[label])[:keep]


def ranking(rungs: list[dict[str, float]], baselines: dict[str, float]) -> list[str]:
    """rungs[k]: {label: validation MAE at rung k} of the candidates that trained rung k."""
    trained: list[tuple[str, float]] = []
    placed: set[str] = set()
    for rung in reversed(rungs):
        for label in sorted((l for l in rung if l not in placed), key=lambda l: rung[l]):
            trained.append((label, rung[label]))
            placed.add(label)
    out: list[str] = []
    waiting = sorted(baselines, key=lambda label: baselines[label])
    for label, mae in trained:
        while waiting and baselines[waiting[0]] < mae:
            out.append(waiting.pop(0))
        out.append(label)
    return out + waiting


def replay(curves: dict[str, list[float]], plan: list[tuple[int, int]], baselines: dict[str, float]) -> dict:
    """Successive halving simulated on recorded per-epoch validation-MAE curves (each at least as long as
    the plan's last rung): rung MAE = the best epoch so far, as a run's validation MAE after its best
    checkpoint. Returns the rungs, the ranking and the epochs each candidate trained."""
    alive = list(curves)
    rungs, trained = [], {}
    for k, (_, epochs) in enumerate(plan):
        rung = {label: min(curves[label][:epochs]) for label in alive}
        rungs.append(rung)
        for label in alive:
            trained[label] = epochs
        if k + 1 < len(plan):
            alive = survivors(rung, plan[k + 1][0])
    return {"rungs": rungs, "ranking": ranking(rungs, baselines), "epochs": trained}
