"""The attack problem that every optimizer solves: one image, its WSM, the surrogates, the logo.

Geometry lives in native pixels. The models see the image through ``preprocess_for_model``;
the optimizers search in the frame of the first surrogate's input (``S x S``, the "screen
frame"). Candidate composites are made at native resolution (uint8-rounded when the image is
uint8) and mapped to the screen frame with the exact separable resize operator, so a 2048 px
image costs about what a 512 px one does. The transform re-judges the chosen placement on the
full-size final artefact through ``preprocess_for_model`` (DESIGN invariant 2).
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass
from functools import cached_property, lru_cache

import numpy as np
import torch

from monai_medlocker.networks import Surrogate, preprocess_for_model
from monai_medlocker.watermark.blend import Placement, mark_opacity
from monai_medlocker.watermark.eot import InputDiversity, ThiefViews, _gaussian_blur
from monai_medlocker.watermark.feasibility import NoFeasiblePlacementError, feasible_top_left, summed_area_table
from monai_medlocker.watermark.keyed import check_render_key

__all__ = [
    "SearchSpace", "MarkConfig", "AttackProblem", "Evaluation", "Linearization", "QueryBudgetExceeded",
    "label_margins", "resize_matrix", "logo_box_size", "SITE_ROUNDS",
]

#: Keyed layout: at most this many rounds of ``sites`` keyed sites are opened, one after the other, until one
#: of them is lesion-free; past them the free feasible set is searched (an image that the keyed prior cannot fit).
SITE_ROUNDS = 16


@dataclass(frozen=True)
class SearchSpace:
    """What an optimizer may vary.

    Attributes:
        scale_range: the logo box's longest side as a fraction of the image's shorter side.
        alpha_range: opacity cap range, in (0, 1]; (100/255, 1) is Adv-watermark's [100, 255].
        rotations: allowed logo rotations in degrees.
        n_marks: number of logo marks per image (placed one after the other, never overlapping).
        max_area_fraction: upper bound on one box's area as a fraction of the image area.
        n_scales: how many scales the searches consider inside ``scale_range``.
        max_total_area_fraction: upper bound on the summed area of all marks of an image; ``None``
            for no bound beyond the per-box one. A later mark only gets the area the earlier ones left.
    """

    scale_range: tuple[float, float] = (0.2, 0.3)
    alpha_range: tuple[float, float] = (100 / 255, 1.0)
    rotations: tuple[float, ...] = (0.0,)
    n_marks: int = 1
    max_area_fraction: float = 0.10
    n_scales: int = 3
    max_total_area_fraction: float | None = None

    def __post_init__(self) -> None:
        lo, hi = self.scale_range
        if not 0 < lo <= hi <= 1:
            raise ValueError(f"scale_range must satisfy 0 < min <= max <= 1, got {self.scale_range}.")
        a_lo, a_hi = self.alpha_range
        if not 0 < a_lo <= a_hi <= 1:
            raise ValueError(f"alpha_range must satisfy 0 < min <= max <= 1, got {self.alpha_range}.")
        if not self.rotations:
            raise ValueError("rotations must list at least one angle, got an empty list.")
        if not isinstance(self.n_marks, int) or self.n_marks < 1:
            raise ValueError(f"n_marks must be an integer >= 1, got {self.n_marks!r}.")
        if not 0 < self.max_area_fraction <= 1:
            raise ValueError(f"max_area_fraction must be in (0, 1], got {self.max_area_fraction}.")
        if self.n_scales < 1:
            raise ValueError(f"n_scales must be >= 1, got {self.n_scales}.")
        if self.max_total_area_fraction is not None and not 0 < self.max_total_area_fraction <= 1:
            raise ValueError(f"max_total_area_fraction must be in (0, 1] or None, got {self.max_total_area_fraction}.")

    @classmethod
    def paper(cls, scale: float = 0.25) -> "SearchSpace":
        """The MedLocker/Adv-watermark space: position and transparency only, logo at 1/4 of the side."""
        return cls(scale_range=(scale, scale), alpha_range=(100 / 255, 1.0), rotations=(0.0,), n_marks=1, n_scales=1)

    @classmethod
    def from_config(cls, cfg: "SearchSpace | dict | str | None") -> "SearchSpace":
        """Build from a dict (bundle configs), ``"paper"``, ``"full"`` or ``None`` (the default space)."""
        if isinstance(cfg, SearchSpace):
            return cfg
        if cfg is None or cfg == "full":
            return cls()
        if cfg == "paper":
            return cls.paper()
        if isinstance(cfg, dict):
            cfg = dict(cfg)
            mode = cfg.pop("mode", None)
            if mode == "paper":
                return cls.paper(**cfg)
            try:
                return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in cfg.items()})
            except TypeError as err:
                fields = ", ".join(cls.__dataclass_fields__)
                raise ValueError(f"bad search space {cfg!r}: {err}; expected fields among {fields}") from err
        raise ValueError(f"search space must be 'paper', 'full', a dict or a SearchSpace, got {cfg!r}.")

    def scales(self) -> list[float]:
        lo, hi = self.scale_range
        return [float(s) for s in np.linspace(lo, hi, self.n_scales)] if hi > lo else [float(lo)]

    def to_record(self) -> dict:
        rec = {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}
        if rec["max_total_area_fraction"] is None:
            del rec["max_total_area_fraction"]  # records of the spaces without it stay as they were
        return rec


def logo_box_size(logo_shape: tuple[int, ...], scale: float, rotation: float, short: int) -> tuple[int, int]:
    """(height, width) of the box of a logo of ``logo_shape`` at ``scale`` of the shorter side ``short``.

    The rotated logo's bounding box keeps the logo undistorted; its longest side is ``scale * short``.
    """
    lh, lw = logo_shape[:2]
    theta = np.deg2rad(rotation)
    rw = abs(lw * np.cos(theta)) + abs(lh * np.sin(theta))
    rh = abs(lw * np.sin(theta)) + abs(lh * np.cos(theta))
    f = scale * short / max(rw, rh)
    return max(1, int(round(rh * f))), max(1, int(round(rw * f)))


@dataclass(frozen=True)
class MarkConfig:
    """A (scale, rotation) pair with its box size in native pixels and in the screen frame."""

    scale: float
    rotation: float
    height: int
    width: int
    screen_height: int
    screen_width: int


@dataclass
class Evaluation:
    """Model outputs for a batch of candidates."""

    margins: np.ndarray  # (N,) combined margin: the largest over surrogates (< 0 means success)
    preds: np.ndarray  # (N, n_models)
    model_margins: np.ndarray  # (N, n_models)
    true_logits: np.ndarray  # (N, n_models) logit of the label

    @property
    def success(self) -> np.ndarray:
        return self.margins < 0


@lru_cache(maxsize=16)
def resize_matrix(n_in: int, n_out: int) -> torch.Tensor:
    """The n_out x n_in matrix of the 1-D antialiased bilinear resize used by ``preprocess_for_model``.

    Cached: a batch of same-sized images shares it (callers must not modify it in place).
    """
    eye = torch.eye(n_in, dtype=torch.float64)[None, None]
    out = torch.nn.functional.interpolate(eye, size=(n_out, n_in), mode="bilinear", align_corners=False, antialias=True)
    return out[0, 0].float()


def _band(matrix: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """First and last non-zero column of each row of a (banded) resize matrix."""
    nz = (matrix != 0).numpy()
    first = nz.argmax(axis=1)
    last = nz.shape[1] - 1 - nz[:, ::-1].argmax(axis=1)
    return first, last


def _rows_touching(band: tuple[np.ndarray, np.ndarray], start: int, stop: int) -> tuple[int, int]:
    """The range of output rows whose kernel overlaps input rows [start, stop) (bands are monotone)."""
    first, last = band
    lo = int(np.searchsorted(last, start, side="left"))
    hi = int(np.searchsorted(first, stop, side="left"))
    return lo, max(lo, hi)


def label_margins(logits: torch.Tensor, label: int) -> torch.Tensor:
    """Per row: the label's logit minus the largest other logit (< 0 means the label is not predicted)."""
    others = logits.clone()
    others[:, label] = -torch.inf
    return logits[:, label] - others.max(dim=1).values


