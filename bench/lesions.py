#!/usr/bin/env python
"""The lungs and lesion segmentation network against radiologists, and what a hospital gets from it.

1. Leave one patient out on lesion-slices (6 patients): the shipped recipe trained on the other five
   and lesion-slices-sirm (every slice's views and backbone maps computed once, as fit does), the held-out
   patient mapped at its own pixels by the ensemble: lesion Dice, lung Dice, the radiologists' lesion
   pixels inside the lungs, slice AUC (slices whose lungs fill >= 10% of the image), Spearman of the
   lesion's share of the lungs; beside them the previous bench's figures (the cell heads, stop 31).
2. The same for the recipe's candidates (two decoders instead of three, no augmentation), and the
   shipped recipe from --seeds random starts (3 by default: its spread).
3. Severity per held-out volume against the radiologists' masks: zones equal, within one, opacity gap.
4. The three hospital studies with the shipped model (the demo's features and settings, both lesion data
   sets): severity, opacity, finding; the finding and the slice AUC against the radiologists' 158 slice
   labels (evaluate --lesion-data).
5. Cost: milliseconds per slice, a 300-slice study with maps and its NIfTI, fit's added minutes, and the
   peak memory of predict on 1,000 slices with a fresh features folder, with and without --lesion-maps.
Nothing is chosen on held-out labels: each member keeps its epoch by its own fold's training patients,
and the cut-off comes from the training patients' out-of-fold maps; the held-out patient and the hospital
labels are only scored.

    .venv/bin/python bench/lesions.py --features-dir <the demo's features>   # or: make bench-lesions

Each leave-one-patient-out pass takes about 50 minutes on 2 cores; its seed or candidate row is saved in
<models-dir>/lesions-bench.json with the settings, and --resume keeps the rows measured with the same settings
and runs only the missing ones.
"""
from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from common import MODELS, SHARED, bench_parser, publish, table_section
from predict_cost import cost_rows

from classifiers.estimators.segmenter import LungLesionSegmenter  # noqa: E402
from classifiers.records.severity import SliceAreas, severity  # noqa: E402
from classifiers.settings import FitSettings, LesionSettings  # noqa: E402
from classifiers.workflows.features import FeatureSelection  # noqa: E402
from classifiers.workflows.lesions.evaluate import evaluate_lesions  # noqa: E402
from classifiers.workflows.lesions.summary import MinimumArea, segmentation_of  # noqa: E402
from classifiers.workflows.lesions.training import pooled, scored, training_views  # noqa: E402
from classifiers.workflows.model import load_model  # noqa: E402
from classifiers.workflows.studies import predict_studies  # noqa: E402
from classifiers.workflows.train import fit_model  # noqa: E402
from covidct_core.run_context import RunContext  # noqa: E402
from feature_extractor.feature_spec import FeatureSpec  # noqa: E402
from feature_extractor.lungs.sides import LEFT, RIGHT, lung_sides  # noqa: E402
from feature_extractor.segmentation.encoder import MapExtractor, map_spec  # noqa: E402
from feature_extractor.segmentation.lesion_data import load_lesion_data, slice_masks  # noqa: E402
from feature_extractor.segmentation.slices import read_segmentation_slice  # noqa: E402
from feature_extractor.weights import WeightsChoice  # noqa: E402

WEIGHTS = {"mobilenetv2": MODELS / "mobilenet_v2_1.0_224_imagenet_from_coral_tf2_ptq_no_top.h5",
           "mobilenet": MODELS / "mobilenet_v1_1.0_224_imagenet_from_coral_quant_no_top.h5"}
FEATURES = {"pooling": "multiscale", "tta": "flip"}
DATA = SHARED / "data"
PATIENTS = ("rp1", "rp3", "rp5", "rp6", "rp8", "rp9")
# The previous bench (stop 31: cell heads on hypercolumns, learned lungs): per patient lesion Dice, lung Dice,
# lesion inside the lungs; pooled slice AUC and Spearman.
BEFORE = {"rp1": (0.769, 0.967, 0.91), "rp3": (0.164, 0.951, 0.30), "rp5": (0.568, 0.954, 0.99),
          "rp6": (0.002, 0.947, 1.00), "rp8": (0.515, 0.968, 0.99), "rp9": (0.637, 0.950, 1.00),
          "pooled": (0.512, 0.953, 0.88)}
