"""Tests of the ``bhe`` optimizer (Adv-watermark's Basin Hopping Evolution).

The surrogates are hand-made linear models: the "true" logit falls as the model input gets
brighter under a weight map, so the objective depends on where the (bright) logo lands and on
its opacity, and success can be made easy, reachable or impossible by the threshold.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from monai_medlocker.networks import Surrogate, model_spec
from monai_medlocker.networks.factory import IMAGENET_MEAN, IMAGENET_STD
from monai_medlocker.watermark.logo import load_logo
from monai_medlocker.watermark.optimizers import bhe
from monai_medlocker.watermark.optimizers.bhe import BasinHoppingEvolution, WatermarkStep
from monai_medlocker.watermark.problem import AttackProblem, SearchSpace

SIZE = 128  # native image side
SCREEN = 96  # model input side
LESION = (slice(40, 80), slice(50, 90))  # the WSM's forbidden block (native rows, columns)
LESION_CENTRE = (45.0, 52.0)  # its centre in the model input (rows, columns)
NEVER = 10.0  # a threshold no logo reaches: the model can never be fooled


class SpotNet(torch.nn.Module):
    """Two classes: logit 0 = gain * (threshold - weighted mean brightness), logit 1 = 0.

    Args:
        centre: centre (row, column) of a Gaussian weight map in the model input; ``None`` weighs
            every pixel equally.
        sigma: the Gaussian's width in pixels.
        threshold: class 1 wins once the weighted brightness (0-1) exceeds it.
    """

    def __init__(self, threshold: float, centre: tuple[float, float] | None = None, sigma: float = 4.0) -> None:
        super().__init__()
        grid = torch.arange(SCREEN, dtype=torch.float32)
        yy, xx = torch.meshgrid(grid, grid, indexing="ij")
        if centre is None:
            w = torch.ones(SCREEN, SCREEN)
        else:
            w = torch.exp(-((yy - centre[0]) ** 2 + (xx - centre[1]) ** 2) / (2 * sigma**2))
        self.register_buffer("w", w / w.sum())
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1))
        self.threshold = threshold

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gray = (x * self.std + self.mean).mean(1)
        score = (gray * self.w).sum((1, 2))
        return torch.stack([20.0 * (self.threshold - score), torch.zeros_like(score)], 1)


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    # The tiny per-candidate einsums and forward passes run many times faster on one thread.
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def make_problem(*models: SpotNet, seed: int = 0, max_queries: int | None = None) -> AttackProblem:
    image = np.random.default_rng(123).integers(0, 60, size=(SIZE, SIZE, 3), dtype=np.uint8)  # dark, so the logo brightens
    wsm = np.zeros((SIZE, SIZE), dtype=bool)
    wsm[LESION] = True
    surrogates = [Surrogate(m, model_spec("resnet-tiny", SCREEN)) for m in models]
    problem = AttackProblem(
        image, wsm, surrogates, load_logo(), SearchSpace.paper(), label=0, seed=seed, max_queries=max_queries
    )
    assert problem.clean_preds == [0] * len(models), "the clean image must be classified correctly"
    return problem


class Recorder:
    """Wraps ``problem.evaluate``: records every call and checks each candidate's feasibility."""

    def __init__(self, problem: AttackProblem) -> None:
        self.problem = problem
        self.calls: list[tuple[list, object]] = []
        self.infeasible = []
        self._evaluate = problem.evaluate
        problem.evaluate = self

    def __call__(self, candidates):
        self.infeasible += [p for p in candidates if not self.problem.is_feasible(p)]
        ev = self._evaluate(candidates)
        self.calls.append((list(candidates), ev))
        return ev

    @property
    def images(self) -> int:
        return sum(len(c) for c, _ in self.calls)

    @property
    def batches(self) -> list[tuple[list, object]]:
        """Population evaluations (the initial population, then one per generation)."""
        return [(c, ev) for c, ev in self.calls if len(c) > 1]


