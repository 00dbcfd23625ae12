"""Fill the generated sections of README.md and docs/*.md from the results files.

Numbers are never copied by hand: they come from docs/results/*.json (written by
`puvae-defense evaluate` and benchmarks/projection.py) and from the registry. Each
generated section sits between `<!-- generated:NAME -->` and `<!-- /generated:NAME -->`.

Usage: python scripts/render_docs.py
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from puvae_defense import PuVAE, hub
from puvae_defense.evaluation import (ADAPTIVE_ATTACKS, DEFENSE_NAMES, PAPER_ATTACKS, PAPER_DATASETS, PAPER_TABLE6,
                                      PAPER_TABLES, defense_columns, percent_interval, results_markdown, unpack_hits)
from puvae_defense.serialization import WEIGHTS_NAME, weights_fingerprint

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "docs" / "results"


def _load(name: str) -> dict | None:
    path = RESULTS / name
    return json.loads(path.read_text()) if path.is_file() else None


def _results(pattern: str) -> list[dict]:
    """Every results file in docs/results matching ``pattern``, in name order (subfolders, such
    as the 0.1.0 results, are not read)."""
    return [json.loads(path.read_text()) for path in sorted(RESULTS.glob(pattern))]


_TEST_METRIC = re.compile(r"test_(?:(?P<projection>projection_accuracy)|accuracy(?:_through_(?P<model>[a-z_]+)"
                          r"|_(?P<who>A|B|source)_through(?:_purifier|_first(?P<first>\d+))?)?)")


def metric_phrase(key: str, value: float) -> str:
    """A model card's test metric in words: `test_accuracy_A_through_first100` -> "A behind it 82.00%
    (first 100 images)"; a key of another form is refused, so a new metric gets a phrase, not a mangled name."""
    match = _TEST_METRIC.fullmatch(key)
    if match is None:
        raise ValueError(f"no phrase for the model-card metric {key!r}: add its form to render_docs._TEST_METRIC")
    if match["projection"]:
        text = "projection right"
    elif match["model"]:
        text = f"through {match['model'].replace('_', '-')}"
    elif match["who"]:
        text = f"{match['who']} behind it"
    else:
        text = "accuracy"
    return f"{text} {value:.2f}%" + (f" (first {match['first']} images)" if match["first"] else "")


def models_table() -> str:
    lines = ["| name | what | measured (test set) |", "|---|---|---|"]
    for name in hub.list_models():
        entry = hub.get_entry(name)
        metrics = ", ".join(metric_phrase(k, v) for k, v in entry.metrics.items() if k.startswith("test_"))
        first_sentence = re.split(r"\.\s+(?=[A-Z])", entry.description)[0].rstrip(".")
        lines.append(f"| `{name}` | {first_sentence} | {metrics} |")
    return "\n".join(lines)


def _weights(report: dict) -> dict[tuple[str, str], str | None]:
    """(defense label, "purifier" or a classifier name) -> fingerprint of the weights it was measured with
    (a defense that brings its own classifiers, adversarial training, records theirs)."""
    weights: dict[tuple[str, str], str | None] = {}
    for label, source in report["meta"]["defense_sources"].items():
        weights[(label, "purifier")] = source.get("fingerprint")
        weights.update({(label, name): fp for name, fp in source.get("classifier_fingerprints", {}).items()})
    return weights


def _matches(report: dict, weights: dict[tuple[str, str], str | None]) -> dict[str, bool]:
    """Which of the report's defenses were measured on the weights of Table 2's same-named defense."""
    same: dict[str, bool] = {}
    for (label, part), fp in _weights(report).items():
        known = (label, part) in weights
        ok = weights.get((label, part)) == fp if known else part != "purifier"
        same[label] = same.get(label, True) and ok
    return same


ADAPTIVE_IMAGES = 1000


def run_time(meta: dict) -> str:
    """A report's wall time; a run resumed from a progress file that predates recording the
    earlier pieces' time says it timed only its last piece."""
    minutes = f"{meta['wall_seconds'] / 60:.0f} min"
    resumed = meta.get("resumed", {})
    if done := sum(resumed.get("images_done_before", {}).values()):
        piece = "in all" if resumed.get("whole_run_timed") else "for the last piece"
        return f"{minutes} {piece}, resumed after {done:,} images"
    return minutes


def tracked_note(reports: list[dict]) -> str:
    """How the reports' tracked BPDA followed Defense-GAN's search (empty when none ran it)."""
    tracked = [r["meta"]["attack_params"] for r in reports
               if "PGD + BPDA (tracked)" in r["meta"]["settings"]["adaptive"]]
    if not tracked:
        return ""
    kinds = sorted({f"{p['bpda_track_steps']} steps from the previous step's "
                    + ("codes of every restart" if p["bpda_track_every_restart"] else "closest code") for p in tracked})
    return f"; BPDA (tracked): Defense-GAN's search continued {' or '.join(kinds)}, the final check by the full search"


def adaptive_cell(value: float, n: int, usual: int) -> str:
    """One adaptive cell: the accuracy, its n when not the row's, its interval when n is small."""
    text = f"{value:.2f}"
    notes = [] if n == usual else [f"n = {n:,}"]
    if n < ADAPTIVE_IMAGES:
        low, high = percent_interval(value, n)
        notes.append(f"95% {low:.1f}-{high:.1f}")
    return text + (f" ({'; '.join(notes)})" if notes else "")


def adaptive_table(reports: list[dict], weights: dict[tuple[str, str], str | None]) -> str:
    """One table from several adaptive-attack reports (rows: classifier and defense; columns:
    attacks), keeping only defenses measured on Table 2's weights.

    Cells measured on another number of images than the row's most common one say their n, and
    cells on fewer than ``ADAPTIVE_IMAGES`` (the issue's 1,000) their 95% Wilson interval. An
    attack that two reports ran on one row is taken from the report on more images.
    """
    cells: dict[tuple[str, str], dict[str, tuple[float, int]]] = {}
    hits: dict[tuple[str, str], dict[str, list[bool]]] = {}
    for report in reports:
        same = _matches(report, weights)
        for name, result in report["classifiers"].items():
            for label, row in result["adaptive"].items():
                if not same.get(label):
                    continue
                n, per_image = result["adaptive_n"], result.get("per_image", {})
                known = cells.setdefault((name, label), {})
                # two reports with one attack (a CPU run and a device run): the one on more images
                for attack in [a for a in row if a not in known or known[a][1] < n]:
                    known[attack] = (row[attack], n)
                    hits.setdefault((name, label), {}).pop(attack, None)
                    if f"{label}/{attack}" in per_image:
                        hits[name, label][attack] = unpack_hits(per_image[f"{label}/{attack}"])
    attacks = [a for a in ADAPTIVE_ATTACKS if any(a in row for row in cells.values())]
    worst = {key: worst_case(row) for key, row in hits.items() if len(row) > 1}
    columns = attacks + ([WORST_CASE] if worst else [])
    lines = ["| Classifier | Defense | n | " + " | ".join(columns) + " |", "|---|---|---|" + "---|" * len(columns)]
    order = defense_columns(list(dict.fromkeys(label for _, label in cells)))
    for (name, label), row in sorted(cells.items(), key=lambda item: (item[0][0], order.index(item[0][1]))):
        sizes = [n for _, n in row.values()]
        usual = max(set(sizes), key=lambda n: (sizes.count(n), n))  # a tie: the larger n
        values = ["-" if a not in row else adaptive_cell(*row[a], usual) for a in attacks]
        if worst:
            values.append(adaptive_cell(*worst[name, label], usual) if (name, label) in worst else "-")
        lines.append(f"| {name} | {DEFENSE_NAMES.get(label, label)} | {usual:,} | {' | '.join(values)} |")
    return "\n".join(lines)