BEFORE_AUC, BEFORE_SPEARMAN = 0.871, 0.644
# The recipe's candidates: what differs from the shipped settings (classifiers/settings.LesionSettings).
# One decoder is not a candidate: every training patient needs a member that did not see it (settings.members).
# The shipped recipe's three starts with one cut-off from the pooled out-of-fold maps (cut_off="pooled", the rule
# until stop 37): pooled lesion Dice; and the two-decoder candidate's under that rule.
POOLED_CUT_OFF_SEEDS, POOLED_CUT_OFF_TWO_DECODERS = (0.679, 0.608, 0.653), 0.639
CANDIDATES = {"shipped": {}, "one cut-off on the pooled out-of-fold maps": {"cut_off": "pooled"},
              "two decoders": {"members": 2}, "no augmentation (the slice and its mirror)": {"views": 2}}


def f3(v) -> str:
    return "" if v is None else f"{v:.3f}"


def the_views(masked, settings: LesionSettings, context: RunContext):
    """Every masked slice's views and backbone maps (once for all folds and recipes with these views)."""
    spec = FeatureSpec("mobilenetv2", WeightsChoice("file", str(WEIGHTS["mobilenetv2"])))
    return training_views(masked, MapExtractor(map_spec(spec, settings.side), context), settings)


def leave_one_patient_out(training, masked, settings: LesionSettings) -> dict[str, list]:
    """patient -> its slices' out-of-fold results (training.OutOfFold), each patient held out in turn."""
    minimum = MinimumArea(settings.min_lesion_mm2, settings.min_lesion_px)
    out = {}
    for patient in PATIENTS:
        test = np.array([i for i, s in enumerate(masked) if s.patient == patient])
        keep = np.array([i for i, s in enumerate(masked) if s.patient != patient])
        start = time.perf_counter()
        segmenter = LungLesionSegmenter(settings.width, settings.output_stride, settings.epochs, settings.members,
                                        settings.per_patient, random_state=settings.seed,
                                        cut_off=settings.cut_off).fit(training.subset(keep))
        rows = training.rows(test)
        p = segmenter.predict_proba([m[rows] for m in training.maps], training.slices[rows])
        out[patient] = [scored(masked[i], segmentation_of(read_segmentation_slice(masked[i].path), q,
                                                          segmenter.threshold_, minimum)) for i, q in zip(test, p)]
        out[patient + ":minutes"] = (time.perf_counter() - start) / 60
        print(f"  {patient}: lesion Dice {f3(dice_of(out[patient], 'lesion'))}, lung Dice "
              f"{f3(dice_of(out[patient], 'lungs'))} ({out[patient + ':minutes']:.1f} min)", flush=True)
    return out


def dice_of(results, what: str) -> float | None:
    share = pooled([getattr(o, what) for o in results])
    return None if share is None else 2 * share


def slice_auc_and_spearman(results) -> tuple[float | None, float | None]:
    from scipy.stats import spearmanr
    from sklearn.metrics import roc_auc_score

    lungs = [(o.slice.infected, o.segmentation.summary.lesion_fraction or 0.0) for o in results
             if slice_masks(o.slice, o.segmentation.sides.shape).lungs.mean() >= 0.10]
    y = [a for a, _ in lungs]
    auc = float(roc_auc_score(y, [b for _, b in lungs])) if len(set(y)) == 2 else None
    pairs = [(o.slice.infection_fraction, o.segmentation.summary.lesion_fraction or 0.0) for o in results
             if o.slice.infection_fraction is not None]
    rho = float(spearmanr(*zip(*pairs)).correlation) if len(pairs) > 2 else None
    return auc, rho


