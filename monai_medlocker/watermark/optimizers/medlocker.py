"""``medlocker``: our optimizer. First-order screening of every feasible placement, batched checks.

The blend is linear in the logo's opacity, so to first order the change of a pairwise margin
``m_k = z_label - z_k`` when the logo lands at top-left (u, v) is a pair of 2-D correlations of
the input gradient g_k with the logo (in the model's input frame, opacity o, logo colours L)::

    dm_k(u, v) ~= sum_c corr(g_k,c, o * L_c)(u, v) - corr(sum_c g_k,c * x_c, o)(u, v)

One forward pass and one backward pass per other class (one query per surrogate) therefore
predict the margin ``min_k (m_k + dm_k)`` of every position of every scale and rotation at once.
The best-ranked, mutually distant feasible placements are then checked for real in one batched
forward pass; the model is re-linearised at the best composite (which already carries the logo)
and the screen repeats until the margin target is met or the budget is spent.

Without gradients (``gradient=False``), the same loop runs on batched random feasible
placements refined around the best ones (a simple evolution strategy).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Sequence

import numpy as np
import torch

from monai_medlocker.watermark.blend import Placement
from monai_medlocker.watermark.logo import render_logo
from monai_medlocker.watermark.optimizers.base import WatermarkOptimizer
from monai_medlocker.watermark.problem import AttackProblem, Linearization, MarkConfig, QueryBudgetExceeded

__all__ = ["MedLockerOptimizer"]


def _correlate(maps: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """Valid 2-D cross-correlation summed over channels, by FFT: (K, C, H, W) x (C, h, w) -> (K, H-h+1, W-w+1).

    A direct conv2d with a logo-sized kernel costs O(H W h w) and dominated the search time.
    """
    height, width = maps.shape[-2:]
    h, w = kernel.shape[-2:]
    spectrum = torch.fft.rfft2(maps, s=(height, width)) * torch.fft.rfft2(kernel.flip(-2, -1), s=(height, width))
    full = torch.fft.irfft2(spectrum.sum(dim=1), s=(height, width))
    return full[:, h - 1 :, w - 1 :]


class MedLockerOptimizer(WatermarkOptimizer):
    """Gradient-screened, batch-verified placement search.

    Args:
        max_queries: query budget per mark (one image through one model = one query).
        confidence: stop once the combined margin is below ``-confidence``.
        candidates_per_round: candidates checked per batched forward pass.
        gradient: use the first-order screen; ``False`` for models without gradients.
        minimize_alpha: after success, lower the opacity as far as the margin target allows
            (one more batch of checks; better fidelity, a few more queries).
        spread: minimum distance between candidates of one round, as a fraction of the logo box.
        alpha_levels: opacities checked per screened position, evenly spaced over the alpha range.
            The screen ranks positions (its ranking does not depend on opacity), but the network is
            not linear: a half-transparent logo tints the retina and often misleads it more.
        verify_chunk: candidates per checking pass, best-ranked first; the round stops at the first pass
            that fools every surrogate with the ``confidence`` margin (``None``: the whole round in one pass).
        reuse_linearization: a later mark reuses the first mark's gradients, re-anchored at the image that
            carries the earlier marks (exact margins from its clean check), instead of a new linearisation.
        give_up: stop a mark's search once, at the rate the margin has fallen so far, reaching the target
            would take more than ``give_up`` times the queries left (checked after each checking pass, once
            half a round of candidates has been checked; the mark keeps its best placement and the next mark
            starts from it). ``None``: spend the whole budget.
            A hopeless image (a clean margin of 12 that falls by 0.02 per query) then costs tens of queries
            per mark instead of ``max_queries``.
        eot_views, eot_fraction, eot_seed: expectation over the thief's preprocessing (see
            :class:`WatermarkOptimizer`): the screen is linearised through the views and a candidate
            succeeds only when it also fools ``eot_fraction`` of them.
        keyed_sites: the keyed layout (see :class:`WatermarkOptimizer`): the screen ranks only the keyed sites.
        input_diversity, grad_sigma: the screen's gradients are averaged over that many input-diversity views
            and smoothed (see :class:`WatermarkOptimizer`), for transfer to models the search never queries.
    """

    name = "medlocker"

    def __init__(
        self,
        max_queries: int | None = 50,
        confidence: float = 0.0,
        candidates_per_round: int = 16,
        gradient: bool = True,
        minimize_alpha: bool = False,
        spread: float = 0.25,
        alpha_levels: int = 3,
        eot_views: Sequence[str] | None = None,
        eot_fraction: float = 1.0,
        eot_seed: int = 0,
        verify_chunk: int | None = None,
        reuse_linearization: bool = False,
        keyed_sites: int | None = None,
        input_diversity: int = 0,
        grad_sigma: float = 0.0,
        give_up: float | None = None,
    ) -> None:
        super().__init__(max_queries=max_queries, confidence=confidence, eot_views=eot_views,
                         eot_fraction=eot_fraction, eot_seed=eot_seed, keyed_sites=keyed_sites,
                         input_diversity=input_diversity, grad_sigma=grad_sigma)
        if candidates_per_round < 1:
            raise ValueError(f"candidates_per_round must be >= 1, got {candidates_per_round}.")
        self.candidates_per_round = int(candidates_per_round)
        self.gradient = bool(gradient)
        self.minimize_alpha = bool(minimize_alpha)
        self.spread = float(spread)
        if alpha_levels < 1:
            raise ValueError(f"alpha_levels must be >= 1, got {alpha_levels}.")
        self.alpha_levels = int(alpha_levels)
        if verify_chunk is not None and verify_chunk < 1:
            raise ValueError(f"verify_chunk must be >= 1 or None, got {verify_chunk}.")
        self.verify_chunk = None if verify_chunk is None else int(verify_chunk)
        self.reuse_linearization = bool(reuse_linearization)
        if give_up is not None and not give_up > 0:
            raise ValueError(f"give_up must be > 0 or None, got {give_up}.")
        self.give_up = None if give_up is None else float(give_up)

    def settings(self) -> dict:
        out = {
            **super().settings(),
            "candidates_per_round": self.candidates_per_round,
            "gradient": self.gradient,
            "minimize_alpha": self.minimize_alpha,
            "spread": self.spread,
            "alpha_levels": self.alpha_levels,
        }
        # Absent at their defaults, so the records (and resume checks) of earlier runs are unchanged.
        if self.verify_chunk is not None:
            out["verify_chunk"] = self.verify_chunk
        if self.reuse_linearization:
            out["reuse_linearization"] = True
        if self.give_up is not None:
            out["give_up"] = self.give_up
        return out

    # ------------------------------------------------------------------------------------------
    def search(self, problem: AttackProblem) -> Placement:
        tried: set[tuple] = set()
        try:
            if self.gradient:
                self._gradient_search(problem, tried)
            else:
                self._free_search(problem, tried)
            if self.minimize_alpha and problem.best[1] is not None and problem.best[0] < -self.confidence:
                self._lower_alpha(problem)
        except QueryBudgetExceeded:
            pass
        if problem.best[1] is None:
            # Budget too small to check anything: fall back to a feasible placement.
            return problem.random_placement(alpha=problem.space.alpha_range[1])
        return problem.best[1]

    def _batch(self, problem: AttackProblem) -> int:
        left = problem.budget_left()
        per_image = len(problem.surrogates)
        return self.candidates_per_round if left is None else min(self.candidates_per_round, left // per_image)

    def _gradient_search(self, problem: AttackProblem, tried: set) -> None:
        per_image = len(problem.surrogates)
        lin = None
        if self.reuse_linearization and problem.inherited is not None:
            lin = problem.reanchor(problem.inherited)  # no query: the clean check gave its margins
        if lin is None:
            lin = problem.linearize(None)
        anchor: Placement | None = None
        start = (float(problem.clean_eval.margins[0]), problem.queries)
        while not self.done(problem):
            k = self._batch(problem)
            if k < 1:
                return
            candidates = self._screen(problem, lin, k, tried)
            if not candidates:
                return
            step = self.verify_chunk or len(candidates)
            for first in range(0, len(candidates), step):
                problem.evaluate(candidates[first : first + step])
                if self.done(problem) or self._hopeless(problem, *start):
                    return
            left = problem.budget_left()
            if problem.best[1] is not anchor and (left is None or left >= 2 * per_image):
                # A better composite: re-linearise there (it already carries the logo). Otherwise the
                # same screen is reused and yields its next-best untried placements.
                anchor = problem.best[1]
                lin = problem.linearize(anchor)

    def _hopeless(self, problem: AttackProblem, start_margin: float, start_queries: int) -> bool:
        """``give_up``: at the rate the best margin has fallen since ``start_margin`` (over the queries spent since
        ``start_queries``), the target ``-confidence`` lies beyond ``give_up`` times the budget left."""
        left = problem.budget_left()
        if self.give_up is None or left is None:
            return False
        spent = problem.queries - start_queries
        gain = start_margin - problem.best[0]
        to_go = problem.best[0] + self.confidence
        if spent < len(problem.surrogates) * self.candidates_per_round / 2 or to_go <= 0:
            return False
        return gain <= 0 or to_go * spent / gain > self.give_up * left

    def _screen(self, problem: AttackProblem, lin: Linearization, k: int, tried: set) -> list[Placement]:
        """Rank all feasible placements by their predicted margin; return the best k, spread apart.

        The predicted margin is the smallest over the other classes of the linearised pairwise
        margin, so a placement may win by pushing the prediction to any wrong grade.
        """
        alpha = problem.space.alpha_range[1]
        grads = lin.grads  # K x 3 x S x S
        gx = (grads * problem.clean_screen).sum(1, keepdim=True)  # K x 1 x S x S
        maps = []
        for cfg in problem.configs:
            rgb, cov = render_logo(problem.logo, cfg.screen_width, cfg.screen_height, cfg.rotation)
            opacity = torch.from_numpy(np.minimum(cov, np.float32(alpha)))
            colour = torch.from_numpy(rgb / np.float32(255.0)).permute(2, 0, 1) * opacity
            delta = _correlate(grads, colour) - _correlate(gx, opacity[None])
            pred = (lin.offsets[:, None, None] + delta).min(dim=0).values.numpy().astype(np.float64)
            pred[~problem.screen_feasible(cfg)] = np.inf
            maps.append(pred)
        lo, hi = problem.space.alpha_range
        alphas = np.linspace(hi, lo, self.alpha_levels) if hi > lo else np.array([hi])
        n_positions = max(1, -(-k // len(alphas)))
        positions: list[Placement] = []
        spread = self.spread
        while len(positions) < n_positions:
            # Spread candidates apart; when the maps run dry, allow closer neighbours.
            positions += self._pick(problem, [m.copy() for m in maps], n_positions - len(positions), tried, alpha, spread)
            if spread == 0:
                break
            spread = spread / 2 if spread > 0.03 else 0.0
        return [replace(p, alpha=float(a)) for p in positions for a in alphas][:k]

    def _pick(self, problem, maps, k, tried, alpha, spread) -> list[Placement]:
        picked: list[Placement] = []
        while len(picked) < k:
            best_i, best_v, best_pos = -1, np.inf, None
            for i, m in enumerate(maps):
                j = int(np.argmin(m))
                if m.flat[j] < best_v:
                    best_i, best_v, best_pos = i, m.flat[j], np.unravel_index(j, m.shape)
            if best_i < 0:
                break
            cfg = problem.configs[best_i]
            v, u = best_pos
            self._suppress(problem, maps, cfg, u, v, spread)
            maps[best_i][v, u] = np.inf
            x0, y0 = problem.screen_to_native(cfg, u, v)
            p = problem.placement(cfg, int(x0), int(y0), alpha)
            key = (p.x0, p.y0, p.width, p.height, p.rotation, round(p.alpha, 4))
            if key in tried or not problem.is_feasible(p):
                continue
            tried.add(key)
            picked.append(p)
        return picked

    def _suppress(self, problem: AttackProblem, maps: list[np.ndarray], cfg: MarkConfig, u: int, v: int,
                  spread: float) -> None:
        if spread <= 0:
            return
        cx, cy = u + cfg.screen_width / 2, v + cfg.screen_height / 2
        radius = spread * max(cfg.screen_width, cfg.screen_height)
        for other, m in zip(problem.configs, maps):
            u0 = int(np.floor(cx - other.screen_width / 2 - radius))
            v0 = int(np.floor(cy - other.screen_height / 2 - radius))
            u1 = int(np.ceil(cx - other.screen_width / 2 + radius)) + 1
            v1 = int(np.ceil(cy - other.screen_height / 2 + radius)) + 1
            m[max(v0, 0) : max(v1, 0), max(u0, 0) : max(u1, 0)] = np.inf

    def _free_search(self, problem: AttackProblem, tried: set) -> None:
        """Gradient-free: random feasible marks, then Gaussian moves around the best ones."""
        alpha = problem.space.alpha_range[1]
        k = self._batch(problem)
        if k < 1:
            return
        population = [problem.random_placement(cfg=problem.configs[i % len(problem.configs)], alpha=alpha) for i in range(k)]
        margins = problem.evaluate(population).margins
        step = 0.5
        while not self.done(problem):
            k = self._batch(problem)
            if k < 1:
                return
            order = np.argsort(margins)[:3]
            parents = [population[i] for i in order]
            children = []
            for i in range(k):
                if i % 4 == 3:
                    children.append(problem.random_placement(alpha=alpha))
                    continue
                parent = parents[i % len(parents)]
                cfg = next(c for c in problem.configs if (c.width, c.height, c.rotation) == (parent.width, parent.height, parent.rotation))
                if problem.rng.random() < 0.25:
                    cfg = problem.configs[problem.rng.integers(len(problem.configs))]
                dx, dy = problem.rng.normal(0, step, 2) * (cfg.width, cfg.height)
                child = problem.placement(cfg, int(np.clip(parent.x0 + dx, 0, problem.width - cfg.width)),
                                          int(np.clip(parent.y0 + dy, 0, problem.height - cfg.height)), alpha)
                children.append(child if problem.is_feasible(child) else problem.random_placement(cfg=cfg, alpha=alpha))
            pool = parents + children
            pool_margins = np.concatenate([margins[order], problem.evaluate(children).margins])
            keep = np.argsort(pool_margins)[: max(k, 3)]
            population = [pool[i] for i in keep]
            margins = pool_margins[keep]
            step = max(0.05, step * 0.7)

    def _lower_alpha(self, problem: AttackProblem) -> None:
        """Check the winning placement at lower opacities in one batch; keep the faintest that still works."""
        best = problem.best[1]
        lo = problem.space.alpha_range[0]
        alphas = [a for a in np.linspace(lo, best.alpha, 5)[:-1] if a < best.alpha]
        k = self._batch(problem)
        if not alphas or k < 1:
            return
        candidates = [replace(best, alpha=float(a)) for a in alphas[-k:]]
        ev = problem.evaluate(candidates)
        ok = [c for c, m in zip(candidates, ev.margins) if m < -self.confidence]
        if ok:
            winner = min(ok, key=lambda c: c.alpha)
            problem.best = (float(ev.margins[candidates.index(winner)]), winner)