#: The adaptive tables' column of the per-image worst case over the row's attacks.
WORST_CASE = "worst case per image"


def worst_case(hits: dict[str, list[bool]]) -> tuple[float, int]:
    """``(accuracy in %, n)``: the images that every attack left right, over the first ``n``
    images that all of them ran on (every run takes the first n test images)."""
    n = min(len(bits) for bits in hits.values())
    kept = sum(all(bits[i] for bits in hits.values()) for i in range(n))
    return 100.0 * kept / n, n


def merge_reports(reports: list[dict], table: str) -> dict:
    """One report from several, each on some classifiers and defenses.

    A defense must have the same weights in every report, and the cells two reports share
    (clean and undefended accuracy on the same classifier and images) must agree. A report on
    fewer images than the largest for a classifier (a defense too slow for the whole test set)
    adds only its defenses' cells, with their ``n`` in ``subset`` so that the table can mark
    them.
    """
    weights: dict[tuple[str, str], str | None] = {}
    classifiers: dict[str, dict] = {}
    sources: dict[str, dict] = {}
    largest: dict[str, int] = {}
    regenerated: list[str] = []
    for report in reports:
        for name, result in report["classifiers"].items():
            largest[name] = max(largest.get(name, 0), result["n"])
    if len({report["meta"]["settings"]["sigma_eps"] for report in reports}) > 1:
        raise SystemExit(f"{table} reports at different sigma_eps in {RESULTS}: one table has one purifier setting")
    for report in sorted(reports, key=lambda r: -max(result["n"] for result in r["classifiers"].values())):
        for key, fp in _weights(report).items():
            if weights.setdefault(key, fp) != fp:
                raise SystemExit(f"{table} reports with different {key[0]!r} weights in {RESULTS}: rerun them on one")
        for label, source in report["meta"]["defense_sources"].items():
            merged_source = sources.setdefault(label, {**source, "classifier_fingerprints": {}})
            merged_source["classifier_fingerprints"].update(source.get("classifier_fingerprints", {}))
        for name, result in report["classifiers"].items():
            merged = classifiers.setdefault(name, {**result, "clean_through": {}, "gray_box": {}, "adaptive": {},
                                                   "subset": {}, "device": report["meta"]["device"]})
            if result["n"] < largest[name]:
                for label in result["clean_through"]:
                    if label in merged["clean_through"]:
                        raise SystemExit(f"{table} reports measure {name}/{label} twice (one on {result['n']} "
                                         "images): keep one")
                    merged["subset"][label] = result["n"]
                merged["clean_through"].update(result["clean_through"])
                for attack, cell in result["gray_box"].items():
                    if attack not in merged["gray_box"]:
                        raise SystemExit(f"{table}: {name}/{attack} is only in a report on {result['n']} images")
                    merged["gray_box"][attack].update({k: v for k, v in cell.items() if k != "no_defense"})
                continue
            if (merged["n"], merged["clean_accuracy"]) != (result["n"], result["clean_accuracy"]):
                raise SystemExit(f"{table} reports disagree on classifier {name}'s clean accuracy or n: rerun them")
            merged["clean_through"].update(result["clean_through"])
            for attack, cell in result["gray_box"].items():
                row = merged["gray_box"].setdefault(attack, {"no_defense": cell["no_defense"]})
                if row["no_defense"] != cell["no_defense"]:
                    # Examples regenerated on other hardware may differ by floating-point rounding: a few
                    # images are tolerated (regeneration_tolerance) and said under the table; more means
                    # other examples.
                    allowed = regeneration_tolerance(merged["device"], report["meta"]["device"], result["n"])
                    if abs(row["no_defense"] - cell["no_defense"]) > 100 * allowed / result["n"] + 1e-9:
                        raise SystemExit(f"{table} reports disagree on {name}/{attack} without defense: not the same examples")
                    report_name = report["meta"]["command"].split("--name ")[-1].split()[0]
                    regenerated.append(f"{name}/{attack} without defense reads {cell['no_defense']:.2f} in "
                                       f"`{report_name}` ({report['meta']['device']}) against {row['no_defense']:.2f} "
                                       "in the table")
                row.update({k: v for k, v in cell.items() if k != "no_defense"})
    meta = {**reports[0]["meta"], "defenses": defense_columns(list(sources)), "defense_sources": sources}
    return {"classifiers": classifiers, "meta": meta, "regenerated": regenerated}