def true_logit(problem: AttackProblem, placement) -> float:
    return float(problem.evaluate([placement]).true_logits.mean())


def test_never_evaluates_or_returns_infeasible_placements():
    # The weight map is centred on the lesion, so the objective pulls the logo onto it.
    problem = make_problem(SpotNet(NEVER, centre=LESION_CENTRE, sigma=6.0))
    cfg = BasinHoppingEvolution.paper_config(problem)
    assert not problem.screen_feasible(cfg).all(), "the WSM must forbid some positions for this test to bite"
    rec = Recorder(problem)
    result = BasinHoppingEvolution().search(problem)
    assert rec.images > 600
    assert rec.infeasible == [], f"{len(rec.infeasible)} infeasible candidates were evaluated"
    assert problem.is_feasible(result)
    assert not problem.wsm[result.y0 : result.y0 + result.height, result.x0 : result.x0 + result.width].any()


def test_query_count_equals_images_times_models():
    problem = make_problem(SpotNet(NEVER, centre=(20, 20)), SpotNet(NEVER, centre=(70, 70)))
    rec = Recorder(problem)
    start = problem.queries
    opt = BasinHoppingEvolution(population=10, generations=2)
    opt.search(problem)
    assert rec.images > 10
    assert problem.queries - start == 2 * rec.images
    assert opt.last_run["queries"] == problem.queries - start
    # Inside basin hopping every objective call is a single image; only the populations are batched.
    assert len(rec.batches) == 1 + 2 and len(rec.calls[0][0]) == 10


def test_stops_at_first_success_when_easy():
    # Any logo of high enough opacity anywhere brightens the image past the threshold.
    problem = make_problem(SpotNet(0.131))
    rec = Recorder(problem)
    start = problem.queries
    opt = BasinHoppingEvolution()
    result = opt.search(problem)
    used = problem.queries - start
    candidates, ev = rec.calls[0]
    assert ev.success.any() and not ev.success.all(), "the test needs some, not all, initial successes"
    assert used == len(candidates) == 50  # stopped right after the initial population
    run = opt.last_run
    assert (run["generations"], run["success"], run["stopped"], run["queries"]) == (0, True, "success", 50)
    assert result == candidates[int(np.argmax(ev.success))]  # the first successful individual
    assert problem.evaluate([result]).success[0]


def test_success_is_checked_after_each_generation_not_inside_basin_hopping():
    # Brightness at one spot away from the lesion: out of the initial population's reach for this
    # seed, reached in a later generation.
    problem = make_problem(SpotNet(0.48, centre=(20, 20)), seed=3)
    rec = Recorder(problem)
    opt = BasinHoppingEvolution()
    result = opt.search(problem)
    assert not rec.calls[0][1].success.any(), "the initial population must not succeed for this test"
    assert opt.last_run["success"] and opt.last_run["generations"] >= 1
    # The search ended on a population evaluation, with its first successful trial.
    candidates, ev = rec.calls[-1]
    assert len(candidates) > 1
    assert result == candidates[int(np.argmax(ev.success))]
    queries_flag_off = opt.last_run["queries"]
    # A success inside basin hopping, earlier, did not stop the faithful search...
    singles = [i for i, (c, ev) in enumerate(rec.calls) if len(c) == 1 and ev.success[0]]
    assert singles and singles[0] < len(rec.calls) - 1
    # ...but stops the search with the speed-up flag, at that first successful evaluation.
    problem = make_problem(SpotNet(0.48, centre=(20, 20)), seed=3)
    rec = Recorder(problem)
    fast = BasinHoppingEvolution(check_success_in_mutation=True)
    result = fast.search(problem)
    assert fast.last_run["success"] and fast.last_run["queries"] < queries_flag_off
    candidates, ev = rec.calls[-1]
    assert len(candidates) == 1 and ev.success[0] and result == candidates[0]


