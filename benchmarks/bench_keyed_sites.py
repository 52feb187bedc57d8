"""How often the keyed layout opens more rounds of sites, and how often it falls back to the free set.

Issue 17 item 5's doubt: when none of ``SITE_ROUNDS`` rounds of keyed sites holds a lesion-free box, the
search of that mark falls back to the free set, where the placement may follow the lesions again. For
each lab image (the study's WSM: lesions plus the disc and macula zones) this builds the first mark's
search problem as protect does (protect defaults, the study's render keys) and records how many rounds
opened, or whether it fell back; per grade, since a fallback that depends on the grade would leak it.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_keyed_sites.py --n 80 --size 512 --seed 8128 \
        --out benchmarks/results/placement/keyed_sites_seed8128.json
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]

from bench_common import result_header  # noqa: E402
from monai_medlocker.networks import load_protect_surrogates  # noqa: E402
from monai_medlocker.watermark.feasibility import NoFeasiblePlacementError  # noqa: E402
from monai_medlocker.watermark.logo import logo_for_image  # noqa: E402
from monai_medlocker.watermark.problem import SITE_ROUNDS, AttackProblem  # noqa: E402
from monai_medlocker.workflows.study_tools import protect_tools, study_render_key  # noqa: E402
from monai_medlocker.workflows.threat_study import lab_study_images  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=80)
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--seed", type=int, default=8128)
    p.add_argument("--out", default=str(ROOT / "benchmarks/results/placement/keyed_sites.json"))
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    members = json.loads((ROOT / "bundle/configs/evaluate_protection.json").read_text())["surrogate"]["members"]
    surrogates = load_protect_surrogates(members, checkpoint_dir=ROOT / "bundle/models/zoo")
    optimizer, space, owner_logo = protect_tools({"optimizer": "medlocker"})
    rows = []
    for i, s in enumerate(lab_study_images(args.n, args.size, args.seed)):
        logo, _ = logo_for_image(owner_logo, s.original)
        problem = AttackProblem(s.original, s.wsm, surrogates, logo, space, label=s.grade, seed=i,
                                render_key=study_render_key(s.image_id, i), sites=optimizer.keyed_sites)
        try:
            problem.configs
            sites = problem._open_sites
            rounds = "free set" if sites is None else len(sites) // optimizer.keyed_sites
        except NoFeasiblePlacementError:
            rounds = "no lesion-free box"
        rows.append({"image": s.image_id, "grade": s.grade, "rounds": rounds,
                     "wsm_fraction": round(float(s.wsm.mean()), 4)})
    by_grade = {g: dict(Counter(str(r["rounds"]) for r in rows if r["grade"] == g)) for g in sorted({r["grade"] for r in rows})}
    result = {**result_header("how many rounds of keyed sites the first mark opens", __file__, argv),
              "keyed_sites": optimizer.keyed_sites, "site_rounds": SITE_ROUNDS,
              "images": {"n": args.n, "size": args.size, "seed": args.seed},
              "rounds_opened": dict(Counter(str(r["rounds"]) for r in rows)), "rounds_by_grade": by_grade,
              "fallbacks": sum(r["rounds"] == "free set" for r in rows), "rows": rows}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: result[k] for k in ("rounds_opened", "rounds_by_grade", "fallbacks")}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
