"""scripts/render_docs.py: the paper's tables merged from several results files, per data set."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from puvae_defense.evaluation import wilson_interval

from conftest import load_script

ROOT = Path(__file__).parent.parent
RESULTS = ROOT / "docs" / "results"


@pytest.fixture
def render(tmp_path, monkeypatch):
    module = load_script("render_docs")
    monkeypatch.setattr(module, "RESULTS", tmp_path)
    return module


def _write(tmp_path: Path, name: str, report: dict) -> None:
    (tmp_path / name).write_text(json.dumps(report))


def _copy(tmp_path: Path, name: str, as_name: str, dataset: str | None = None) -> dict:
    report = json.loads((RESULTS / name).read_text())
    if dataset is not None:
        report["meta"]["settings"]["dataset"] = dataset
    _write(tmp_path, as_name, report)
    return report


def test_each_dataset_gets_its_own_table(render, tmp_path) -> None:
    assert "Not evaluated yet: no `table3*.json` report" in render.headline("fashion-mnist")
    for name in ("table2_mnist_A.json", "table2_magnet_mnist.json"):
        shutil.copy(RESULTS / name, tmp_path / name)
    mnist = render.headline("mnist")
    assert mnist.startswith("Table 2 of the paper on the MNIST test set") and "| MagNet | PuVAE |" in mnist
    assert "Not evaluated yet: no `table3*.json` report" in render.headline("fashion-mnist")
    _copy(tmp_path, "table2_mnist_A.json", "table3_fashion-mnist_A.json", dataset="fashion-mnist")
    fashion = render.headline("fashion-mnist")
    assert fashion.startswith("Table 3 of the paper on the Fashion-MNIST test set") and "MagNet" not in fashion
    assert "(59.18," in fashion  # the paper's Table 3 value beside ours (A, FGSM, PuVAE)


def test_reports_on_the_wrong_dataset_or_disagreeing_are_refused(render, tmp_path) -> None:
    _copy(tmp_path, "table2_mnist_A.json", "table3_wrong.json")
    with pytest.raises(SystemExit, match="on 'mnist', not 'fashion-mnist'"):
        render.headline("fashion-mnist")
    (tmp_path / "table3_wrong.json").unlink()
    shutil.copy(RESULTS / "table2_mnist_A.json", tmp_path / "table2_a.json")
    report = _copy(tmp_path, "table2_magnet_mnist.json", "table2_b.json")
    report["classifiers"]["A"]["gray_box"]["FGSM"]["no_defense"] += 1.0
    _write(tmp_path, "table2_b.json", report)
    with pytest.raises(SystemExit, match="Table 2 reports disagree on A/FGSM"):
        render.headline("mnist")


def test_table6_says_when_its_puvae_row_is_from_other_weights(render, tmp_path) -> None:
    table2 = _copy(tmp_path, "table2_mnist_A.json", "table2_mnist_A.json")
    report = _copy(tmp_path, "benchmark_defenses_cpu.json", "benchmark_defenses_cpu.json")
    report["weights_fingerprint"]["puvae"] = table2["meta"]["defense_sources"]["puvae"]["fingerprint"]
    _write(tmp_path, "benchmark_defenses_cpu.json", report)
    assert "earlier" not in render.defenses_speed()
    report["weights_fingerprint"]["puvae"] = "0" * 64
    _write(tmp_path, "benchmark_defenses_cpu.json", report)
    assert "PuVAE's row measured on earlier `puvae-mnist` weights" in render.defenses_speed()


def test_a_defense_measured_on_fewer_images_is_merged_and_marked(render, tmp_path) -> None:
    shutil.copy(RESULTS / "table2_mnist_A.json", tmp_path / "table2_mnist_A.json")
    first100 = _copy(tmp_path, "defense_gan_L200_R20_mnist_A_first100.json", "table2_defense_gan_mnist_A.json")
    mnist = render.headline("mnist")
    fgsm = next(line for line in mnist.splitlines() if line.startswith("| A | FGSM |"))
    assert "| Defense-GAN | PuVAE |" in mnist
    value = first100['classifiers']['A']['gray_box']['FGSM']['defense-gan']
    low, high = wilson_interval(round(value), 100)
    assert f"{value:.2f} [{low:.1f}-{high:.1f}] (85.29, " in fgsm and ", n = 100 |" in fgsm
    # 43 of 100 under FGSM: Wilson interval 33.7-52.8
    assert "A / Defense-GAN (first 100 test images): no attack 96.3-100.0, FGSM 33.7-52.8" in mnist
    _copy(tmp_path, "defense_gan_L200_R20_mnist_A_first100.json", "table2_defense_gan_again.json")
    with pytest.raises(SystemExit, match="measure A/defense-gan twice"):
        render.headline("mnist")


def test_adaptive_cells_on_few_images_carry_their_interval(render) -> None:
    assert render.adaptive_cell(93.8, 1000, 1000) == "93.80"
    # 23 of 100 under BPDA: Wilson interval 15.8-32.2
    assert render.adaptive_cell(23.0, 100, 100) == "23.00 (95% 15.8-32.2)"
    assert render.adaptive_cell(23.0, 100, 1000) == "23.00 (n = 100; 95% 15.8-32.2)"
    assert render.adaptive_cell(50.0, 2000, 1000) == "50.00 (n = 2,000)"


def _tracked_from(exact: dict, n: int, percent: float) -> dict:
    """A copy of an exact-BPDA report that reads as a tracked-BPDA run on ``n`` images."""
    tracked = json.loads(json.dumps(exact))
    result = tracked["classifiers"]["B"]
    result.pop("per_image", None)
    result["adaptive"] = {"defense-gan": {"PGD + BPDA (tracked)": percent}}
    result["adaptive_n"] = n
    tracked["meta"]["settings"]["adaptive"] = ["PGD + BPDA (tracked)"]
    return tracked


def test_adaptive_table_takes_the_worst_case_per_image_over_its_reports(render) -> None:
    from puvae_defense.evaluation import pack_hits

    exact = json.loads((RESULTS / "adaptive_defense_gan_mnist_B.json").read_text())
    exact["classifiers"]["B"].pop("per_image", None)
    exact["classifiers"]["B"].update(adaptive_n=30, adaptive={"defense-gan": {"PGD + BPDA": 100 * 8 / 30}})
    tracked = _tracked_from(exact, 30, 100 * 10 / 30)
    weights = render._weights(exact)
    assert render.WORST_CASE not in render.adaptive_table([exact, tracked], weights)  # no per-image results: no column
    # 30 images each: exact BPDA leaves images 0-7, tracked images 4-13; both leave 4-7
    exact["classifiers"]["B"]["per_image"] = {"defense-gan/PGD + BPDA": pack_hits([i < 8 for i in range(30)])}
    tracked["classifiers"]["B"]["per_image"] = {
        "defense-gan/PGD + BPDA (tracked)": pack_hits([4 <= i < 14 for i in range(30)])}
    table = render.adaptive_table([exact, tracked], weights)
    assert f"| PGD + BPDA | PGD + BPDA (tracked) | {render.WORST_CASE} |" in table
    assert "| B | Defense-GAN | 30 | 26.67 (95% 14.2-44.4) | 33.33 (95% 19.2-51.2) | 13.33 (95% 5.3-29.7) |" in table
    # runs on different numbers of images: the worst case over the first images all of them ran on
    assert render.worst_case({"a": [i < 8 for i in range(30)], "b": [True] * 20}) == (40.0, 20)


def test_an_attack_in_two_reports_is_taken_from_the_one_on_more_images(render) -> None:
    from puvae_defense.evaluation import pack_hits

    exact = json.loads((RESULTS / "adaptive_defense_gan_mnist_B.json").read_text())
    exact["classifiers"]["B"].update(adaptive_n=30, adaptive={"defense-gan": {"PGD + BPDA": 100 * 8 / 30}},
                                     per_image={"defense-gan/PGD + BPDA": pack_hits([i < 8 for i in range(30)])})
    small = _tracked_from(exact, 30, 100 * 10 / 30)
    small["classifiers"]["B"]["per_image"] = {
        "defense-gan/PGD + BPDA (tracked)": pack_hits([4 <= i < 14 for i in range(30)])}
    large = _tracked_from(exact, 500, 32.0)
    large["classifiers"]["B"]["per_image"] = {
        "defense-gan/PGD + BPDA (tracked)": pack_hits([i % 25 < 8 for i in range(500)])}
    weights = render._weights(exact)
    for order in ([exact, small, large], [exact, large, small]):
        table = render.adaptive_table(order, weights)
        # the tracked cell and its per-image results come from the 500-image run, whatever the order:
        # (a tie in n: the row says the larger); over the first 30 both attacks leave images 0-7
        assert ("| B | Defense-GAN | 500 | 26.67 (n = 30; 95% 14.2-44.4) | 32.00 (95% 28.1-36.2) "
                "| 26.67 (n = 30; 95% 14.2-44.4) |") in table


def test_tables_say_when_the_bundled_puvae_is_newer_than_their_reports(render, tmp_path, monkeypatch) -> None:
    report = _copy(tmp_path, "table3_fashion-mnist_A.json", "table3_fashion-mnist_A.json")
    measured = report["meta"]["defense_sources"]["puvae"]["fingerprint"]
    monkeypatch.setattr(render, "bundled_fingerprint", lambda name: measured if name == "puvae-fashion-mnist" else None)
    assert "earlier" not in render.headline("fashion-mnist")
    monkeypatch.setattr(render, "bundled_fingerprint", lambda name: "f" * 64)
    text = render.headline("fashion-mnist")
    assert f"**Measured on earlier `puvae-fashion-mnist` weights** (fingerprint `{measured[:12]}`)" in text
    assert text.index("earlier") < text.index("| Classifier |")  # said before the table, not after it


def test_inference_noise_table_sets_each_sigma_beside_the_paper_setting(render, tmp_path) -> None:
    assert "No `sigma*_fashion-mnist_*.json` report" in render.inference_noise("fashion-mnist")
    table3 = _copy(tmp_path, "table3_fashion-mnist_A.json", "table3_fashion-mnist_A.json")
    other = json.loads(json.dumps(table3))
    other["meta"]["settings"]["sigma_eps"] = 0.3
    other["classifiers"]["A"]["clean_through"]["puvae"] = 12.34
    _write(tmp_path, "sigma0.3_fashion-mnist_A.json", other)
    text = render.inference_noise("fashion-mnist")
    rows = [line for line in text.splitlines() if line.startswith("| A |")]
    paper_fgsm = table3["classifiers"]["A"]["gray_box"]["FGSM"]["puvae"]
    assert rows[0].startswith(f"| A | 0.1 | {table3['classifiers']['A']['clean_through']['puvae']:.2f} | {paper_fgsm:.2f} (59.18) |")
    assert rows[1].startswith("| A | 0.3 | 12.34 |")
    # a report at another sigma_eps never merges into the paper's table itself
    _write(tmp_path, "table3_fashion-mnist_A_sigma.json", other)
    with pytest.raises(SystemExit, match="different sigma_eps"):
        render.headline("fashion-mnist")
    (tmp_path / "table3_fashion-mnist_A_sigma.json").unlink()
    other["meta"]["defense_sources"]["puvae"]["fingerprint"] = "f" * 64
    _write(tmp_path, "sigma0.3_fashion-mnist_A.json", other)
    with pytest.raises(SystemExit, match="other puvae-fashion-mnist weights"):
        render.inference_noise("fashion-mnist")


def test_an_undefended_cell_one_image_off_is_merged_and_said(render, tmp_path) -> None:
    shutil.copy(RESULTS / "table2_mnist_A.json", tmp_path / "table2_a.json")
    report = _copy(tmp_path, "table2_magnet_mnist.json", "table2_b.json")
    report["classifiers"]["A"]["gray_box"]["iFGSM"]["no_defense"] += 0.01  # one image of 10,000
    _write(tmp_path, "table2_b.json", report)
    text = render.headline("mnist")
    assert "Undefended cells that differ by a few images between reports: A/iFGSM without defense" in text


@pytest.mark.parametrize(("device", "images", "merged"), [
    ("cpu (x86_64, 2 threads)", 2, False),  # between CPUs one image is rounding, two are other examples
    ("NVIDIA H200", 5, True),  # a GPU's convolutions round otherwise: up to 0.05% of 10,000
    ("NVIDIA H200", 6, False),
])
def test_undefended_cells_from_other_hardware_tolerate_its_rounding(render, tmp_path, device, images, merged) -> None:
    shutil.copy(RESULTS / "table2_mnist_A.json", tmp_path / "table2_a.json")
    report = _copy(tmp_path, "table2_magnet_mnist.json", "table2_b.json")
    report["classifiers"]["A"]["gray_box"]["iFGSM"]["no_defense"] += 0.01 * images
    report["meta"]["device"] = device
    _write(tmp_path, "table2_b.json", report)
    if merged:
        assert f"in `table2_magnet_mnist` ({device})" in render.headline("mnist")
    else:
        with pytest.raises(SystemExit, match="A/iFGSM without defense: not the same examples"):
            render.headline("mnist")


@pytest.mark.parametrize(("key", "phrase"), [
    ("test_accuracy", "accuracy 91.70%"),
    ("test_accuracy_through_puvae_fashion_mnist", "through puvae-fashion-mnist 91.70%"),
    ("test_accuracy_A_through", "A behind it 91.70%"),
    ("test_accuracy_B_through_first100", "B behind it 91.70% (first 100 images)"),
    ("test_accuracy_source_through_purifier", "source behind it 91.70%"),
    ("test_projection_accuracy", "projection right 91.70%"),
])
def test_model_card_metrics_read_as_words(render, key, phrase) -> None:
    assert render.metric_phrase(key, 91.7) == phrase


def test_an_unknown_model_card_metric_is_refused(render) -> None:
    for key in ("test_latency_ms", "test_accuracy_A"):  # A's own accuracy is not "A behind it"
        with pytest.raises(ValueError, match=key):
            render.metric_phrase(key, 3.0)
    table = render.models_table()  # every bundled card's metrics have a phrase
    assert all(f"| `{name}` |" in table for name in render.hub.list_models())


def test_a_resumed_runs_time_says_what_it_covers(render) -> None:
    meta = {"wall_seconds": 1860.0}
    assert render.run_time(meta) == "31 min"
    meta["resumed"] = {"file": "progress.json", "images_done_before": {"B": 20}}
    assert render.run_time(meta) == "31 min for the last piece, resumed after 20 images"
    meta["resumed"]["whole_run_timed"] = True  # the progress file carried the earlier pieces' time
    assert render.run_time(meta) == "31 min in all, resumed after 20 images"


def test_tracked_bpda_settings_are_said_only_when_it_ran(render) -> None:
    def report(adaptive: list[str], every: bool = True) -> dict:
        return {"meta": {"settings": {"adaptive": adaptive},
                         "attack_params": {"bpda_track_steps": 10, "bpda_track_every_restart": every}}}

    assert render.tracked_note([report(["PGD + BPDA"])]) == ""
    note = render.tracked_note([report(["PGD + BPDA (tracked)"]), report(["PGD + BPDA (tracked)"], every=False)])
    assert "10 steps from the previous step's closest code or 10 steps from the previous step's codes of every restart" in note


def test_gpu_speed_reads_the_cuda_benchmark_or_says_there_is_none(render, tmp_path) -> None:
    assert render.gpu_speed().startswith("No GPU timing yet")
    bench = json.loads((RESULTS / "benchmark_projection_cuda.json").read_text())
    bench["selection_backend"] = "auto"
    bench["cases"][0]["median_ms"]["batched_triton_select"] = 1.25
    _write(tmp_path, "benchmark_projection_cuda.json", bench)
    text = render.gpu_speed()
    assert f"on {bench['device']}" in text and "`PUVAE_DEFENSE_KERNEL` auto" in text
    mnist, cifar = [line for line in text.splitlines() if line.startswith(("| 1x28x28", "| 3x32x32"))]
    assert f"| {bench['cases'][0]['speedup_batched_vs_loop']:.1f}x |" in mnist and "| 1.25 |" in mnist
    assert "| - |" in cifar  # a row the run did not time reads as a dash
    assert "predates" not in text
    del bench["selection_backend"]  # a run from before the field: said, not guessed
    _write(tmp_path, "benchmark_projection_cuda.json", bench)
    assert "That run predates recording `PUVAE_DEFENSE_KERNEL`" in render.gpu_speed()


def test_autoattack_on_puvae_behind_squeezing_is_labelled_as_such(render, tmp_path) -> None:
    shutil.copy(RESULTS / "table2_mnist_A.json", tmp_path / "table2_mnist_A.json")
    plain = _copy(tmp_path, "autoattack_mnist_A.json", "autoattack_mnist_A.json")
    text = render.headline("mnist")
    assert "AutoAttack (RobustBench's" in text and "on PuVAE + bit squeezing" not in text
    _write(tmp_path, "autoattack_mnist_A_squeeze.json",
           {**plain, "input_transform": "BitDepthSqueeze(bits=1, straight_through=True)"})
    text = render.headline("mnist")
    assert "AutoAttack (RobustBench's" in text  # PuVAE's own result stays as it was
    assert "AutoAttack on PuVAE + bit squeezing, `BitDepthSqueeze(bits=1, straight_through=True)` in front" in text


def test_speed_quotes_table5s_defense_gan_time_only_when_measured(render, tmp_path) -> None:
    _copy(tmp_path, "benchmark_projection_cpu.json", "benchmark_projection_cpu.json")
    assert "Defense-GAN" not in render.speed().split("On a GPU")[0].split("No GPU timing")[0]
    defenses = _copy(tmp_path, "benchmark_defenses_cpu.json", "benchmark_defenses_cpu.json")
    text = render.speed()
    assert (f"takes {defenses['table5_seconds']['defense_gan_L200_R20']:.0f} s for 128 MNIST images (timed on "
            f"{defenses['defense_gan_timed_images']}, scaled)") in text
    assert f"{defenses['ratio_defense_gan_over_puvae']:.0f}x PuVAE's {defenses['table5_seconds']['puvae']:.2f} s" in text


def test_defenses_speed_adds_a_gpu_block_when_one_was_lent(render, tmp_path) -> None:
    cpu = _copy(tmp_path, "benchmark_defenses_cpu.json", "benchmark_defenses_cpu.json")
    assert "(ours, GPU)" not in render.defenses_speed()
    gpu = {key: value for key, value in cpu.items() if key not in ("table6", "figure")}
    gpu.update(device="NVIDIA H200", defense_gan_repeats=5, tf32={"matmul": False, "cudnn": True},
               weights={**cpu["weights"], "puvae": "untrained"})
    _write(tmp_path, "benchmark_defenses_cuda.json", gpu)
    text = render.defenses_speed()
    cpu_part, gpu_part = text.split("(NVIDIA H200")
    assert "| seconds (ours, CPU) |" in cpu_part and "| seconds (ours, GPU) |" in gpu_part
    assert "TF32 off for matrix multiplies and on for cuDNN convolutions" in gpu_part
    assert "Defense-GAN 5 times per setting" in gpu_part and "| PuVAE (untrained, the same size: timing only) |" in gpu_part
    assert "Accuracy within this budget was not measured on the GPU." in gpu_part


def _certify_report(sigma: float, certified: list[int], radii: list[float]) -> dict:
    from puvae_defense.certification import summarize
    from puvae_defense.smoothing import Certificate, radius_bound

    import torch

    labels = [0] * len(certified)
    certificate = Certificate(torch.tensor(certified), torch.tensor(radii, dtype=torch.float64))
    return {"meta": {"settings": {"sigma": sigma, "n0": 100, "n": 10000, "alpha": 0.001, "limit": len(certified)},
                     "command": f"puvae-defense certify --sigma {sigma}", "devices": ["cpu (x86_64, 2 threads)"],
                     "seconds": 120.0, "largest_radius": radius_bound(sigma, 10000, 0.001)},
            "images": {"labels": labels, "certified": certified, "radii": radii},
            "certified_accuracy": summarize(certificate, torch.tensor(labels))}


def test_certification_rows_are_labelled_and_ordered(render, tmp_path) -> None:
    (tmp_path / "certify").mkdir()
    for name, report in (("mnist_A_smooth_sigma0.5", _certify_report(0.5, [0, 0, 1, -1], [0.9, 0.3, 0.5, 0.0])),
                         ("mnist_A_alone_sigma0.5", _certify_report(0.5, [0, 1, 1, -1], [0.2, 0.3, 0.5, 0.0])),
                         ("mnist_A_alone_sigma0.25", _certify_report(0.25, [0, 0, 0, 0], [0.1, 0.1, 0.1, 0.1]))):
        _write(tmp_path / "certify", f"{name}.json", report)
    rows = render.certification_rows()  # sigma 0.25 first, then sigma 0.5's (a) before its (c)
    assert [(label, report["meta"]["settings"]["sigma"]) for label, report in rows] == [
        ("(a) A smoothed alone", 0.25), ("(a) A smoothed alone", 0.5), ("(c) A behind puvae-mnist-smooth", 0.5)]
    table = render.certification("mnist", sigma=0.5, radii=(0.0, 0.5, 2.0))
    assert "| (a) A smoothed alone | 0.5 | 4 | 25.0 | 0.0 | - | 25.0 |" in table
    assert "| (c) A behind puvae-mnist-smooth | 0.5 | 4 | 50.0 | 25.0 | - | 25.0 |" in table
    assert table.index("(a) A") < table.index("(c) A") and "0.25 |" not in table.split("\n\n", 1)[1]
    assert len(rows) == 3 and "n = 10,000, n0 = 100, alpha = 0.001" in table
    common = render.certification("mnist", sigma=0.5, radii=(0.0, 0.5), common=True)
    assert common.startswith("Certified accuracy (%) on the same first 4 test images in every row") and "| (a) A smoothed alone | 0.5 | 4 |" in common
    _write(tmp_path / "certify", "mnist_A_alone_sigma0.5.json", _certify_report(0.5, [0, 1, 1, -1, 0, 0], [0.2, 0.3, 0.5, 0.0, 1, 1]))
    cut = render.certification("mnist", sigma=0.5, radii=(0.0, 0.5), common=True)
    assert "| (a) A smoothed alone | 0.5 | 4 | 25.0 | 0.0 | 25.0 |" in cut  # cut to the 4 images the other row has
    _write(tmp_path / "certify", "fashion-mnist_B_smooth_sigma0.25.json", _certify_report(0.25, [0, 0], [0.1, 0.2]))
    assert len(render.certification_rows()) == 3  # each data set has its own rows, labelled with its denoiser
    assert [label for label, _ in render.certification_rows("fashion-mnist")] == ["(c) B behind puvae-fashion-mnist-smooth"]
    (tmp_path / "certify" / "mnist_A_bogus_sigma0.5.json").write_text("{}")
    with pytest.raises(SystemExit, match="not a certification report name"):
        render.certification_rows()


def test_certification_says_when_nothing_was_certified(render, tmp_path) -> None:
    assert render.certification("mnist").startswith("No certification has been run yet")


def test_certification_paired_counts_images_and_sums_the_target_sigmas(render, tmp_path) -> None:
    (tmp_path / "certify").mkdir()
    assert render.certification_paired() == "No pair of rows to compare has been certified yet."
    for name, report in (("mnist_A_smooth_sigma0.5", _certify_report(0.5, [0, 0, 0, -1], [0.9, 0.3, 0.6, 0.0])),
                         ("mnist_A_retrained_sigma0.5", _certify_report(0.5, [0, 0, 0, 0], [0.9, 0.6, 0.6, 0.7])),
                         ("mnist_A_retrained_sigma0.25", _certify_report(0.25, [0, 0, 0, 0], [0.3, 0.3, 0.3, 0.3])),
                         ("mnist_A_smooth_sigma0.25", _certify_report(0.25, [0, 0, -1, -1], [0.3, 0.3, 0.0, 0.0])),
                         ("mnist_A_smooth_sigma1.0", _certify_report(1.0, [0, 0], [0.1, 0.1]))):
        _write(tmp_path / "certify", f"{name}.json", report)
    table = render.certification_paired(radii=(0.0, 0.5, 1.5))
    assert "| 0.5 | A | (c) - (e) | 4 | -25 (0:1, p 1) | -50 (0:2, p 0.5) | +0 (0:0, p 1) |" in table
    assert "| 0.25 | A | (c) - (e) | 4 | -50 (0:2, p 0.5) | +0 (0:0, p 1) | - |" in table  # 1.5 is beyond sigma 0.25's n
    assert "| 0.25 + 0.5 | A | (c) - (e) | summed | (0:3, p 0.25) | (0:2, p 0.5) | (0:0, p 1) |" in table
    assert "(c) - (a)" not in table and "| 1 |" not in table  # no row (a); sigma 1.0 has no anchor to compare with