def test_unfoolable_model_runs_all_generations():
    problem = make_problem(SpotNet(NEVER, centre=(20, 20)), seed=3)
    rec = Recorder(problem)
    opt = BasinHoppingEvolution()
    result = opt.search(problem)
    run = opt.last_run
    assert run["generations"] == 3 and run["stopped"] == "completed" and not run["success"]
    assert len(rec.batches) == 1 + 3
    # Each basin hopping makes at least its first local minimisation (the point and 3 finite-difference
    # probes): >= 50 + 3 * 50 * 4 queries. At most: every hop admissible and each of the 4 local
    # minimisations stopping at the zero gradient of the integer-position objective, plus the trials.
    assert 650 <= run["queries"] <= 50 + 3 * (50 * 4 * (1 + 3) + 50), run["queries"]  # measured: ~1000
    assert problem.is_feasible(result)
    # Greedy selection: no individual ever gets worse, so the returned best of the final population
    # is the best of every population evaluation (initial individuals and trials).
    initial = rec.calls[0][1].true_logits[:, 0]
    assert (np.array(run["fitness"]) <= initial).all()
    best_seen = min(ev.true_logits.min() for _, ev in rec.batches)
    assert true_logit(problem, result) == pytest.approx(best_seen, abs=1e-5) == min(run["fitness"])
    assert best_seen < rec.calls[0][1].true_logits.min(), "the generations should improve on the initial best"


def test_same_seed_same_result():
    runs = []
    for seed in (7, 7, 8):
        problem = make_problem(SpotNet(NEVER, centre=(20, 20)), seed=seed)
        result = BasinHoppingEvolution(population=20, generations=2).search(problem)
        runs.append((result, problem.queries))
    assert runs[0] == runs[1]
    assert runs[0] != runs[2]


def test_step_ranges():
    rng = np.random.default_rng(0)
    step = WatermarkStep(10, rng)
    x = np.array([150.0, 60.0, 60.0])
    deltas = np.stack([step(x) - x for _ in range(4000)])
    assert np.array_equal(x, [150.0, 60.0, 60.0]), "the step must not modify its input"
    assert np.abs(deltas[:, 0]).max() <= 20 and np.abs(deltas[:, 1:]).max() <= 50
    # The whole documented range is used: a_max by +-20 (2s), x and y by +-50 (5s).
    assert np.abs(deltas[:, 0]).max() > 19.5 and (np.abs(deltas[:, 1:]).max(axis=0) > 49).all()
    assert np.std(deltas[:, 1] - deltas[:, 2]) > 1, "x and y must move independently"


def test_search_uses_the_documented_steps(monkeypatch):
    taken = []

    class RecordingStep(WatermarkStep):
        def __call__(self, x):
            new = super().__call__(x)
            taken.append(new - x)
            return new

    monkeypatch.setattr(bhe, "WatermarkStep", RecordingStep)
    problem = make_problem(SpotNet(NEVER, centre=(20, 20)))
    BasinHoppingEvolution(population=5, generations=1, stepsize=4).search(problem)
    taken = np.array(taken)
    assert len(taken) == 5 * 3  # niter = 3 hops per individual
    assert np.abs(taken[:, 0]).max() <= 8 and np.abs(taken[:, 1:]).max() <= 20


