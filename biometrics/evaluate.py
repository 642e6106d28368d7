"""`portcullis biometrics eval`: choose the match threshold by measurement.

Reads ../shared/vectors/face at run time (the photos never enter the project):
every image is encoded once through the service's own pipeline (decode to the
working size, one HOG face, 5-point alignment, encoding), then the labelled
pairs of ``deepface/master.csv`` and every further cross-identity pair that
the images allow (the two LFW photos are a tenth identity) are scored at each
threshold of a sweep.

Choice: the strictest threshold whose false-non-match rate is at most 5%,
provided it has no false match and is stricter than face_recognition's 0.6.
"""

from __future__ import annotations

import csv
import itertools
import math
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from biometrics import faces, imaging

MAX_FNMR = 0.05
SWEEP = [round(0.30 + 0.01 * i, 2) for i in range(31)]  # 0.30 .. 0.60


@dataclass(frozen=True, slots=True)
class Pair:
    a: str
    b: str
    same: bool
    labelled: bool


def clopper_pearson_upper(failures: int, trials: int, confidence: float = 0.95) -> float:
    """One-sided upper confidence bound on a binomial rate (exact, by bisection on the CDF)."""
    if trials <= 0:
        return 1.0
    if failures >= trials:
        return 1.0
    alpha = 1.0 - confidence

    def cdf(p: float) -> float:
        total = 0.0
        for i in range(failures + 1):
            log_term = (math.lgamma(trials + 1) - math.lgamma(i + 1) - math.lgamma(trials - i + 1)
                        + (i * math.log(p) if i else 0.0) + (trials - i) * math.log1p(-p))
            total += math.exp(log_term)
        return total

    lo, hi = failures / trials, 1.0
    for _ in range(200):
        mid = (lo + hi) / 2
        if cdf(mid) > alpha:
            lo = mid
        else:
            hi = mid
    return hi


def identities(master: Path) -> tuple[dict[str, str], list[Pair]]:
    """Identity per image (union of the 'Yes' pairs) and the labelled pairs."""
    parent: dict[str, str] = {}

    def find(x: str) -> str:
        parent.setdefault(x, x)
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    pairs = []
    with master.open(newline="") as fh:
        for row in csv.DictReader(fh):
            a, b, same = row["file_x"], row["file_y"], row["Decision"].strip() == "Yes"
            find(a), find(b)
            if same:
                parent[find(a)] = find(b)
            pairs.append(Pair(a, b, same, True))
    return {img: f"deepface:{find(img)}" for img in parent}, pairs


def all_pairs(ident: dict[str, str], labelled: Iterable[Pair]) -> list[Pair]:
    """The labelled pairs, then every other pair the identities allow."""
    out = list(labelled)
    have = {frozenset((p.a, p.b)) for p in out}
    for a, b in itertools.combinations(sorted(ident), 2):
        if frozenset((a, b)) not in have:
            out.append(Pair(a, b, ident[a] == ident[b], False))
    return out


def rates(dist: dict[Pair, float], threshold: float) -> dict[str, Any]:
    genuine = [d for p, d in dist.items() if p.same]
    impostor = [d for p, d in dist.items() if not p.same]
    fm = sum(d <= threshold for d in impostor)
    fnm = sum(d > threshold for d in genuine)
    return {"threshold": threshold, "false_matches": fm, "false_non_matches": fnm,
            "fmr": fm / len(impostor) if impostor else 0.0, "fnmr": fnm / len(genuine) if genuine else 0.0}


def choose(dist: dict[Pair, float]) -> float:
    ok = [t for t in SWEEP if rates(dist, t)["fnmr"] <= MAX_FNMR]
    for t in ok:  # strictest first
        if t < 0.6 and rates(dist, t)["false_matches"] == 0:
            return t
    raise ValueError("no threshold below 0.6 gives zero false matches with FNMR <= 5% on this data")


def evaluate(face_dir: Path) -> dict[str, Any]:
    deepface = face_dir / "deepface"
    ident, labelled = identities(deepface / "master.csv")
    paths = {name: deepface / "images" / name for name in ident}
    lfw = face_dir / "lfw"
    for p in sorted(lfw.glob("*.jpg")) if lfw.is_dir() else []:
        ident[f"lfw/{p.name}"] = "lfw:" + p.stem.rsplit("_", 1)[0]
        paths[f"lfw/{p.name}"] = p
    engine = faces.load_engine()
    enc: dict[str, np.ndarray] = {}
    failed = []
    for name, path in sorted(paths.items()):
        try:
            rgb = imaging.decode(path.read_bytes())
            enc[name] = engine.encode(rgb, engine.one_face(rgb))
        except Exception as exc:  # counted and reported: a photo the pipeline refuses
            failed.append({"image": name, "error": getattr(exc, "code", type(exc).__name__)})
    pairs = [p for p in all_pairs(ident, labelled) if p.a in enc and p.b in enc]
    dist = {p: faces.distance(enc[p.a], enc[p.b]) for p in pairs}
    threshold = choose(dist)
    at = rates(dist, threshold)
    n_imp = sum(not p.same for p in pairs)
    n_gen = len(pairs) - n_imp
    default = rates(dist, 0.6)
    return {
        "threshold": threshold,
        "fmr": at["fmr"], "fnmr": round(at["fnmr"], 4),
        "false_matches": at["false_matches"], "false_non_matches": at["false_non_matches"],
        "impostor_pairs": n_imp, "genuine_pairs": n_gen,
        "labelled_pairs": sum(p.labelled for p in pairs),
        "extra_cross_identity_pairs": sum((not p.labelled) and not p.same for p in pairs),
        "extra_same_identity_pairs": sum((not p.labelled) and p.same for p in pairs),
        "images": len(enc), "identities": len({ident[n] for n in enc}), "failed_images": failed,
        "fmr_upper_95": round(clopper_pearson_upper(at["false_matches"], n_imp), 5),
        "rule_of_three": round(3 / n_imp, 5) if n_imp else None,
        "max_genuine_distance": round(max(d for p, d in dist.items() if p.same), 4),
        "min_impostor_distance": round(min(d for p, d in dist.items() if not p.same), 4),
        "at_0_6": {"fmr": round(default["fmr"], 4), "fnmr": round(default["fnmr"], 4)},
        "sweep": {f"{t:.2f}": [r["false_matches"], r["false_non_matches"]]
                  for t in SWEEP for r in [rates(dist, t)] if t in (0.4, 0.45, 0.5, 0.55, 0.6)},
    }