def everything(lopo: dict) -> list:
    return [o for p in PATIENTS for o in lopo[p]]


def lopo_rows(lopo: dict) -> list[tuple[str, ...]]:
    rows = []
    for name in (*PATIENTS, "pooled"):
        results = everything(lopo) if name == "pooled" else lopo[name]
        auc, rho = slice_auc_and_spearman(results)
        inside = pooled([o.inside for o in results])
        b = BEFORE[name]
        rows.append((name, str(len(results)), str(sum(o.slice.infected == 1 for o in results)),
                     f"{b[0]:.3f} -> {f3(dice_of(results, 'lesion'))}",
                     f"{b[1]:.3f} -> {f3(dice_of(results, 'lungs'))}",
                     f"{b[2]:.0%} -> {inside:.0%}" if inside is not None else "",
                     (f"{BEFORE_AUC:.3f} -> " if name == "pooled" else "") + f3(auc),
                     (f"{BEFORE_SPEARMAN:.3f} -> " if name == "pooled" else "") + f3(rho)))
    return rows


def recipe_measures(lopo: dict) -> tuple[str, ...]:
    """A recipe's row (without its name): pooled and lowest lesion Dice, lung Dice, lowest share inside the
    lungs, slice AUC, Spearman, training minutes per held-out patient; a seed's row is its first three."""
    results = everything(lopo)
    auc, rho = slice_auc_and_spearman(results)
    per_patient = [dice_of(lopo[p], "lesion") for p in PATIENTS if p != "rp6"]
    inside = [pooled([o.inside for o in lopo[p]]) for p in PATIENTS]
    minutes = np.mean([lopo[p + ":minutes"] for p in PATIENTS])
    return (f3(dice_of(results, "lesion")), f3(min(per_patient)), f3(dice_of(results, "lungs")),
            f"{min(i for i in inside if i is not None):.0%}", f3(auc), f3(rho), f"{minutes:.1f}")


def severity_rows(lopo: dict) -> list[tuple[str, ...]]:
    """Each held-out volume's severity from the product's maps and from the radiologists' masks."""
    rows, gaps, equal, near, zones = [], [], 0, 0, 0
    for patient in PATIENTS:
        results = sorted(lopo[patient], key=lambda o: o.slice.position or 0)
        ours = severity([o.segmentation.summary.areas() for o in results])
        theirs = severity([expert_areas(o) for o in results])
        same = sum(ours.scores[z] == theirs.scores[z] for z in ours.scores)
        close = sum(ours.scores[z] is not None and theirs.scores[z] is not None
                    and abs(ours.scores[z] - theirs.scores[z]) <= 1 for z in ours.scores)
        equal, near, zones = equal + same, near + close, zones + len(ours.scores)
        gaps.append(abs((ours.opacity_percent or 0) - (theirs.opacity_percent or 0)))
        rows.append((patient, f"{ours.opacity_percent or 0:.1f}%", f"{theirs.opacity_percent or 0:.1f}%",
                     str(ours.severity_score), str(theirs.severity_score), f"{same} of 6", f"{close} of 6"))
    rows.append(("all volumes", f"median gap {np.median(gaps):.1f} points", "", "", "", f"{equal / zones:.0%}",
                 f"{near / zones:.0%}"))
    return rows


def expert_areas(o) -> SliceAreas:
    """A slice's lung and lesion areas per side from the radiologists' masks (shares of the slice)."""
    masks = slice_masks(o.slice, o.segmentation.sides.shape)
    sides = lung_sides(masks.lungs)
    lesion = masks.infection & masks.lungs
    n = sides.size
    return SliceAreas((sides == RIGHT).sum() / n, (sides == LEFT).sum() / n, (lesion & (sides == RIGHT)).sum() / n,
                      (lesion & (sides == LEFT)).sum() / n)