class AttackProblem:
    """One image to protect: candidate evaluation, gradients, geometry and the query count.

    Args:
        image: H x W x 3 native image, uint8 or float (0..``value_max``).
        wsm: H x W bool forbidden mask.
        surrogates: the model(s); the combined margin is the largest of their margins, so success
            means that every surrogate mispredicts.
        logo: RGBA uint8 logo.
        space: the search space.
        label: the grade to move away from; ``None`` uses the first surrogate's clean prediction.
        value_max: white level of the image (255 for uint8 or 0-255 floats, 1 for 0-1 floats).
        seed: seed of the problem's random generator (used by the optimizers).
        batch_size: candidates per forward pass.
        max_queries: query budget; ``None`` for no cap. Evaluation beyond it raises ``QueryBudgetExceeded``.
        render_key: 32-byte secret of the keyed rendering (:mod:`~monai_medlocker.watermark.keyed`), so
            that every candidate is scored as the final artefact will be rendered; ``None``: plain marks.
        views: the thief's preprocessing as differentiable screen-frame views (expectation over
            transformation); ``None`` judges the plain composite only.
        view_fraction: with ``views``, success also needs every surrogate to mispredict on at least this
            fraction of the views (besides the plain composite). Candidates that fail on the plain
            composite are not run through the views (their margin is the plain one), so the views cost
            queries only where they can change the outcome.
        inherited: the mark-free linearisation of an earlier problem on the same image (the earlier marks'
            problem), which an optimizer may :meth:`reanchor` here instead of paying for a new one.
        sites: the keyed layout (``None``: every lesion-free box may be searched). The optimizer may use only
            ``sites`` boxes (scale, rotation and position) drawn from a prior that knows nothing of the image:
            uniform over the search space's scales and rotations and over the image, from a generator keyed by
            ``render_key`` (when given) and ``seed``. Sites that touch the WSM are dropped; while none is left,
            the next round of ``sites`` is opened (:data:`SITE_ROUNDS` at most, then the free set). So where a
            mark may go follows the key, not the lesions or the grade, up to the WSM's own rejection.
        grad_views: input-diversity views (:class:`~monai_medlocker.watermark.eot.InputDiversity`) that the
            linearisation's gradients are averaged over (one more query per surrogate and view); they never
            judge success, and the linearisation's margins stay those of the plain composite (or its EOT mean).
        grad_sigma: with ``> 0``, the linearisation's gradients are smoothed by a Gaussian of this sigma in
            screen pixels (translation invariance, Dong et al. 2019): no query.
    """

    def __init__(
        self,
        image: np.ndarray,
        wsm: np.ndarray,
        surrogates: list[Surrogate],
        logo: np.ndarray,
        space: SearchSpace,
        label: int | None = None,
        value_max: float = 255.0,
        seed: int = 0,
        batch_size: int = 32,
        max_queries: int | None = None,
        render_key: bytes | None = None,
        views: "ThiefViews | None" = None,
        view_fraction: float = 1.0,
        inherited: "Linearization | None" = None,
        sites: int | None = None,
        grad_views: "InputDiversity | None" = None,
        grad_sigma: float = 0.0,
    ) -> None:
        if grad_sigma < 0:
            raise ValueError(f"grad_sigma must be >= 0, got {grad_sigma}.")
        if not 0 <= view_fraction <= 1:
            raise ValueError(f"view_fraction must be in [0, 1], got {view_fraction}.")
        if sites is not None and (isinstance(sites, bool) or not isinstance(sites, int) or sites < 1):
            raise ValueError(f"sites must be an integer >= 1 or None, got {sites!r}.")
        if image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"expected an H x W x 3 image, got shape {image.shape}.")
        if wsm.shape != image.shape[:2]:
            raise ValueError(f"WSM shape {wsm.shape} does not match the image's {image.shape[:2]}.")
        if not surrogates:
            raise ValueError("at least one surrogate model is needed.")
        self.image = image
        self.wsm = np.asarray(wsm, dtype=bool)
        self.surrogates = list(surrogates)
        self.logo = logo
        self.render_key = check_render_key(render_key)
        self.space = space
        self.value_max = float(value_max)
        self.rng = np.random.default_rng(seed)
        self.batch_size = int(batch_size)
        self.max_queries = max_queries
        self.queries = 0
        self.views = views
        self.view_fraction = float(view_fraction)
        self.inherited = inherited
        self.sites = sites
        self._seed = int(seed)
        self.grad_views = grad_views
        self.grad_sigma = float(grad_sigma)
        self.clean_linearization: Linearization | None = None  # set by linearize(None), for later marks
        self.height, self.width = image.shape[:2]
        self.screen_size = self.surrogates[0].spec.input_size
        self._ry = resize_matrix(self.height, self.screen_size)
        self._rx = resize_matrix(self.width, self.screen_size)
        native = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1), dtype=np.float32)) / self.value_max
        # The same antialiased resize as preprocess_for_model; far cheaper than the dense matrices at 2048 px.
        self.clean_screen = torch.nn.functional.interpolate(
            native[None], size=(self.screen_size, self.screen_size), mode="bilinear", align_corners=False, antialias=True
        )[0]
        self._row_band = _band(self._ry)
        self._col_band = _band(self._rx)
        clean = self._forward(self.clean_screen[None])
        self._clean_logits = clean.detach()
        self.clean_preds = [int(c) for c in clean[0].argmax(-1)]
        self.label = int(self.clean_preds[0] if label is None else label)
        n_classes = clean.shape[-1]
        if not 0 <= self.label < n_classes:
            raise ValueError(f"label {self.label} is outside the model's {n_classes} classes (0..{n_classes - 1}).")
        self.clean_eval = self._evaluation(clean)
        self.best: tuple[float, Placement | None] = (float(self.clean_eval.margins[0]), None)

    # ----------------------------------------------------------------------------------- geometry
    @cached_property
    def _sized_configs(self) -> list[MarkConfig]:
        """Every (scale, rotation) whose box fits the area cap, feasible or not."""
        configs = []
        short = min(self.height, self.width)
        for rotation in self.space.rotations:
            for scale in self.space.scales():
                h, w = self._box_size(scale, rotation, short)
                if h * w > self.space.max_area_fraction * self.height * self.width + 1e-9:
                    continue
                sh = max(1, round(h * self.screen_size / self.height))
                sw = max(1, round(w * self.screen_size / self.width))
                configs.append(MarkConfig(float(scale), float(rotation), h, w, sh, sw))
        return configs

    @cached_property
    def configs(self) -> list[MarkConfig]:
        """Every (scale, rotation) whose box fits the area cap and has a feasible position."""
        configs = [cfg for cfg in self._sized_configs if self.native_feasible(cfg).any()]
        if not configs:
            raise NoFeasiblePlacementError(
                f"no feasible logo placement: every box of the allowed sizes ({self.space.scale_range} of the "
                f"short side, at most {self.space.max_area_fraction:.0%} of the area) touches a lesion box or "
                f"leaves the {self.width}x{self.height} image"
            )
        return configs

    def _box_size(self, scale: float, rotation: float, short: int) -> tuple[int, int]:
        return logo_box_size(self.logo.shape, scale, rotation, short)

    def _free_feasible(self, cfg: MarkConfig) -> np.ndarray:
        """Lesion-free top-left corners of ``cfg``'s box (every position, keyed layout or not)."""
        key = (cfg.height, cfg.width)
        cache = self.__dict__.setdefault("_feasible_cache", {})
        if key not in cache:
            if "sat" not in cache:  # one summed-area table for every box size
                cache["sat"] = summed_area_table(self.wsm)
            cache[key] = feasible_top_left(self.wsm, cfg.height, cfg.width, cache["sat"])
        return cache[key]

    def native_feasible(self, cfg: MarkConfig) -> np.ndarray:
        """Top-left corners where ``cfg``'s box may go: lesion-free, and one of the open keyed sites (``sites``)."""
        free = self._free_feasible(cfg)
        sites = self._open_sites
        if sites is None:
            return free
        key = ("sites", cfg.height, cfg.width, cfg.rotation)
        cache = self.__dict__.setdefault("_feasible_cache", {})
        if key not in cache:
            mask = np.zeros_like(free)
            for scale, rotation, x0, y0 in sites:
                if (scale, rotation) == (cfg.scale, cfg.rotation):
                    mask[y0, x0] = free[y0, x0]
            cache[key] = mask
        return cache[key]

    def _keyed_sites(self) -> list[tuple[float, float, int, int]]:
        """The keyed draw of ``sites * SITE_ROUNDS`` boxes (scale, rotation, native x0, y0), image-blind.

        Each site is a scale and a rotation of the search space and a top-left corner uniform over the
        box's range, on the screen frame's grid (so that the optimizers' screen sees it) mapped to native
        pixels. Only the key, the seed, the image size and the search space go in; never a pixel or a label.
        """
        scales, rotations = self.space.scales(), list(self.space.rotations)
        material = np.array([self._seed, self.height, self.width, self.screen_size], dtype=np.int64).tobytes()
        digest = hashlib.blake2b(material, key=self.render_key or b"", person=b"medlocker-lay/1").digest()
        rng = np.random.Generator(np.random.PCG64(int.from_bytes(digest, "little")))
        n = self.sites * SITE_ROUNDS
        si, ri = rng.integers(len(scales), size=n), rng.integers(len(rotations), size=n)
        fu, fv = rng.random(n), rng.random(n)
        short = min(self.height, self.width)
        out = []
        for j in range(n):
            scale, rotation = float(scales[si[j]]), float(rotations[ri[j]])
            h, w = self._box_size(scale, rotation, short)
            sh = max(1, round(h * self.screen_size / self.height))
            sw = max(1, round(w * self.screen_size / self.width))
            cfg = MarkConfig(scale, rotation, h, w, sh, sw)
            u = int(np.floor(fu[j] * (max(self.screen_size - sw, 0) + 1)))
            v = int(np.floor(fv[j] * (max(self.screen_size - sh, 0) + 1)))
            x0, y0 = self.screen_to_native(cfg, u, v)
            out.append((scale, rotation, int(x0), int(y0)))
        return out

    @cached_property
    def _open_sites(self) -> list[tuple[float, float, int, int]] | None:
        """The keyed sites the search may use: the first rounds up to the one that holds a lesion-free site
        of a size the area cap allows; ``None`` (the free set) without ``sites`` or when no round does."""
        if self.sites is None:
            return None
        sites = self._keyed_sites()
        sized = {(c.scale, c.rotation): c for c in self._sized_configs}
        for r in range(SITE_ROUNDS):
            for scale, rotation, x0, y0 in sites[r * self.sites : (r + 1) * self.sites]:
                cfg = sized.get((scale, rotation))
                if cfg is not None and self._free_feasible(cfg)[y0, x0]:
                    return sites[: (r + 1) * self.sites]
        return None

    def screen_to_native(self, cfg: MarkConfig, u: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Map screen-frame top-left corners (column u, row v) to native ones, clipped inside the image."""
        x0 = np.clip(np.rint(np.asarray(u) * self.width / self.screen_size), 0, self.width - cfg.width).astype(int)
        y0 = np.clip(np.rint(np.asarray(v) * self.height / self.screen_size), 0, self.height - cfg.height).astype(int)
        return x0, y0

    def screen_feasible(self, cfg: MarkConfig) -> np.ndarray:
        """Feasibility over screen-frame top-left corners (rows v, columns u)."""
        key = ("screen", cfg.height, cfg.width, cfg.screen_height, cfg.screen_width)
        cache = self.__dict__.setdefault("_feasible_cache", {})
        if key not in cache:
            nv = self.screen_size - cfg.screen_height + 1
            nu = self.screen_size - cfg.screen_width + 1
            x0, _ = self.screen_to_native(cfg, np.arange(nu), np.zeros(nu))
            _, y0 = self.screen_to_native(cfg, np.zeros(nv), np.arange(nv))
            cache[key] = self.native_feasible(cfg)[np.ix_(y0, x0)]
        return cache[key]

    def placement(self, cfg: MarkConfig, x0: int, y0: int, alpha: float) -> Placement:
        lo, hi = self.space.alpha_range
        return Placement(int(x0), int(y0), cfg.width, cfg.height, float(np.clip(alpha, lo, hi)), cfg.rotation, cfg.scale)

    def is_feasible(self, p: Placement) -> bool:
        cfg_ok = 0 <= p.x0 <= self.width - p.width and 0 <= p.y0 <= self.height - p.height
        ok = cfg_ok and not self.wsm[p.y0 : p.y0 + p.height, p.x0 : p.x0 + p.width].any()
        if ok and self._open_sites is not None:  # the keyed layout: one of its open sites, nowhere else
            cfg = next((c for c in self._sized_configs
                        if (c.width, c.height, c.rotation) == (p.width, p.height, p.rotation)), None)
            ok = cfg is not None and bool(self.native_feasible(cfg)[p.y0, p.x0])
        return bool(ok)

    def random_placement(self, cfg: MarkConfig | None = None, alpha: float | None = None) -> Placement:
        """A uniformly random feasible placement (config, position, alpha)."""
        cfg = cfg or self.configs[self.rng.integers(len(self.configs))]
        ys, xs = np.nonzero(self.native_feasible(cfg))
        i = self.rng.integers(len(ys))
        a = self.rng.uniform(*self.space.alpha_range) if alpha is None else alpha
        return self.placement(cfg, xs[i], ys[i], a)

    # --------------------------------------------------------------------------------- the models
    def budget_left(self) -> int | None:
        if self.max_queries is None:
            return None
        return max(0, self.max_queries - self.queries)

    def _count(self, n_images: int) -> None:
        cost = n_images * len(self.surrogates)
        if self.max_queries is not None and self.queries + cost > self.max_queries:
            raise QueryBudgetExceeded(f"query budget of {self.max_queries} exceeded")
        self.queries += cost

    def screen_image(self, placements: list[Placement]) -> torch.Tensor:
        """The composite of the given marks, in the screen frame (3 x S x S, [0, 1])."""
        x = self.clean_screen.clone()
        for p in placements:
            x0, y0, x1, y1 = p.box_xyxy
            region = self.image[y0:y1, x0:x1].astype(np.float32)
            rgb, opacity = mark_opacity(self.logo, p, self.render_key)
            a = opacity[..., None]
            blended = region * (1 - a) + rgb * np.float32(self.value_max / 255.0) * a
            if self.image.dtype == np.uint8:
                blended = np.clip(np.rint(blended), 0, 255)
            delta = torch.from_numpy((blended - region) / np.float32(self.value_max))
            # Only the screen rows/columns whose resize kernel reaches the box are touched.
            s0, s1 = _rows_touching(self._row_band, y0, y1)
            t0, t1 = _rows_touching(self._col_band, x0, x1)
            x[:, s0:s1, t0:t1] += torch.einsum(
                "sh,hwc,tw->cst", self._ry[s0:s1, y0:y1], delta, self._rx[t0:t1, x0:x1]
            )
        return x

    def _forward(self, screen: torch.Tensor, grad: bool = False) -> torch.Tensor:
        """Logits of every surrogate: (N, n_models, n_classes)."""
        self._count(screen.shape[0])
        outs = []
        for s in self.surrogates:
            chunks = []
            for start in range(0, screen.shape[0], self.batch_size):
                with torch.set_grad_enabled(grad):
                    batch = screen[start : start + self.batch_size]
                    x = preprocess_for_model(batch.to(s.device), s.spec)
                    if not grad:  # channels-last convolutions: a quarter to a third faster on CPU, same values to ~1e-6
                        x = x.contiguous(memory_format=torch.channels_last)
                    chunks.append(s.network(x).to(batch.device))
            outs.append(torch.cat(chunks))
        if len({o.shape[-1] for o in outs}) > 1:
            counts = ", ".join(f"{s.spec.name}: {o.shape[-1]}" for s, o in zip(self.surrogates, outs))
            raise ValueError(f"the surrogates of an ensemble must share their classes, got {counts}.")
        return torch.stack(outs, dim=1)

    def _evaluation(self, logits: torch.Tensor) -> Evaluation:
        logits = logits.detach()
        model_margins = torch.stack([label_margins(logits[:, m], self.label) for m in range(logits.shape[1])], dim=1)
        return Evaluation(
            margins=model_margins.max(dim=1).values.numpy(),
            preds=logits.argmax(-1).numpy(),
            model_margins=model_margins.numpy(),
            true_logits=logits[:, :, self.label].numpy(),
        )

    def _track(self, candidates: list[Placement], ev: Evaluation) -> None:
        i = int(np.argmin(ev.margins))
        if ev.margins[i] < self.best[0] or self.best[1] is None:
            self.best = (float(ev.margins[i]), candidates[i])

    def evaluate(self, candidates: list[Placement]) -> Evaluation:
        """Margins of candidate placements; 1 query per image and model (and per view, with ``views``)."""
        if not candidates:
            raise ValueError("evaluate() needs at least one candidate placement.")
        screens = torch.stack([self.screen_image([p]) for p in candidates])
        ev = self._evaluation(self._forward(screens))
        if self.views is not None:
            hits = np.flatnonzero(ev.success)
            if hits.size:
                view_margins = self._view_margins(self._forward(self.views(screens[hits])))
                ev.margins[hits] = np.maximum(ev.margins[hits], view_margins)
        self._track(candidates, ev)
        return ev

    def _view_margins(self, view_logits: torch.Tensor) -> np.ndarray:
        """Per image, the EOT margin of its views' logits ((N * V, n_models, n_classes), image-major).

        A view counts as fooled when every surrogate mispredicts it (its margin, the largest over the
        surrogates, is < 0). The EOT margin is the k-th smallest view margin, k = ceil(view_fraction * V),
        so it is < 0 exactly when at least k views are fooled.
        """
        n_views = len(self.views)
        per_view = self._evaluation(view_logits).margins.reshape(-1, n_views)
        k = int(np.ceil(self.view_fraction * n_views - 1e-9))
        if k == 0:
            return np.full(per_view.shape[0], -np.inf)
        return np.sort(per_view, axis=1)[:, k - 1]

    def reanchor(self, lin: "Linearization") -> "Linearization | None":
        """A linearisation of another problem on this image's mark-free ancestors, moved to this problem's image.

        The gradients are kept (no query); the offsets become this image's exact pairwise margins, from
        the clean check already paid for, so the first-order model is exact at this image. ``None`` with
        views (the EOT linearisation averages over them) or when the screen frames differ.
        """
        if self.views is not None or lin.grads.shape[-3:] != self.clean_screen.shape:
            return None
        z = self._clean_logits[0].sum(0)  # (n_classes,), summed over surrogates, as in linearize()
        others = [k for k in range(z.shape[0]) if k != self.label]
        if lin.grads.shape[0] != len(others):
            return None
        return Linearization(grads=lin.grads, offsets=(z[self.label] - z[others]), evaluation=self.clean_eval)

    def linearize(self, placement: Placement | None = None) -> "Linearization":
        """First-order model of every pairwise margin z_label - z_k around the image with ``placement``.

        One query per surrogate: one forward pass, reused by one backward pass per other class.
        For an ensemble, each pairwise margin is summed over the surrogates.
        With ``views``, the margins are averaged over the plain composite and its views (the expectation
        over the thief's preprocessing); that costs one query per surrogate and view.
        """
        base = self.screen_image([placement] if placement else [])
        x = base.clone().requires_grad_(True)
        judged = [x[None]] if self.views is None else [x[None], self.views(x[None])]
        n_judged = 1 if self.views is None else 1 + len(self.views)
        batch = torch.cat(judged + ([self.grad_views(x[None])] if self.grad_views is not None else []))
        all_logits = self._forward(batch, grad=True)
        logits = all_logits[:1]
        z = all_logits[:n_judged].sum(1).mean(0)  # summed over surrogates, averaged over the judged views
        zg = all_logits.sum(1).mean(0) if self.grad_views is not None else z  # ... and the diversity views
        others = [k for k in range(z.shape[0]) if k != self.label]
        pairwise = zg[self.label] - zg[others]
        # The K backward passes as one batched pass (vmap over the one-hot cotangents): the same gradients,
        # bit for bit, at about 0.8x the time of K separate passes.
        grads = torch.autograd.grad(pairwise, x, grad_outputs=torch.eye(len(others), dtype=pairwise.dtype),
                                    is_grads_batched=True)[0]
        if self.grad_sigma > 0:
            grads = _gaussian_blur(grads, self.grad_sigma)
        margins = (z[self.label] - z[others]).detach()
        # Predicted margin of a composite X: offsets + g . (X - clean), exact at X = base.
        offsets = margins - (grads * (base - self.clean_screen)).sum(dim=(1, 2, 3))
        ev = self._evaluation(logits.detach())
        if self.views is not None and ev.success[0]:
            ev.margins[0] = max(ev.margins[0], float(self._view_margins(all_logits[1:n_judged].detach())[0]))
        lin = Linearization(grads=grads, offsets=offsets, evaluation=ev)
        if placement is not None:
            self._track([placement], ev)
        elif self.views is None:
            self.clean_linearization = lin
        return lin


@dataclass
class Linearization:
    """Gradients (K x 3 x S x S) and offsets (K) of the K pairwise margins, in the screen frame."""

    grads: torch.Tensor
    offsets: torch.Tensor
    evaluation: Evaluation


class QueryBudgetExceeded(RuntimeError):
    """An optimizer asked for more model queries than its budget allows."""