def regeneration_tolerance(device: str, other: str, n: int) -> int:
    """Images by which two reports' undefended cells may differ when each generated its own
    examples: one between CPUs; 0.05% of the ``n`` images when a GPU made either set (its
    convolutions round otherwise, and iFGSM's ten steps carry a flipped sign further)."""
    return 1 if device.startswith("cpu") and other.startswith("cpu") else max(1, n // 2000)


def subset_intervals(merged: dict) -> str:
    """A sentence giving the 95% intervals of the cells measured on fewer images (empty if none)."""
    parts = []
    for name, result in merged["classifiers"].items():
        for label, n in result.get("subset", {}).items():
            cells = [("no attack", result["clean_through"][label])]
            cells += [(attack, row[label]) for attack, row in result["gray_box"].items() if label in row]
            spans = ", ".join(f"{attack} {low:.1f}-{high:.1f}"
                              for attack, value in cells for low, high in [percent_interval(value, n)])
            parts.append(f"{name} / {DEFENSE_NAMES.get(label, label)} (first {n:,} test images): {spans}")
    if not parts:
        return ""
    return ("Cells marked *n = ...* are measured on the first n test images only; their 95% Wilson intervals: "
            + "; ".join(parts) + ".")


def bundled_fingerprint(name: str) -> str | None:
    """Fingerprint of the PuVAE weights bundled in ``hub/NAME`` (None when the checkout has none)."""
    folder = ROOT / "hub" / name
    if not (folder / WEIGHTS_NAME).is_file():
        return None
    return weights_fingerprint(PuVAE.from_pretrained(folder))


def headline(dataset: str) -> str:
    """The paper's table for ``dataset`` (Table 2 or 3) with the adaptive attacks and AutoAttack on its weights.

    The table merges every ``table<N>*.json`` report (each on some classifiers and defenses, run
    separately to fit the CPU's time); a defense must have the same weights in all of them.
    """
    prose, number = PAPER_DATASETS[dataset]
    table, pattern = f"Table {number}", f"table{number}*.json"
    reports = _results(pattern)
    for report in reports:
        if report["meta"]["settings"]["dataset"] != dataset:
            raise SystemExit(f"a {pattern} report in {RESULTS} is on {report['meta']['settings']['dataset']!r}, "
                             f"not {dataset!r}: rename it")
    if not reports:
        return f"_Not evaluated yet: no `{pattern}` report in docs/results; docs/evaluation.md says how to make them._"
    merged = merge_reports(reports, table)
    sizes = {result["n"] for result in merged["classifiers"].values()}
    runs = "; ".join(f"`{r['meta']['command']}` ({r['meta']['device']}, {run_time(r['meta'])})"
                     for r in reports)
    lines = [
        f"{table} of the paper on the {prose} test set (n = {', '.join(f'{n:,}' for n in sorted(sizes))}) with the "
        f"models each command names (the bundled ones unless a folder is given): {runs}. Cells read *ours (paper, difference)*; each classifier's first row is its clean accuracy "
        "behind each defense, which the paper does not report.",
        "",
        results_markdown(merged).strip(),
    ]
    if intervals := subset_intervals(merged):
        lines += ["", intervals]
    if merged["regenerated"]:
        lines += ["", "Undefended cells that differ by a few images between reports: " + "; ".join(merged["regenerated"])
                  + ". Their adversarial examples were generated again on other hardware, whose floating-point rounding "
                  "changes a few images (one between CPUs, at most 0.05% with a GPU); each defense's cell is on its own "
                  "report's examples."]
    # Only defenses measured on the same weights as in the table belong in its tables.
    weights = _weights(merged)
    measured, bundled = weights.get(("puvae", "purifier")), bundled_fingerprint(f"puvae-{dataset}")
    if measured is not None and bundled is not None and measured != bundled:
        lines[1:1] = ["", f"**Measured on earlier `puvae-{dataset}` weights** (fingerprint `{measured[:12]}`) than the "
                      f"bundled ones (`{bundled[:12]}`): the PuVAE cells here and the attacks below describe the "
                      "previous model until these reports are run again (docs/evaluation.md has the commands)."]
    adaptive = [r for r in _results("adaptive*.json")
                if r["meta"]["settings"]["dataset"] == dataset and any(_matches(r, weights).values())]
    if not adaptive:
        old = " and the 0.1.0 purifier's results are kept in `docs/results/0.1.0/`" if dataset == "mnist" else ""
        lines += ["", "Adaptive white-box attacks (PGD through the purifier, BPDA, EOT, PGD on the purifier's "
                  f"distances) have not been run on this purifier yet; the commands are in docs/evaluation.md{old}."]
    else:
        params = adaptive[0]["meta"]["attack_params"]
        runs = "; ".join(f"`{r['meta']['command']}` ({r['meta']['device']}, {run_time(r['meta'])})" for r in adaptive)
        lines += [
            "",
            f"Adaptive white-box attacks on the whole `PurifiedClassifier` (untargeted PGD, eps {params['eps']}, "
            f"{params['pgd_steps']} steps of {params['pgd_step']}, random start; EOT over {params['eot_samples']} noise "
            f"draws per step{tracked_note(adaptive)}), robust accuracy on the first n test images: {runs}. "
            "The paper reports none of these; a dash is a cell we did not run.",
            "",
            adaptive_table(adaptive, weights),
        ]
    for aa in _results(f"autoattack_{dataset}_*.json"):
        if aa.get("purifier_fingerprint") != weights.get(("puvae", "purifier")):
            continue
        s_low, s_high = aa["square_alone_wilson95"]
        # PuVAE's own results, or PuVAE behind another defense (its own column in the table above).
        target = ("" if "input_transform" not in aa else
                  f"on PuVAE + bit squeezing, `{aa['input_transform']}` in front with its rounding passed straight through ")
        square = (f"Square alone {target}(gradient-free, {aa['square_queries']:,} queries, torchattacks {aa['torchattacks']}; "
                  f"sigma_eps 0), classifier {aa['classifier']}, first {aa['square_alone_images']} test images: "
                  f"**{aa['square_alone_percent']:.1f}%** robust accuracy (95% interval {s_low:.1f}-{s_high:.1f}). "
                  f"`{aa['command']}` ({aa['wall_seconds'] / 60:.0f} min).")
        if aa["autoattack_percent"] is None:
            lines += ["", square + " The full AutoAttack suite has not been run on this purifier yet."]
            continue
        low, high = aa["autoattack_wilson95"]
        lines += ["", f"AutoAttack {target}(RobustBench's standard suite from torchattacks {aa['torchattacks']}: APGD-CE, APGD-T, "
                  f"FAB-T with {aa['steps']} iterations and {aa['gradients']} gradients, then Square with "
                  f"{aa['square_queries']:,} queries; sigma_eps 0), classifier {aa['classifier']}, first {aa['images']} test "
                  f"images: **{aa['autoattack_percent']:.1f}%** robust accuracy (95% interval {low:.1f}-{high:.1f}; "
                  + ", ".join(f"{k} {v:.1f}" for k, v in aa["robust_accuracy_percent"].items()) + "). "
                  f"Square alone (gradient-free), first {aa['square_alone_images']} images: "
                  f"{aa['square_alone_percent']:.1f}% ({s_low:.1f}-{s_high:.1f}). `{aa['command']}` "
                  f"({aa['wall_seconds'] / 60:.0f} min)."]
    return "\n".join(lines)


def summary(dataset: str = "mnist") -> str:
    """README's one headline table: PuVAE's column of the paper's table beside the paper's, its clean
    accuracy, and the strongest adaptive attack measured on the same weights."""
    prose, number = PAPER_DATASETS[dataset]
    reports = _results(f"table{number}*.json")
    if not reports:
        return f"_Not evaluated yet: no `table{number}*.json` report in docs/results._"
    merged = merge_reports(reports, f"Table {number}")
    weights = _weights(merged)
    names = sorted(merged["classifiers"])
    adaptive: dict[str, tuple[float, int]] = {}
    for report in _results("adaptive*.json"):
        if report["meta"]["settings"]["dataset"] != dataset or not _matches(report, weights).get("puvae"):
            continue
        for name, result in report["classifiers"].items():
            if "PGD on the distances" in result.get("adaptive", {}).get("puvae", {}):
                adaptive[name] = (result["adaptive"]["puvae"]["PGD on the distances"], result["adaptive_n"])
    lines = ["| " + prose + " test set | " + " | ".join(f"{n}: PuVAE | {n}: paper" for n in names) + " |",
             "|---|" + "---|---|" * len(names)]
    cells = [f"{merged['classifiers'][n]['clean_through']['puvae']:.2f} | -" for n in names]
    lines.append("| clean (undefended: " + ", ".join(f"{n} {merged['classifiers'][n]['clean_accuracy']:.2f}" for n in names)
                 + ") | " + " | ".join(cells) + " |")
    for attack in PAPER_ATTACKS:
        cells = [f"{merged['classifiers'][n]['gray_box'][attack]['puvae']:.2f} | {PAPER_TABLES[dataset][(n, attack)]['puvae']:.2f}"
                 for n in names]
        lines.append(f"| gray-box {attack} | " + " | ".join(cells) + " |")
    if adaptive:
        cells = [f"{adaptive[n][0]:.2f} (first {adaptive[n][1]:,}) | -" if n in adaptive else "- | -" for n in names]
        lines.append("| adaptive: PGD on PuVAE's distances | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def inference_noise(dataset: str) -> str:
    """PuVAE's Table 2/3 cells at the paper's sampling noise beside those at another ``sigma_eps``.

    Reads the ``sigma<value>_<dataset>_*.json`` reports (``evaluate --sigma-eps``, the same
    cached attacks as the paper's table), each compared with the paper-table report on the same
    classifier and purifier weights.
    """
    prose, number = PAPER_DATASETS[dataset]
    reports = [r for r in _results(f"sigma*_{dataset}_*.json") if r["meta"]["settings"]["dataset"] == dataset]
    if not reports:
        return f"_No `sigma*_{dataset}_*.json` report in docs/results yet._"
    paper_table = merge_reports(_results(f"table{number}*.json"), f"Table {number}")  # one sigma_eps, or it refuses
    paper_sigma = paper_table["meta"]["settings"]["sigma_eps"]
    lines = [f"PuVAE on the {prose} test set at the paper's sampling noise (sigma_eps {paper_sigma}, "
             f"the Table {number} cells above) and at the one chosen on validation, the same adversarial examples "
             "(cached), cells *ours (paper's PuVAE)*: "
             + "; ".join(f"`{r['meta']['command']}` ({r['meta']['device']}, {run_time(r['meta'])})"
                         for r in reports) + ".", "",
             "| Classifier | sigma_eps | no attack | " + " | ".join(PAPER_ATTACKS) + " |",
             "|---|---|---|" + "---|" * len(PAPER_ATTACKS)]
    paper_weights = _weights(paper_table).get(("puvae", "purifier"))
    for report in reports:
        if _weights(report).get(("puvae", "purifier")) != paper_weights:
            raise SystemExit(f"{report['meta']['command']!r} is on other puvae-{dataset} weights than Table {number}: "
                             "rerun one of them")
        for name, result in report["classifiers"].items():
            for sigma, source in ((paper_sigma, paper_table["classifiers"][name]),
                                  (report["meta"]["settings"]["sigma_eps"], result)):
                cells = [f"{source['clean_through']['puvae']:.2f}"] + [
                    f"{source['gray_box'][a]['puvae']:.2f} ({PAPER_TABLES[dataset][(name, a)]['puvae']:.2f})"
                    for a in PAPER_ATTACKS]
                lines.append(f"| {name} | {sigma} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def speed() -> str:
    bench = _load("benchmark_projection_cpu.json")
    if bench is None:
        return "_Run `python benchmarks/projection.py`._"
    lines = [
        f"`{bench['command']}` on {bench['device']} ({bench['threads']} threads, torch {bench['torch']}; "
        f"measured fp32 matrix-multiply rate {bench['fp32_matmul_gflops_2048']:.0f} GFLOP/s), paper-size PuVAE, "
        "batches of 128 random images, median of interleaved repeats:",
        "",
        "| image | batched projection | naive per-class loop | speed-up | GFLOP/s (share of matmul rate) | PurifiedClassifier end to end |",
        "|---|---|---|---|---|---|",
    ]
    for case in bench["cases"]:
        med = case["median_ms"]
        lines.append(
            f"| {'x'.join(map(str, case['image_shape']))} | {med['batched']:.0f} ms | {med['per_class_loop']:.0f} ms | "
            f"{case['speedup_batched_vs_loop']:.1f}x | {case['achieved_gflops']['batched']:.0f} "
            f"({100 * case['batched_fraction_of_matmul_rate']:.0f}%) | {case['purified_classifier_images_per_second']:.0f} images/s "
            f"(classifier {case['end_to_end_classifier']}) |"
        )
    defenses = _load("benchmark_defenses_cpu.json")
    if defenses is not None and defenses["table5_seconds"].get("defense_gan_L200_R20") is not None:
        timed = defenses.get("defense_gan_timed_images", defenses["batch"])
        scaled = "" if timed == defenses["batch"] else f" (timed on {timed}, scaled)"
        lines += ["", f"Defense-GAN's search with the bundled `{defenses['weights']['defense_gan']}` (L = 200, R = 20, "
                  f"the paper's setting) takes {defenses['table5_seconds']['defense_gan_L200_R20']:.0f} s for "
                  f"{defenses['batch']} MNIST images{scaled} on this CPU, {defenses['ratio_defense_gan_over_puvae']:.0f}x "
                  f"PuVAE's {defenses['table5_seconds']['puvae']:.2f} s in the same run "
                  f"(the paper: {defenses['paper_table5']['ratio']:.0f}x on a TITAN V); [Table 5 in docs/baselines.md]"
                  "(baselines.md#cost-table-5-and-accuracy-within-a-time-budget-table-6-figure-5) has the command."]
    return "\n".join(lines + ["", gpu_speed()])


def gpu_speed() -> str:
    """The same benchmark on a GPU, with its TF32, bf16 and selection-backend rows, when one was lent."""
    bench = _load("benchmark_projection_cuda.json")
    if bench is None:
        return ("No GPU timing yet: `scripts/device_session.sh` (stage `bench`) records one when a GPU is lent.")
    backend = bench.get("selection_backend", "not recorded")
    lines = [
        f"On a GPU, `{bench['command']}` (`scripts/device_session.sh`, stage `bench`) on {bench['device']} (torch "
        f"{bench['torch']}; measured fp32 matrix-multiply rate {bench['fp32_matmul_gflops_2048'] / 1000:.1f} TFLOP/s; "
        f"`PUVAE_DEFENSE_KERNEL` {backend}), milliseconds per batch of 128, median of interleaved repeats:",
        "",
        "| image | batched projection (fp32) | naive per-class loop | speed-up | batched, TF32 | batched, bf16 autocast "
        "| selection in torch | selection in Triton | PurifiedClassifier end to end |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for case in bench["cases"]:
        med = case["median_ms"]
        ms = [f"{med[key]:.2f}" if key in med else "-" for key in  # a row the run did not time: a dash
              ("batched", "per_class_loop", "batched_tf32", "batched_bf16_autocast", "batched_torch_select",
               "batched_triton_select")]
        cells = [*ms[:2], f"{case['speedup_batched_vs_loop']:.1f}x", *ms[2:],
                 f"{med['purified_classifier_end_to_end']:.2f} ({case['purified_classifier_images_per_second']:,.0f} "
                 f"images/s, classifier {case['end_to_end_classifier']})"]
        lines.append(f"| {'x'.join(map(str, case['image_shape']))} | " + " | ".join(cells) + " |")
    if "selection_backend" not in bench:  # the first GPU run, 2026-12-04, before the field existed
        lines += ["", "That run predates recording `PUVAE_DEFENSE_KERNEL`; its session log shows `torch`: two CUDA tests "
                  "had failed (both test bugs, fixed since), and `scripts/device_session.sh` then keeps the other "
                  "stages on the torch selection. So its batched and end-to-end rows are the torch path, and the "
                  "Triton kernel's time is not measured yet (its CUDA equivalence tests passed on that machine)."]
    mnist = next(case for case in bench["cases"] if case["image_shape"] == [1, 28, 28])
    lines += ["", f"The paper's PuVAE took 0.114 s per 128 images on a TITAN V; this batched projection takes "
              f"{mnist['median_ms']['batched'] / 1000:.4f} s on the {bench['device']} (other hardware, fp32)."]
    return "\n".join(lines)


def deployment() -> str:
    bench = _load("benchmark_deploy_cpu.json")
    if bench is None:
        return "_Run `python benchmarks/deploy.py`._"
    med, up = bench["median_ms"], bench["speedup_vs_eager_fp32"]
    names = {"eager_fp32": "eager float32 (reference)", "bf16_module": "`purifier.to(torch.bfloat16)`",
             "bf16_autocast": "`torch.autocast(\"cpu\", dtype=torch.bfloat16)`",
             "compiled_fp32": "`torch.compile` (inductor), float32",
             "eager_fp32_sigma0": "eager float32, sigma_eps 0", "onnxruntime_fp32_sigma0": "ONNX in onnxruntime, sigma_eps 0"}
    flags = ", ".join(bench["cpu_flags"]) or "none reported"
    lines = [
        f"`{bench['command']}` ({bench['threads']} threads, torch {bench['torch']}; CPU flags of interest: {flags}), "
        f"puvae-mnist on {bench['batch']} MNIST test images, median of {bench['repeats']} interleaved repeats:",
        "",
        "| path | ms per batch | speed vs eager float32 |",
        "|---|---|---|",
    ]
    lines += [f"| {names.get(k, k)} | {v:.0f} | {up[k]:.2f}x |" for k, v in med.items()]
    agree, onnx, purify = bench["bf16_agreement"], bench["onnx_vs_torch"], bench["purify_dataset"]
    same = agree["same_class_as_fp32_percent"]
    acc = agree["classifier_A_accuracy_percent"]
    lines += [
        "",
        f"`torch.compile` took {bench['compile_seconds']:.0f} s to compile. On the first {agree['images']:,} test images "
        f"(sigma_eps 0), bfloat16 picks float32's class for {same['bf16_module']:.2f}% (module cast) and "
        f"{same['bf16_autocast']:.2f}% (autocast); classifier A behind the purifier: {acc['fp32']:.2f}% (float32), "
        f"{acc['bf16_module']:.2f}% and {acc['bf16_autocast']:.2f}% (bfloat16). Distances are accumulated in float32.",
    ]
    if "decision_agreement" in onnx:
        lines.append(f"The ONNX graph makes torch's decision on {onnx['decision_agreement']:.2f}% of {onnx['images']:,} "
                     f"test images (largest difference of a purified pixel {onnx['max_abs_diff']:.1e}).")
    lines.append(f"`puvae-defense purify` purified {purify['images']:,} test images at {purify['images_per_second']:.0f} "
                 f"images/s (batches of {purify['batch_size']}).")
    if not any("bf16" in f or f.startswith("amx") for f in bench["cpu_flags"]):
        lines.append("The CPU these were measured on has no bfloat16 instructions (its flags are in the results file), so bfloat16 is emulated and much slower than float32 there; "
                     "the bfloat16 paths are for CPUs with AVX512-BF16 or AMX and for GPUs, where we have not measured them.")
    return "\n".join(lines)


def _crosscheck_cell(impls: dict, impl: str) -> str:
    if impl not in impls:
        return "-"
    entry = impls[impl]
    diff = "" if impl == "ours" else f" (diff {entry['max_abs_diff_vs_ours']:.1g})"
    return f"{entry['success_percent']:.1f}%{diff}"


def crosscheck() -> str:
    report = _load("crosscheck_attacks.json")
    if report is None:
        return "_Run `python scripts/crosscheck.py`._"
    lines = [f"`{report['command']}` (torchattacks {report['torchattacks']}, CleverHans {report['cleverhans']}; "
             f"first {report['images']:,} test images; {report['wall_seconds'] / 60:.0f} min). Success: share of images "
             "the undefended classifier misclassifies; difference: largest pixel difference from our images.", "",
             "| Classifier | Attack | ours | torchattacks | CleverHans |", "|---|---|---|---|---|"]
    for name, attacks in report["classifiers"].items():
        for attack, impls in attacks.items():
            # crosscheck_attacks.json of 2026-11-29 called CleverHans' default CW settings "the paper's harness"
            attack = {"CW-L2, 5 x 100 steps (the paper's harness)":
                      "CW-L2, 5 x 100 steps, CleverHans' defaults (c 0.01, lr 0.005)"}.get(attack, attack)
            cells = " | ".join(_crosscheck_cell(impls, impl) for impl in ("ours", "torchattacks", "cleverhans"))
            lines.append(f"| {name} | {attack} | {cells} |")
    return "\n".join(lines)


def _stale(measured_sha256: str | None, command: str) -> str | None:
    """A note when an example's numbers were measured on other ``puvae-mnist`` weights than the bundled ones."""
    if measured_sha256 == hub.get_entry("puvae-mnist").sha256:
        return None
    return (f"_Not yet measured with the current `puvae-mnist` (the last run used other weights): run `{command}`._")


def finetune() -> str:
    command = "python examples/finetune_digits.py --json docs/results/finetune_digits.json"
    report = _load("finetune_digits.json")
    if report is None:
        return f"_Run `{command}`._"
    settings = report["settings"]
    if (note := _stale(settings.get("puvae-mnist sha256"), command)) is not None:
        return note
    if "28x28" not in report:
        return f"_Run `{command}` (the last report predates the 8x8 rows)._"
    lines = [f"`python examples/finetune_digits.py --epochs {settings['epochs']} --json docs/results/finetune_digits.json` "
             f"({settings['threads']} threads; {settings['test images']} test digits; targeted FGSM eps {settings['eps']} made "
             f"on the target classifier; sigma_eps {settings['sigma_eps']}; {settings['epochs']} epochs of 10 steps for every "
             "trained purifier; target classifiers A at 28x28, B at 8x8, never seen by `fit`).", "",
             "| digits | purifier | parameters | training time | clean | targeted FGSM | FGSM / undefended FGSM |",
             "|---|---|---|---|---|---|---|"]
    for side in ("28x28", "8x8"):
        part = report[side]
        undefended = part["undefended target"]
        lines.append(f"| {side} | none (the target alone) | | | {undefended['clean']:.2f}% | {undefended['fgsm']:.2f}% | 1.0x |")
        for name, row in part.items():
            if name in ("source, clean", "undefended target"):
                continue
            label = f"{name} (recipe `{row['recipe']}`)" if "recipe" in row else name
            params = f"{row['parameters'] / 1e6:.1f} M" if "parameters" in row else ""
            time_cell = f"{row['seconds']:.0f} s" if "seconds" in row else "none"
            ratio = f"{row['fgsm'] / undefended['fgsm']:.1f}x" if undefended["fgsm"] else "n/a"
            lines.append(f"| {side} | {label} | {params} | {time_cell} | {row['clean']:.2f}% | {row['fgsm']:.2f}% | {ratio} |")
    return "\n".join(lines)


def torchvision_example() -> str:
    command = "python examples/torchvision_resnet.py --train-images 5000 --json docs/results/torchvision_resnet.json"
    report = _load("torchvision_resnet.json")
    if report is None:
        return f"_Run `{command}`._"
    if (note := _stale(report.get("puvae-mnist sha256"), command)) is not None:
        return note
    return (f"Measured by `python examples/torchvision_resnet.py --train-images {report['train images']} --test-images "
            f"{report['test images']} --json docs/results/torchvision_resnet.json` (ResNet-18 "
            f"from random weights, {report['epochs']} epoch on {report['train images']:,} training images; first "
            f"{report['test images']} test images, targeted FGSM eps {report['eps']} made on the ResNet): clean "
            f"{report['undefended, clean']:.2f}% undefended and {report['behind puvae-mnist, clean']:.2f}% behind "
            f"puvae-mnist; under FGSM {report['undefended, targeted FGSM']:.2f}% undefended and "
            f"{report['behind puvae-mnist, targeted FGSM']:.2f}% behind puvae-mnist.")


def adapt_example() -> str:
    command = ("python examples/torchvision_resnet.py --train-images 3000 --adapt "
               "--json docs/results/torchvision_resnet_adapt.json")
    report = _load("torchvision_resnet_adapt.json")
    if report is None:
        return f"_Run `{command}`._"
    if (note := _stale(report.get("puvae-mnist sha256"), command)) is not None:
        return note
    before, after, diagnosis = report, report["adapted"], report["diagnosis before adapt"]
    lines = [f"`{command}` (ResNet-18 from random weights, {report['epochs']} epoch on {report['train images']:,} "
             f"training images; `diagnose` on 1,000 validation images; `adapt` {report['adapt epochs']} epoch on the "
             f"same {report['train images']:,} training images; first {report['test images']} test images, targeted "
             f"FGSM eps {report['eps']} made on the ResNet being measured). Before adapting, `diagnose` said "
             f"\"{diagnosis['verdict']}\": the purifier cost {diagnosis['drop']:.2f} points while its own class choice "
             f"was right on {diagnosis['projection accuracy']:.2f}% of the images.", "",
             "| ResNet-18 | clean, undefended | clean, behind puvae-mnist | FGSM, undefended | FGSM, behind puvae-mnist |",
             "|---|---|---|---|---|"]
    for name, row in (("as trained", before), ("adapted", after)):
        lines.append(f"| {name} | {row['undefended, clean']:.2f}% | {row['behind puvae-mnist, clean']:.2f}% | "
                     f"{row['undefended, targeted FGSM']:.2f}% | {row['behind puvae-mnist, targeted FGSM']:.2f}% |")
    return "\n".join(lines)


def denoiser_diagnosis(dataset: str = "mnist") -> str:
    options = "" if dataset == "mnist" else f" --dataset {dataset} --sigmas 0.25 0.5"
    command = f"python experiments/denoiser_diagnosis.py{options} --json docs/results/denoiser_diagnosis_{dataset}.json"
    report = _load(f"denoiser_diagnosis_{dataset}.json")
    if report is None:
        return f"_Run `{command}`._"
    lines = [f"`{command}` (first {report['images']:,} validation images, one noise draw each, the held-out selector, "
             f"sigma_eps {report['sigma_eps']}; \"nearest\", \"most likely\" and \"ELBO\" choose the class on the same candidates, "
             "one by RMSE as PuVAE does, one by the likelihood of the clipped Gaussian noise, one by that likelihood minus the "
             "KL of the class's posterior from the prior (the evidence lower bound); the last column, for scale, classifier A "
             "retrained with noise at that sigma, row (e)'s network, on the same noisy images):", "",
             "| sigma | purifier | selector alone | selector through the purifier | the projection's own class | "
             "selector disagrees with it | nearest (RMSE) | most likely | ELBO | A retrained with noise |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for row in report["rows"]:
        projection, retrained = row["projection's class"], row["retrained alone"]
        lines.append(f"| {row['sigma']} | `{row['purifier']}` | {row['selector alone']:.1f}% | "
                     f"{row['selector through the purifier']:.1f}% | {projection:.1f}% | "
                     f"{row['disagreement']:.1f}% | {row['nearest (RMSE)']:.1f}% | {row['most likely']:.1f}% | {row['ELBO']:.1f}% | "
                     f"{'-' if retrained is None else f'{retrained:.1f}%'} |")
    return "\n".join(lines)


#: Certification configurations (docs/smoothing.md), in the order of issue 52's (a)-(e).
CERTIFY_CONFIGS = {"alone": "(a) {clf} smoothed alone", "puvae": "(b) {clf} behind puvae-{dataset}",
                   "smooth": "(c) {clf} behind puvae-{dataset}-smooth", "magnet": "(d) {clf} behind MagNet's reformer",
                   "retrained": "(e) {clf} retrained with noise, alone"}
_CERTIFY_NAME = re.compile(r"(?P<dataset>[a-z-]+)_(?P<clf>[A-Z])_(?P<config>[a-z]+)_sigma(?P<sigma>[0-9.]+)")


def certification_reports(dataset: str = "mnist") -> dict[tuple[float, str, str], dict]:
    """The certification reports of ``dataset`` (docs/results/certify/) by (sigma, classifier, configuration)."""
    found = {}
    for path in sorted((RESULTS / "certify").glob(f"{dataset}_*.json")):
        match = _CERTIFY_NAME.fullmatch(path.stem)
        if match is None or match["config"] not in CERTIFY_CONFIGS:
            raise SystemExit(f"{path.name}: not a certification report name (DATASET_CLASSIFIER_CONFIG_sigmaS)")
        found[(float(match["sigma"]), match["clf"], match["config"])] = json.loads(path.read_text())
    return found


def certification_rows(dataset: str = "mnist") -> list[tuple[str, dict]]:
    """The certification reports of ``dataset``, labelled, ordered by sigma, classifier and configuration."""
    reports = certification_reports(dataset)
    order = sorted(reports, key=lambda key: (key[0], key[1], list(CERTIFY_CONFIGS).index(key[2])))
    return [(CERTIFY_CONFIGS[config].format(clf=clf, dataset=dataset), reports[(sigma, clf, config)])
            for sigma, clf, config in order]


def _first(report: dict, n: int) -> dict:
    """The report cut to its first ``n`` images, its accuracies recomputed from the per-image results."""
    import torch

    from puvae_defense.certification import summarize
    from puvae_defense.smoothing import Certificate

    images = {key: values[:n] for key, values in report["images"].items()}
    certificate = Certificate(torch.tensor(images["certified"]), torch.tensor(images["radii"], dtype=torch.float64))
    settings = {**report["meta"]["settings"], "limit": n}
    return {**report, "meta": {**report["meta"], "settings": settings}, "images": images,
            "certified_accuracy": summarize(certificate, torch.tensor(images["labels"]))}


def certification(dataset: str = "mnist", *, radii: tuple[float, ...] | None = None, sigma: float | None = None,
                  common: bool = False, classifier: str | None = None) -> str:
    """Certified accuracy per configuration, with the commands and hardware; ``sigma`` keeps one noise
    level, ``classifier`` one classifier; ``common`` cuts every row to the images all of them certified
    (the same images in every row)."""
    from puvae_defense.certification import REPORT_RADII, certification_markdown

    rows = [(label, report) for label, report in certification_rows(dataset)
            if (sigma is None or report["meta"]["settings"]["sigma"] == sigma)
            and (classifier is None or label.split()[1] == classifier)]
    if not rows:
        return f"No certification has been run yet (`DATASET={dataset} scripts/smoothing.sh certify`)."
    shared = min(len(report["images"]["radii"]) for _, report in rows)
    if common:
        rows = [(label, _first(report, shared)) for label, report in rows]
    settings = {(r["meta"]["settings"]["n"], r["meta"]["settings"]["n0"], r["meta"]["settings"]["alpha"]) for _, r in rows}
    n, n0, alpha = sorted(settings)[0]
    runs = "; ".join(f"`{r['meta']['command']}` ({', '.join(r['meta']['devices'])}, {r['meta']['seconds'] / 60:.0f} min)"
                     for _, r in rows)
    where = f"the same first {shared} test images in every row" if common else "the first test images"
    intro = (f"Certified accuracy (%) on {where}: the share certified with the right class at an L2 "
             f"radius of at least r (n = {n:,}, n0 = {n0}, alpha = {alpha}; a dash is a radius that n cannot certify). "
             f"Commands: {runs}.")
    if len(settings) > 1:
        intro += " Rows differ in n, n0 or alpha: " + ", ".join(f"{a:,}/{b}/{c}" for a, b, c in sorted(settings)) + "."
    return intro + "\n\n" + certification_markdown(rows, radii or REPORT_RADII)


#: The comparisons of issue 52's targets: the denoiser (c) against the noise-retrained anchor (e) and
#: against the classifier smoothed alone (a).
PAIRED = (("smooth", "retrained"), ("smooth", "alone"))
#: The sigmas of issue 52's targets.
TARGET_SIGMAS = (0.25, 0.5)


def certification_paired(dataset: str = "mnist", radii: tuple[float, ...] = (0.0, 0.25, 0.5, 0.75, 1.0)) -> str:
    """The targets' comparisons image by image (puvae_defense.certification.compare_reports): per
    sigma and classifier, the difference in points and the sign test on the images one row certifies
    and the other does not."""
    from puvae_defense.certification import compare_reports, sign_test

    reports = certification_reports(dataset)
    lines = ["| sigma | classifier | comparison | images | " + " | ".join(f"r = {r:g}" for r in radii) + " |",
             "|" + "---|" * (len(radii) + 4)]
    sums: dict[tuple[str, str, str, float], list[int]] = {}
    for sigma, clf in sorted({(sigma, clf) for sigma, clf, _ in reports}):
        for ours, other in PAIRED:
            if (sigma, clf, ours) not in reports or (sigma, clf, other) not in reports:
                continue
            found = {c.radius: c for c in compare_reports(reports[(sigma, clf, ours)], reports[(sigma, clf, other)], radii)}
            cells = [f"{found[r].first - found[r].second:+.0f} ({found[r].only_first}:{found[r].only_second}, "
                     f"p {found[r].p_value:.2g})" if r in found else "-" for r in radii]
            images = next(iter(found.values())).images
            lines.append(f"| {sigma:g} | {clf} | {CERTIFY_CONFIGS[ours][:3]} - {CERTIFY_CONFIGS[other][:3]} | {images} | "
                         + " | ".join(cells) + " |")
            for radius, comparison in found.items():
                if sigma in TARGET_SIGMAS:
                    total = sums.setdefault((clf, ours, other, radius), [0, 0])
                    total[0] += comparison.only_first
                    total[1] += comparison.only_second
    if len(lines) == 2:
        return "No pair of rows to compare has been certified yet."
    for clf, ours, other in sorted({key[:3] for key in sums}, key=lambda k: (k[0], PAIRED.index(k[1:]))):
        split = [sums.get((clf, ours, other, r)) for r in radii]
        cells = [f"({a}:{b}, p {sign_test(a, b):.2g})" if (a, b) != (None, None) else "-"
                 for a, b in (pair or (None, None) for pair in split)]
        lines.append(f"| {' + '.join(f'{s:g}' for s in TARGET_SIGMAS)} | {clf} | "
                     f"{CERTIFY_CONFIGS[ours][:3]} - {CERTIFY_CONFIGS[other][:3]} | summed | " + " | ".join(cells) + " |")
    intro = ("Each cell: the denoiser's row (c) minus the other row in points of certified accuracy on the images "
             "both certified, then the images only (c) certifies right at that radius : those only the other does, "
             "and the exact two-sided sign test on them (the chance of a split at least this uneven if neither "
             "row were better). With this many cells, a p below 0.05 somewhere is expected by chance alone. "
             "The last rows sum the splits over the targets' sigmas (" + " and ".join(f"{s:g}" for s in TARGET_SIGMAS)
             + "; the same images at both, so the summed test is a rough guide, not an exact one).")
    return intro + "\n\n" + "\n".join(lines) + "\n"


def certification_figure(dataset: str = "mnist") -> Path | None:
    """docs/certified_<dataset>.png, one curve per configuration (None when nothing is certified)."""
    from puvae_defense.visualize import certified_figure

    rows = certification_rows(dataset)
    if not rows:
        return None
    # one colour per configuration (a)-(e), one line style per classifier
    colours = ("tab:gray", "tab:orange", "tab:blue", "tab:green", "tab:red")
    styles = {label.format(clf=clf, dataset=dataset): {"color": colour, "linestyle": "-" if clf == "A" else "--"}
              for label, colour in zip(CERTIFY_CONFIGS.values(), colours, strict=True) for clf in "AB"}
    return certified_figure(rows, ROOT / "docs" / f"certified_{dataset}.png", styles=styles,
                            title=f"{PAPER_DATASETS[dataset][0]}: randomized smoothing, first test images")


def _replace(path: Path, name: str, body: str) -> None:
    text = path.read_text()
    pattern = re.compile(rf"(<!-- generated:{name} -->\n)(?:.*?\n)?(<!-- /generated:{name} -->)", re.S)
    if not pattern.search(text):
        raise SystemExit(f"{path} has no generated section {name!r}")
    path.write_text(pattern.sub(lambda m: m.group(1) + body.rstrip("\n") + "\n" + m.group(2), text))


def table_puvae_fingerprint(dataset: str) -> str | None:
    """Fingerprint of the PuVAE weights the paper's table for ``dataset`` was measured with, the
    reference the other reports are checked against (None before any table report exists)."""
    number = PAPER_DATASETS[dataset][1]
    reports = _results(f"table{number}*.json")
    return _weights(merge_reports(reports, f"Table {number}")).get(("puvae", "purifier")) if reports else None


def defenses_speed() -> str:
    """Table 5 (and Table 6 / Figure 5 when measured) from benchmarks/defenses.py: the CPU's run,
    then a GPU's when one was lent."""
    blocks = [defenses_block(bench, where) for name, where in (("benchmark_defenses_cpu.json", "CPU"),
                                                               ("benchmark_defenses_cuda.json", "GPU"))
              if (bench := _load(name)) is not None]
    return "\n\n".join(blocks) if blocks else "_Run `python benchmarks/defenses.py`._"


def defenses_block(bench: dict, where: str) -> str:
    """One benchmarks/defenses.py report; ``where``: "CPU" or "GPU"."""
    t5 = bench["table5_seconds"]
    paper = bench["paper_table5"]
    weights = bench["weights"]
    repeats = bench.get("defense_gan_repeats", 1)
    tf32 = bench.get("tf32")
    puvae_weights = ("untrained, the same size: timing only" if weights["puvae"] == "untrained" else f"`{weights['puvae']}`")
    arithmetic = "" if tf32 is None else (f"; TF32 {'on' if tf32['matmul'] else 'off'} for matrix multiplies and "
                                          f"{'on' if tf32['cudnn'] else 'off'} for cuDNN convolutions, torch's defaults")
    lines = [
        f"`{bench['command']}` ({bench['device']}, {bench['threads']} threads, torch {bench['torch']}{arithmetic}), "
        f"seconds to purify the same {bench['batch']} MNIST test images, median of repeats (Defense-GAN "
        + ("once per setting):" if repeats == 1 else f"{repeats} times per setting):"),
        "",
        f"| purifier | seconds (ours, {where}) | paper (TITAN V) |",
        "|---|---|---|",
        f"| PuVAE ({puvae_weights}) | {t5['puvae']:.3f} | {paper['puvae']:.2f} |",
        f"| MagNet (`{weights['magnet']}`) | {t5['magnet']:.4f} | - |",
    ]
    timed = bench.get("defense_gan_timed_images", bench["batch"])
    scaled = "" if timed == bench["batch"] else f" (timed on {timed} images, scaled to {bench['batch']})"
    if t5.get("defense_gan_L200_R20") is not None:
        lines.append(f"| Defense-GAN, L = 200, R = 20 (`{weights['defense_gan']}`){scaled} | "
                     f"{t5['defense_gan_L200_R20']:.3g} | {paper['defense_gan']:.2f} |")
        lines += ["", f"Defense-GAN takes **{bench['ratio_defense_gan_over_puvae']:.0f}x** PuVAE's time here "
                  f"(the paper: {paper['ratio']:.0f}x on a GPU)."]
    grid = ", ".join(f"L x R = {k}: {v:.2f} s" for k, v in bench["defense_gan_grid_seconds"].items())
    chosen = bench["table6_defense_gan"]
    fits = ("none of the grid fits" if chosen is None else
            f"the largest grid setting within it is L = {chosen['steps']}, R = {chosen['restarts']} ({chosen['seconds']:.2f} s)")
    lines += ["", f"Table 6's budget, 8.8x PuVAE's time as in the paper, is {bench['table6_budget_seconds']:.2f} s here; "
              f"{fits}. Defense-GAN grid{scaled}: {grid}."]
    if "table6" in bench:
        t6 = bench["table6"]
        attacks = list(t6["points"][0]["accuracy"])
        lines += ["", f"Accuracy of `{t6['classifier']}` behind each operating point, first {t6['images']} test images"
                  + (":" if bench["weights_fingerprint"]["puvae"] == table_puvae_fingerprint("mnist") else
                     f" (PuVAE's row measured on earlier `{weights['puvae']}` weights than Table 2's; rerun "
                     f"`{bench['command']}`):"),
                  "", "| purifier | seconds | " + " | ".join(attacks) + " |", "|---|---|" + "---|" * len(attacks)]
        lines += [f"| {p['setting']} | {p['seconds']:.3g} | " + " | ".join(f"{p['accuracy'][a]:.1f}" for a in attacks) + " |"
                  for p in t6["points"]]
        lines += [f"| paper, {DEFENSE_NAMES[name]} within 1 s (TITAN V) | - | - | "
                  + " | ".join(f"{paper[a]:.2f}" if a in paper else "-" for a in attacks[1:]) + " |"
                  for name, paper in PAPER_TABLE6.items() if name != "adv-training"]
        if "figure" in bench:
            lines += ["", f"![accuracy against time]({Path(bench['figure']).relative_to('docs')})"]
    else:
        lines += ["", "Table 6 and Figure 5 (accuracy within the budget) need a trained Defense-GAN and have not been "
                  "measured yet." if where == "CPU" else f"Accuracy within this budget was not measured on the {where}."]
    return "\n".join(lines)


def main() -> None:
    tables = {"results": headline("mnist"), "results-fashion-mnist": headline("fashion-mnist")}  # docs/evaluation.md
    _replace(ROOT / "README.md", "models", models_table())
    _replace(ROOT / "README.md", "summary", summary("mnist"))
    _replace(ROOT / "docs" / "benchmarks.md", "speed", speed())
    _replace(ROOT / "docs" / "benchmarks.md", "deploy", deployment())
    _replace(ROOT / "docs" / "usage.md", "torchvision", torchvision_example())
    _replace(ROOT / "docs" / "usage.md", "adapt", adapt_example())
    _replace(ROOT / "docs" / "smoothing.md", "denoiser-diagnosis", denoiser_diagnosis())
    _replace(ROOT / "docs" / "smoothing.md", "denoiser-diagnosis-fashion-mnist", denoiser_diagnosis("fashion-mnist"))
    _replace(ROOT / "docs" / "training.md", "finetune", finetune())
    for section, body in tables.items():
        _replace(ROOT / "docs" / "evaluation.md", section, body)
    _replace(ROOT / "docs" / "evaluation.md", "crosscheck", crosscheck())
    _replace(ROOT / "docs" / "evaluation.md", "inference-noise-fashion-mnist", inference_noise("fashion-mnist"))
    _replace(ROOT / "docs" / "baselines.md", "defenses", defenses_speed())
    _replace(ROOT / "docs" / "smoothing.md", "certified-mnist", certification("mnist"))
    _replace(ROOT / "README.md", "certified", certification("mnist", radii=(0.0, 0.25, 0.5, 0.75, 1.0), sigma=0.5,
                                                            common=True, classifier="A"))
    _replace(ROOT / "docs" / "smoothing.md", "certified-mnist-common", certification("mnist", sigma=0.5, common=True))
    _replace(ROOT / "docs" / "smoothing.md", "certified-fashion-mnist", certification("fashion-mnist"))
    _replace(ROOT / "docs" / "smoothing.md", "certified-paired", certification_paired("mnist"))
    _replace(ROOT / "docs" / "smoothing.md", "certified-paired-fashion-mnist", certification_paired("fashion-mnist"))
    for dataset in ("mnist", "fashion-mnist"):
        certification_figure(dataset)
    print("rendered README.md and docs/{evaluation,training,baselines,smoothing,benchmarks,usage}.md")


if __name__ == "__main__":
    main()