def shipped_model(args, context: RunContext, settings: LesionSettings) -> tuple[Path, list[tuple[str, ...]]]:
    """The demo's configuration fitted with the shipped segmentation settings on both lesion data sets, and the
    fit's cost rows (its features cached, as in make demo)."""
    path = Path(args.models_dir) / "lesions-shipped.joblib"
    selection = FeatureSelection(tuple(WEIGHTS), {n: WeightsChoice("file", str(p)) for n, p in WEIGHTS.items()},
                                 FEATURES)
    start = time.perf_counter()
    bundle = fit_model([DATA / "covid-ct", DATA / "mosmed-slices"], fit=FitSettings("stack", base=("svm", "logreg")),
                       selection=selection, context=context, model_path=path,
                       lesion_data=[DATA / "lesion-slices", DATA / "lesion-slices-sirm"], lesion=settings)
    minutes, training = (time.perf_counter() - start) / 60, bundle.card.lesion["segmenter"]["training_seconds"] / 60
    print(f"fit with lesion data: {minutes:.1f} min (segmentation network {training:.1f} min of training)", flush=True)
    return path, [("fit --lesion-data, the demo's configuration (features cached)", f"{minutes:.1f} min", "", ""),
                  ("  of which the decoders' training", f"{training:.1f} min", "", "")]


def studies_rows(path: Path, context: RunContext) -> tuple[list[tuple[str, ...]], list[tuple[str, ...]]]:
    """The hospital studies' severity and finding, and the finding against their slice labels."""
    model = load_model(path, context)
    with tempfile.TemporaryDirectory() as tmp:
        report = predict_studies(model, DATA / "dicom-studies", lesion_maps=tmp)
    rows = []
    for r in report.results:
        s = r.severity
        rows.append((r.study.name, str(len(r.scored)), f"{s.opacity_percent:.2f}%" if s else "", str(s.severity_score)
                     if s else "", s.zone_text() if s else "", r.finding or "", f"{r.opacity_share:.0%}"
                     if r.opacity_share is not None else ""))
    evaluation = evaluate_lesions(model, [DATA / "dicom-studies"])
    m = evaluation.by_source["dicom-studies"]
    labels = []
    for rate in ("0.05", "0.1", "0.2"):
        f = m["finding"].get(rate, {})
        labels.append((rate, f"{f.get('coverage', 0):.0%}", f3(f.get("error")), f3(m["slice_auc"]),
                       ", ".join(f"{g.split('/')[-1]} {w['auc']:.3f}" for g, w in m["within_patient"].items())))
    return rows, labels


def main() -> int:
    parser = bench_parser(__doc__)
    parser.add_argument("--candidates", nargs="*", default=list(CANDIDATES))
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--skip-hospital", action="store_true")
    parser.add_argument("--resume", action="store_true",
                        help="keep the seed and candidate rows an earlier run of this bench measured with the same "
                             "settings (<models-dir>/lesions-bench.json) and run only the missing ones")
    args = parser.parse_args()
    if not ((DATA / "lesion-slices").is_dir() and WEIGHTS["mobilenetv2"].is_file()):
        print(f"skipped: needs {DATA / 'lesion-slices'} and {WEIGHTS['mobilenetv2']}")
        return 0
    context = RunContext(args.features_dir, batch_size=32, offline=True)
    masked = load_lesion_data([DATA / "lesion-slices", DATA / "lesion-slices-sirm"]).with_masks
    shipped = LesionSettings(seed=0)
    rows = Rows(Path(args.models_dir) / "lesions-bench.json", shipped, args.resume)
    views: dict = {}

    def lopo_of(settings: LesionSettings) -> dict:
        if settings.views not in views:
            views[settings.views] = the_views(masked, settings, context)
        return leave_one_patient_out(views[settings.views], masked, settings)

    shipped_lopo = None
    for seed in (s for s in range(args.seeds) if f"seed {s}" not in rows.seeds):
        print(f"seed {seed}:", flush=True)
        lopo = lopo_of(LesionSettings(**{**shipped.record(), "seed": seed}))
        row = recipe_measures(lopo)
        rows.seeds[f"seed {seed}"] = row[:3]
        if seed == 0:
            shipped_lopo, rows.candidates["shipped"] = lopo, row
        rows.save()
    for name in (n for n in args.candidates if n not in rows.candidates):
        print(f"{name}:", flush=True)
        lopo = lopo_of(LesionSettings(**{**shipped.record(), **CANDIDATES[name]}))
        shipped_lopo = lopo if name == "shipped" else shipped_lopo
        rows.candidates[name] = recipe_measures(lopo)
        rows.save()
    sections = recipe_sections(rows, args.seeds, args.candidates)
    if shipped_lopo is not None:
        sections += lopo_sections(shipped_lopo, shipped)
    if not args.skip_hospital:
        sections += hospital_sections(args, context, shipped)
    for marker, heading, text, header, table in sections:
        publish(table_section(marker, "lesions.py", "bench-lesions", text, header, table), heading, args.out)
    return 0


