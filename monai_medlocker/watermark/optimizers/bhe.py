"""``bhe``: Basin Hopping Evolution, the Adv-watermark baseline.

Re-implementation of the optimizer of Jia et al., "Adv-watermark: A Novel Watermark Perturbation
for Adversarial Examples", ACM Multimedia 2020, following ``reference/adv-watermark-bhe.md``.
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import basinhopping

from monai_medlocker.watermark.blend import Placement
from monai_medlocker.watermark.feasibility import NoFeasiblePlacementError
from monai_medlocker.watermark.optimizers.base import WatermarkOptimizer
from monai_medlocker.watermark.problem import AttackProblem, MarkConfig, QueryBudgetExceeded

__all__ = ["BasinHoppingEvolution", "WatermarkStep"]

# Objective value of an out-of-bounds or infeasible vector: far above any logit, so the local
# minimiser moves away from it and the basin-hopping accept test never keeps it.
_PENALTY = 1e6
# Rejection-sampling tries per initial individual before drawing from the feasible grid.
_INIT_TRIES = 1000


class WatermarkStep:
    """Adv-watermark's basin-hopping displacement: ``a_max += U(-2s, 2s)``, ``x, y += U(-5s, 5s)``.

    With the default ``stepsize`` 10 this moves the opacity cap by up to 20 (0-255 scale) and the
    position by up to 50 px of the model input. The ``stepsize`` attribute follows scipy's documented
    custom-step pattern, so scipy wraps the step in its adaptive step size; with ``niter = 3`` (below
    scipy's adaptation interval of 50) the step size never actually changes.

    Args:
        stepsize: the step scale ``s``.
        rng: the random generator of the displacements.
    """

    def __init__(self, stepsize: float, rng: np.random.Generator) -> None:
        self.stepsize = float(stepsize)
        self.rng = rng

    def __call__(self, x: np.ndarray) -> np.ndarray:
        s = self.stepsize
        x = np.array(x, dtype=float)
        x[0] += self.rng.uniform(-2.0 * s, 2.0 * s)
        x[1:] += self.rng.uniform(-5.0 * s, 5.0 * s, size=x[1:].shape)
        return x


class _Found(Exception):
    """Unwinds scipy's basin hopping at the first success (``check_success_in_mutation`` only)."""

    def __init__(self, xs: np.ndarray) -> None:
        super().__init__("successful candidate found")
        self.xs = np.array(xs, dtype=float)


class _PaperSpace:
    """BHE's search vector ``[a_max, x, y]`` for one mark configuration, and its map to placements."""

    def __init__(self, problem: AttackProblem, cfg: MarkConfig) -> None:
        self.problem = problem
        self.cfg = cfg
        a_lo, a_hi = problem.space.alpha_range
        size = problem.screen_size
        self.lower = np.array([a_lo * 255.0, 0.0, 0.0])
        self.upper = np.array([a_hi * 255.0, size - cfg.screen_width, size - cfg.screen_height], dtype=float)

    def placement(self, xs: np.ndarray) -> Placement:
        # The original pastes the logo at integer pixel positions of the model input.
        u, v = int(np.rint(xs[1])), int(np.rint(xs[2]))
        x0, y0 = self.problem.screen_to_native(self.cfg, u, v)
        return self.problem.placement(self.cfg, int(x0), int(y0), float(xs[0]) / 255.0)

    def admissible(self, xs: np.ndarray) -> bool:
        """Inside the bounds and lesion-free (the WSM constraint is handled like the bounds)."""
        xs = np.asarray(xs, dtype=float)
        if not np.all(np.isfinite(xs)) or np.any(xs < self.lower) or np.any(xs > self.upper):
            return False
        return bool(self.problem.is_feasible(self.placement(xs)))

    def sample(self, rng: np.random.Generator) -> np.ndarray:
        """Uniform over the feasible part of the box (rejection sampling), grid fallback."""
        for _ in range(_INIT_TRIES):
            xs = rng.uniform(self.lower, self.upper)
            if self.admissible(xs):
                return xs
        # A tiny feasible region: draw a feasible integer corner of the model input instead.
        vs, us = np.nonzero(self.problem.screen_feasible(self.cfg))
        if len(vs) == 0:
            raise NoFeasiblePlacementError(
                f"bhe: no lesion-free position of the {self.cfg.width}x{self.cfg.height} px logo box on the "
                f"{self.problem.screen_size}-px model-input grid"
            )
        i = rng.integers(len(vs))
        return np.array([rng.uniform(self.lower[0], self.upper[0]), us[i], vs[i]], dtype=float)


class BasinHoppingEvolution(WatermarkOptimizer):
    """Basin Hopping Evolution (BHE) from Adv-watermark (Jia et al., ACM Multimedia 2020).

    Faithful to the reference algorithm:

    - Search vector ``[a_max, x, y]``: ``a_max`` on a 0-255 scale in ``[100, 255]`` (taken from
      ``space.alpha_range`` times 255), ``x, y`` the logo's top-left corner in the ``S x S`` model
      input, in ``[0, S - w]`` and ``[0, S - h]``, rounded to integers when pasting.
    - Objective: the raw logit of the true class, minimised. Success: argmax != label.
    - NP individuals drawn uniformly in the bounds and evaluated; then per generation, for each
      individual, ``scipy.optimize.basinhopping`` (``niter`` hops, the :class:`WatermarkStep`
      displacement, an accept test rejecting out-of-bounds points, scipy's default local minimiser
      (BFGS with finite differences, as no bounds are passed) and its default Metropolis test at
      ``T = 1``) gives the mutant; binomial crossover with rate CR and one forced coordinate; greedy
      selection (the trial replaces its parent if its objective is <= the parent's).
    - The search stops at the first success, checked after the initial population's evaluation and
      after each generation's population evaluation; there is no query cap by default, and every
      model evaluation, inside basin hopping and its local minimiser included, is counted.

    Adapted for this project:

    - Lesion constraint: a vector whose logo box touches the WSM is treated exactly like an
      out-of-bounds one: the accept test rejects it, the initial population is re-sampled until
      feasible, and an infeasible crossover trial loses the selection. Out-of-bounds or infeasible
      points probed by the local minimiser get a ``1e6`` penalty without a model query (they would
      be rejected anyway), so only real model evaluations are counted; the original would have
      queried the model there, so this can only lower BHE's query count.
    - Shared frame: ``S`` is the first surrogate's input size; positions map to native pixels with
      ``problem.screen_to_native`` and the composite is the project's (native resolution, opacity
      ``min(logo alpha coverage, a_max / 255)`` where the original uses the logo's gray level, the
      surrogate's own preprocessing), so all optimizers are judged on the same images, logo and
      success test. BHE searches at one fixed logo size:
      the largest-scale rotation-0 configuration of ``problem.configs`` (``SearchSpace.paper()``
      has exactly one, a box of 1/4 of the image side, Adv-watermark's ``sl = 4``).
    - Several surrogates: the objective is the mean true-class logit and success means every
      surrogate mispredicts (``problem``'s combined margin below ``-confidence``; ``confidence = 0``
      is the original test). Queries are one per image per surrogate, counted by the problem.
    - The initial population and each generation's trials are evaluated in one batched call (the
      same number of queries: one per image); the trials' evaluation is the generation's
      population evaluation, since the selected population's objectives are then all known.
    - ``max_queries`` (here or on the problem) caps the search; when it is reached the best
      individual so far (by objective) is returned.
    - ``check_success_in_mutation`` (off by default, not in the original) also stops at the first
      successful evaluation inside basin hopping: a speed-up, not the faithful baseline.

    Args:
        population: population size NP.
        crossover: crossover rate CR.
        generations: number of generations.
        niter: basin-hopping iterations per mutation.
        stepsize: the step scale ``s`` of :class:`WatermarkStep`.
        max_queries: query budget for one search; ``None`` = no cap (the original).
        confidence: success requires a combined margin below ``-confidence``.
        check_success_in_mutation: also stop at a success found inside basin hopping.

    Attributes:
        last_run: the last search's record: ``generations`` completed, ``success``, ``stopped``
            (``"success"``, ``"completed"`` or ``"budget"``), ``queries`` used and the final
            population's objective values (``fitness``).
    """

    name = "bhe"

    def __init__(
        self,
        population: int = 50,
        crossover: float = 0.9,
        generations: int = 3,
        niter: int = 3,
        stepsize: float = 10,
        max_queries: int | None = None,
        confidence: float = 0.0,
        check_success_in_mutation: bool = False,
    ) -> None:
        super().__init__(max_queries=max_queries, confidence=confidence)
        if not isinstance(population, int) or population < 1:
            raise ValueError(f"population must be an integer >= 1, got {population!r}.")
        if not 0.0 <= crossover <= 1.0:
            raise ValueError(f"crossover must be in [0, 1], got {crossover}.")
        if not isinstance(generations, int) or generations < 0:
            raise ValueError(f"generations must be an integer >= 0, got {generations!r}.")
        if not isinstance(niter, int) or niter < 0:
            raise ValueError(f"niter must be an integer >= 0, got {niter!r}.")
        if stepsize <= 0:
            raise ValueError(f"stepsize must be > 0, got {stepsize}.")
        self.population = population
        self.crossover = float(crossover)
        self.generations = generations
        self.niter = niter
        self.stepsize = float(stepsize)
        self.check_success_in_mutation = bool(check_success_in_mutation)
        self.last_run: dict = {}

    def settings(self) -> dict:
        return {
            **super().settings(),
            "population": self.population,
            "crossover": self.crossover,
            "generations": self.generations,
            "niter": self.niter,
            "stepsize": self.stepsize,
            "check_success_in_mutation": self.check_success_in_mutation,
        }

    @staticmethod
    def paper_config(problem: AttackProblem) -> MarkConfig:
        """The one logo size BHE searches at: the largest scale among the rotation-0 configs."""
        upright = [c for c in problem.configs if c.rotation == 0]
        return max(upright or problem.configs, key=lambda c: c.scale)

    def search(self, problem: AttackProblem) -> Placement:
        """Run BHE on one image.

        Returns:
            The first successful individual found (at the checks described above), otherwise the
            final population's best individual by objective. ``problem.best`` separately keeps the
            lowest-margin placement of every evaluation, those inside basin hopping included.

        Raises:
            NoFeasiblePlacementError: no lesion-free position exists on the model-input grid.
        """
        space = _PaperSpace(problem, self.paper_config(problem))
        # Independent streams for the steps, the Metropolis tests and the crossover, all derived
        # from the problem's generator so that a seed fixes the whole search.
        seeds = np.random.SeedSequence(int(problem.rng.integers(2**63))).spawn(3)
        step_rng, metropolis_rng, crossover_rng = (np.random.default_rng(s) for s in seeds)
        step = WatermarkStep(self.stepsize, step_rng)
        start = problem.queries
        n_models = len(problem.surrogates)

        def evaluate(vectors: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
            cost = len(vectors) * n_models
            if self.max_queries is not None and problem.queries - start + cost > self.max_queries:
                raise QueryBudgetExceeded(f"bhe: query budget of {self.max_queries} exceeded")
            ev = problem.evaluate([space.placement(v) for v in vectors])
            return ev.true_logits.mean(axis=1), ev.margins < -self.confidence

        def objective(xs: np.ndarray) -> float:
            if not space.admissible(xs):
                return _PENALTY
            value, success = evaluate([xs])
            if self.check_success_in_mutation and success[0]:
                raise _Found(xs)
            return float(value[0])

        # scipy calls accept tests with these four keywords; only the new point matters here.
        def accept_test(f_new, x_new, f_old, x_old) -> bool:
            return space.admissible(x_new)

        pop = np.stack([space.sample(problem.rng) for _ in range(self.population)])
        fitness = np.full(self.population, np.inf)  # each individual's objective, once evaluated
        self.last_run = run = {"generations": 0, "success": False, "stopped": "completed"}
        winner = None
        try:
            values, success = evaluate(list(pop))
            fitness[:] = values
            if success.any():
                winner = pop[int(np.argmax(success))]
            while winner is None and run["generations"] < self.generations:
                trials = []
                for i in range(self.population):
                    mutant = basinhopping(
                        objective, pop[i], niter=self.niter, take_step=step, accept_test=accept_test,
                        minimizer_kwargs={}, rng=metropolis_rng,
                    ).x
                    trials.append(self._crossover(pop[i], mutant, crossover_rng))
                # An infeasible trial is rejected like an out-of-bounds step: the parent stays.
                idx = [i for i, t in enumerate(trials) if space.admissible(t)]
                success = np.zeros(0, dtype=bool)
                if idx:
                    values, success = evaluate([trials[i] for i in idx])
                    for j, i in enumerate(idx):
                        if values[j] <= fitness[i]:
                            pop[i], fitness[i] = trials[i], values[j]
                run["generations"] += 1
                if success.any():
                    winner = trials[idx[int(np.argmax(success))]]
        except _Found as found:
            winner = found.xs
        except QueryBudgetExceeded:
            run["stopped"] = "budget"
        if winner is not None:
            run["stopped"] = "success"
            result = space.placement(winner)
        elif np.isfinite(fitness).any():
            result = space.placement(pop[int(np.argmin(fitness))])
        else:
            # The budget ran out before the initial population could be evaluated.
            result = problem.best[1] or space.placement(pop[0])
        run.update(success=winner is not None, queries=problem.queries - start, fitness=fitness.tolist())
        return result

    def _crossover(self, parent: np.ndarray, mutant: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Binomial crossover: each coordinate from the mutant with probability CR, one always."""
        take = rng.random(parent.shape[0]) < self.crossover
        take[rng.integers(parent.shape[0])] = True
        return np.where(take, mutant, parent)