def test_basin_hopping_is_configured_as_in_the_original(monkeypatch):
    seen = []
    real = bhe.basinhopping

    def spy(func, x0, **kwargs):
        seen.append(kwargs)
        return real(func, x0, **kwargs)

    monkeypatch.setattr(bhe, "basinhopping", spy)
    problem = make_problem(SpotNet(NEVER, centre=(20, 20)))
    BasinHoppingEvolution(population=2, generations=1).search(problem)
    assert len(seen) == 2
    kwargs = seen[0]
    assert kwargs["niter"] == 3 and kwargs["minimizer_kwargs"] == {}  # scipy's default local minimiser
    assert isinstance(kwargs["take_step"], WatermarkStep) and kwargs["take_step"].stepsize == 10
    accept = kwargs["accept_test"]
    cfg = BasinHoppingEvolution.paper_config(problem)
    high = SCREEN - cfg.screen_width
    ok = dict(f_new=0.0, f_old=0.0, x_old=np.array([150.0, 5.0, 5.0]))
    assert accept(x_new=np.array([150.0, 5.0, 5.0]), **ok)
    assert accept(x_new=np.array([255.0, high, high]), **ok)
    for outside in ([99.0, 5, 5], [256.0, 5, 5], [150.0, -1, 5], [150.0, 5, high + 1], [150.0, np.nan, 5]):
        assert not accept(x_new=np.array(outside), **ok), outside
    assert not accept(x_new=np.array([150.0, LESION_CENTRE[1], LESION_CENTRE[0]]), **ok)  # on the lesion


def test_selection_is_greedy(monkeypatch):
    # Every trial is one fixed, middling, feasible vector.
    middling = np.array([180.0, 40.0, 0.0])
    monkeypatch.setattr(BasinHoppingEvolution, "_crossover", lambda self, parent, mutant, rng: middling.copy())
    problem = make_problem(SpotNet(NEVER, centre=(20, 20), sigma=20.0))
    rec = Recorder(problem)
    opt = BasinHoppingEvolution(population=10, generations=1)
    opt.search(problem)
    initial = rec.calls[0][1].true_logits[:, 0]
    (trials, ev) = rec.calls[-1]
    assert len(trials) == 10, "the trial must be feasible"
    f_trial = ev.true_logits[0, 0]
    assert (initial < f_trial).any() and (initial > f_trial).any(), "the test needs better and worse parents"
    np.testing.assert_allclose(opt.last_run["fitness"], np.minimum(initial, f_trial))


def test_crossover_takes_one_forced_coordinate():
    rng = np.random.default_rng(0)
    parent, mutant = np.zeros(3), np.ones(3)
    never = BasinHoppingEvolution(crossover=0.0)
    assert all(never._crossover(parent, mutant, rng).sum() == 1 for _ in range(50))
    always = BasinHoppingEvolution(crossover=1.0)
    assert all(np.array_equal(always._crossover(parent, mutant, rng), mutant) for _ in range(50))


def test_initial_population_falls_back_to_the_feasible_grid(monkeypatch):
    monkeypatch.setattr(bhe, "_INIT_TRIES", 0)  # as if rejection sampling never hit a feasible point
    problem = make_problem(SpotNet(NEVER, centre=LESION_CENTRE, sigma=6.0))
    rec = Recorder(problem)
    BasinHoppingEvolution(population=30, generations=0).search(problem)
    assert len(rec.calls) == 1 and len(rec.calls[0][0]) == 30
    assert rec.infeasible == []


@pytest.mark.parametrize("where", ["optimizer", "problem"])
def test_query_budget_returns_best_so_far(where):
    cap = 300
    problem = make_problem(SpotNet(NEVER, centre=(20, 20)), max_queries=cap + 1 if where == "problem" else None)
    start = problem.queries  # the clean prediction costs one query
    opt = BasinHoppingEvolution(max_queries=cap if where == "optimizer" else None)
    result = opt.search(problem)
    assert opt.last_run["stopped"] == "budget"
    assert problem.queries - start <= cap
    assert problem.is_feasible(result)


def test_settings_and_validation():
    opt = BasinHoppingEvolution()
    assert opt.name == "bhe"
    assert opt.settings() == {
        "max_queries": None, "confidence": 0.0, "population": 50, "crossover": 0.9, "generations": 3,
        "niter": 3, "stepsize": 10.0, "check_success_in_mutation": False,
    }
    for bad in ({"population": 0}, {"crossover": 1.5}, {"generations": -1}, {"niter": -1}, {"stepsize": 0}):
        with pytest.raises(ValueError):
            BasinHoppingEvolution(**bad)