class Rows:
    """The seed and candidate rows measured so far, saved after each leave-one-patient-out pass with the
    settings they were measured with (a resumed run keeps only rows of the same settings)."""

    def __init__(self, path: Path, shipped: LesionSettings, resume: bool):
        self.path, self.settings = path, {k: v for k, v in shipped.record().items() if k != "seed"}
        earlier = json.loads(path.read_text()) if resume and path.is_file() else {}
        same = earlier.get("settings") == self.settings
        if resume and earlier and not same:
            print(f"not resumed: {path} was measured with other settings", flush=True)
        self.seeds = dict(earlier.get("seeds", {})) if same else {}
        self.candidates = dict(earlier.get("candidates", {})) if same else {}

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text(json.dumps({"settings": self.settings, "seeds": self.seeds,
                                         "candidates": self.candidates}, indent=1))


def recipe_sections(rows: Rows, n_seeds: int, names: list[str]) -> list:
    seeds = [(f"seed {s}", *rows.seeds[f"seed {s}"]) for s in range(n_seeds) if f"seed {s}" in rows.seeds]
    pooled_dice = [float(r[1]) for r in seeds]
    starts = len(seeds)
    seeds += [("mean", f"{np.mean(pooled_dice):.3f}", f"{np.mean([float(r[2]) for r in seeds]):.3f}",
               f"{np.mean([float(r[3]) for r in seeds]):.3f}"),
              ("spread (max - min)", f"{max(pooled_dice) - min(pooled_dice):.3f}", "", "")]
    candidates = [(n, *rows.candidates[n]) for n in names if n in rows.candidates]
    rank = sorted(pooled_dice, reverse=True).index(pooled_dice[0]) + 1 if "seed 0" in rows.seeds else None
    return [
        ("lesions-recipes", "Lungs and lesions: the recipe's candidates",
         "Leave one patient out as above, for each candidate recipe (what differs from the shipped one). Per patient "
         "lesion Dice: the lowest of the five patients with more than one infected slice. Minutes: training per "
         "held-out patient on this machine. Two decoders, measured under the pooled cut-off, scored "
         f"{POOLED_CUT_OFF_TWO_DECODERS:.3f} pooled (the shipped recipe then {POOLED_CUT_OFF_SEEDS[0]:.3f}).",
         ("recipe", "lesion Dice pooled", "lowest per patient", "lung Dice", "lowest lesion inside", "slice AUC",
          "Spearman", "minutes"), candidates),
        ("lesions-seeds", "Lungs and lesions: random starts",
         f"The shipped recipe from {starts} random start{'s' if starts > 1 else ''} (the decoders' initial "
         "weights, the folds and the augmentation), leave one patient out. Target over three: the pooled lesion Dice "
         "varies by <= 0.03. With one cut-off chosen on the members' pooled out-of-fold maps (the candidate "
         "cut_off=\"pooled\", shipped until stop 37) the same three starts gave "
         + ", ".join(f"{v:.3f}" for v in POOLED_CUT_OFF_SEEDS) +
         f" (mean {np.mean(POOLED_CUT_OFF_SEEDS):.3f}, spread "
         f"{max(POOLED_CUT_OFF_SEEDS) - min(POOLED_CUT_OFF_SEEDS):.3f}). "
         "Reproducibility: two runs of this bench on this machine gave the same per-patient Dice "
         "to three decimals; TensorFlow's multi-threaded CPU kernels do not promise bit-identical sums, so another "
         "machine or thread count may differ in the last digits. Rows may come from earlier runs of the same settings "
         "(--resume)." + (f" Seed 0 is the start of the leave-one-patient-out, severity and candidates tables: number "
                          f"{rank} of {starts} by pooled lesion Dice." if rank else ""),
         ("start", "lesion Dice pooled", "lowest per patient", "lung Dice"), seeds),
    ]


def lopo_sections(lopo: dict, shipped: LesionSettings) -> list:
    return [
        ("lesions-lopo", "Lungs and lesions: leave one patient out",
         f"lesion-slices (6 Radiopaedia patients, 709 slices), each patient held out in turn: the segmentation network "
         f"(shipped recipe: {shipped.members} decoders of width {shipped.width} by patient-grouped folds, "
         f"{shipped.epochs} epochs, {shipped.views} views per slice) trained on the other five and lesion-slices-sirm, "
         "the held-out patient mapped at its own pixels. Before -> after: the previous bench's cell heads "
         "(hypercolumns, learned lungs) and the network. Lesion Dice inside the network's lungs; slice AUC among "
         "slices whose lungs fill >= 10% of the image. Targets: lesion Dice >= 0.72 pooled and >= 0.55 per patient "
         "(rp6 aside: one infected slice); lung Dice >= 0.97; >= 97% of the lesion inside the lungs; slice AUC "
         ">= 0.95; Spearman >= 0.85.",
         ("held-out patient", "slices", "infected", "lesion Dice", "lung Dice", "lesion inside the lungs",
          "slice AUC", "Spearman"), lopo_rows(lopo)),
        ("severity-lopo", "Severity: leave one patient out",
         "Each held-out patient's volume (its slices in order): the percentage of opacity and the CT severity score "
         "(six zones: thirds of each lung, 0-5 each) from the network's maps and from the radiologists' masks. "
         "Targets: zones >= 70% equal, >= 95% within one; median opacity gap <= 2 points.",
         ("volume", "opacity (network)", "opacity (radiologists)", "score (network)", "score (radiologists)",
          "zones equal", "zones within one"), severity_rows(lopo)),
    ]


def hospital_sections(args, context: RunContext, shipped: LesionSettings) -> list:
    model, fit_cost = shipped_model(args, context, shipped)
    studies, labels = studies_rows(model, context)
    return [
        ("lesions-studies", "Lungs and lesions: hospital studies",
         "The three COVID-CT-MD studies (JPEG Lossless DICOM, every third slice), predicted with the demo's "
         "configuration and the shipped network trained on all of lesion-slices and lesion-slices-sirm. Targets: "
         "the normal study scores 0 with opacity <= 0.2% and a finding of clear or uncertain; the COVID study's "
         "opacity above the normal study's.",
         ("study", "slices scored", "opacity", "severity", "zones", "finding", "slices with opacities"), studies),
        ("lesions-labels", "Lungs and lesions: the hospital's slice labels",
         "The finding and the lesion's share of the lungs against the radiologists' slice labels of P001, cap001 and "
         "normal001 (158 slices; evaluate --lesion-data). Targets at 0.1: error among answered <= 0.10 with "
         ">= 60% coverage; slice AUC >= 0.90.",
         ("error rate", "coverage", "error among answered", "slice AUC (pooled)", "within each study"), labels),
        ("lesions-cost", "Lungs and lesions: cost",
         "A fresh process on a fresh features folder (the runtime's exports cached, as on any machine after its "
         "first run), the shipped model, ONNX Runtime. Targets: a 300-slice study with maps and NIfTI <= 20 s; "
         "peak memory <= 1.5 GB for 1,000 slices with or without --lesion-maps.",
         ("what", "wall time", "per slice", "peak memory"), fit_cost + cost_rows(model)),
    ]


if __name__ == "__main__":
    sys.exit(main())
