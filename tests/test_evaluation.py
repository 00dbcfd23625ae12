from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from puvae_defense import PuVAE, PurifiedClassifier
from puvae_defense.attacks import bpda, pgd
from puvae_defense.evaluation import (
    ADAPTIVE_ATTACKS,
    PAPER_ATTACKS,
    EvalSettings,
    distance_logits,
    evaluate,
    results_markdown,
)

from conftest import synthetic_dataset, tiny_source

QUICK = {"cw_steps": 3, "cw_binary_search_steps": 1, "pgd_steps": 2, "eot_samples": 2, "ifgsm_steps": 2}


def _setup(vae: PuVAE):
    net = tiny_source().eval()
    return {"A": net}, {"puvae": {"A": PurifiedClassifier(net, vae)}}


def test_report_is_well_formed(tiny_vae: PuVAE) -> None:
    nets, defended = _setup(tiny_vae)
    data = synthetic_dataset(24)
    settings = EvalSettings(limit=20, adaptive_limit=6, batch_size=8, overrides=QUICK)
    report = evaluate(nets, defended, data, settings, progress=False)
    result = report["classifiers"]["A"]
    assert result["n"] == 20 and result["adaptive_n"] == 6
    assert set(result["gray_box"]) == set(PAPER_ATTACKS)
    assert set(result["adaptive"]) == {"puvae"} and set(result["adaptive"]["puvae"]) == set(ADAPTIVE_ATTACKS) - {
        "PGD + BPDA (tracked)", "Search over squeezed bits"}  # Defense-GAN's only; 1-bit squeezing's only
    values = [result["clean_accuracy"], result["clean_through"]["puvae"], *result["adaptive"]["puvae"].values()]
    values += [v for cell in result["gray_box"].values() for v in cell.values()]
    assert all(0 <= v <= 100 and math.isfinite(v) for v in values)
    assert set(result["gray_box"]["FGSM"]) == {"no_defense", "puvae"}
    assert report["meta"]["attack_params"]["cw_steps"] == 3 and report["meta"]["settings"]["seed"] == 0
    assert report["meta"]["defenses"] == ["puvae"]
    json.dumps(report)  # JSON-ready
    table = results_markdown(report)
    assert "| Classifier | Attack | No Attack | No Defense | PuVAE |" in table
    assert "| A | FGSM |" in table and "(99.51," in table and "(81.33," in table and "| A | PuVAE | 6 |" in table


def test_several_defenses_in_one_run(tiny_vae: PuVAE) -> None:
    """Each defense's numbers are those it gets alone; a defense with its own classifier is
    attacked on that classifier; the distance attack skips defenses without distances."""
    from puvae_defense.baselines import NoPurifier

    nets, alone = _setup(tiny_vae)
    torch.manual_seed(3)
    own = tiny_source().eval()
    defenses = {"puvae": alone["puvae"], "adv-training": {"A": PurifiedClassifier(own, NoPurifier())},
                "identity": {"A": PurifiedClassifier(nets["A"], NoPurifier())}}
    data = synthetic_dataset(16)
    settings = EvalSettings(attacks=("FGSM", "RAND+FGSM"), adaptive=("PGD + BPDA", "PGD on the distances"),
                            adaptive_limit=8, batch_size=8, overrides=QUICK)
    together = evaluate(nets, defenses, data, settings, progress=False)
    result = together["classifiers"]["A"]
    single = evaluate(nets, alone, data, settings, progress=False)["classifiers"]["A"]
    assert result["clean_through"]["puvae"] == single["clean_through"]["puvae"]
    assert result["adaptive"]["puvae"] == single["adaptive"]["puvae"]
    assert all(result["gray_box"][a]["puvae"] == single["gray_box"][a]["puvae"] for a in ("FGSM", "RAND+FGSM"))
    # the identity behind the undefended classifier is no defense; adversarial training's
    # cells are its own classifier's accuracy on examples computed on that classifier
    assert all(cell["identity"] == cell["no_defense"] for cell in result["gray_box"].values())
    on_own = evaluate({"A": own}, {"identity": {"A": PurifiedClassifier(own, NoPurifier())}}, data, settings,
                      progress=False)["classifiers"]["A"]
    assert all(result["gray_box"][a]["adv-training"] == on_own["gray_box"][a]["no_defense"] for a in ("FGSM", "RAND+FGSM"))
    assert set(result["adaptive"]["adv-training"]) == {"PGD + BPDA"} and set(result["adaptive"]["puvae"]) == {
        "PGD + BPDA", "PGD on the distances"}
    table = results_markdown(together)
    assert "| Classifier | Attack | No Attack | No Defense | Adv. Tr. | PuVAE | identity |" in table
    assert "| A | Adv. Tr. | 8 | " in table and table.count(" - |") >= 2  # no distance attack without distances


def test_transfer_attacks_the_undefended_classifier() -> None:
    """A defense listed in ``transfer`` brings its own classifier but is attacked on the
    undefended one; the same classifier without ``transfer`` is attacked on itself."""
    import copy

    from puvae_defense.baselines import NoPurifier

    torch.manual_seed(0)
    net = tiny_source().eval()
    shifted = copy.deepcopy(net)
    with torch.no_grad():
        for parameter in shifted.parameters():
            parameter.add_(0.2 * torch.randn_like(parameter))
    defenses = {"transfer": {"A": PurifiedClassifier(shifted, NoPurifier())},
                "own": {"A": PurifiedClassifier(shifted, NoPurifier())}}
    settings = EvalSettings(attacks=("FGSM", "iFGSM"), adaptive=(), adaptive_limit=0, batch_size=8, overrides=QUICK)
    data = synthetic_dataset(32)
    report = evaluate({"A": net}, defenses, data, settings, transfer={"transfer"}, progress=False)
    cells = report["classifiers"]["A"]["gray_box"]
    on_own = evaluate({"A": shifted}, {"x": {"A": PurifiedClassifier(shifted, NoPurifier())}}, data, settings,
                      progress=False)["classifiers"]["A"]["gray_box"]
    assert all(cells[a]["own"] == on_own[a]["no_defense"] for a in cells)
    # examples made on another network fool the shifted one less than its own do
    assert all(cells[a]["transfer"] > cells[a]["own"] for a in cells), cells
    assert report["meta"]["transfer"] == ["transfer"]
    with pytest.raises(ValueError, match=r"transfer names defenses \['ghost'\]"):
        evaluate({"A": net}, defenses, data, settings, transfer={"ghost"}, progress=False)


def test_defenses_must_cover_every_classifier(tiny_vae: PuVAE) -> None:
    nets, defenses = _setup(tiny_vae)
    with pytest.raises(ValueError, match="covers classifiers"):
        evaluate({**nets, "B": nets["A"]}, defenses, synthetic_dataset(4), progress=False)
    with pytest.raises(ValueError, match="no defense"):
        evaluate(nets, {}, synthetic_dataset(4), progress=False)


def test_same_seed_same_numbers(tiny_vae: PuVAE) -> None:
    nets, defended = _setup(tiny_vae)
    data = synthetic_dataset(16)
    settings = EvalSettings(attacks=("FGSM", "RAND+FGSM"), adaptive=("PGD + EOT",), adaptive_limit=8, batch_size=8, overrides=QUICK)
    first = evaluate(nets, defended, data, settings, progress=False)["classifiers"]
    second = evaluate(nets, defended, data, settings, progress=False)["classifiers"]
    for key in ("clean_through", "gray_box", "adaptive"):
        assert first["A"][key] == second["A"][key]


def test_bpda_and_full_gradients_are_finite_and_nonzero(tiny_vae: PuVAE, images: torch.Tensor) -> None:
    model = PurifiedClassifier(tiny_source().eval(), tiny_vae)
    for forward in (model, bpda(lambda x: model.purify(x).purified, model.classify_purified)):
        x = images.clone().requires_grad_(True)
        torch.nn.functional.cross_entropy(forward(x), torch.zeros(len(x), dtype=torch.long)).backward()
        assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


def test_the_distance_attack_pushes_inputs_off_their_own_class(tiny_vae: PuVAE) -> None:
    """PGD on -RMSE shrinks the margin by which the true class's projection is the closest."""
    model = PurifiedClassifier(tiny_source().eval(), tiny_vae, sigma_eps=0.0)
    data = synthetic_dataset(16)
    images, labels = data.images, data.labels

    def margin(x: torch.Tensor) -> float:
        distances = model.purify(x).distances
        true = distances.gather(1, labels[:, None]).squeeze(1)
        others = distances.scatter(1, labels[:, None], float("inf")).min(1).values
        return float((others - true).mean())

    rule = distance_logits(model, 100.0)
    x = images.clone().requires_grad_(True)
    torch.nn.functional.cross_entropy(rule(x), labels).backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    adversarial = pgd(rule, images, labels, eps=0.1, step_size=0.02, steps=10, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert margin(adversarial) < margin(images)


def test_attack_cache_gives_the_same_numbers_and_is_reused(tiny_vae: PuVAE, tmp_path, monkeypatch) -> None:
    from puvae_defense import evaluation

    nets, defended = _setup(tiny_vae)
    data = synthetic_dataset(16)
    settings = EvalSettings(attacks=("FGSM", "RAND+FGSM", "CW"), adaptive=(), batch_size=8, overrides=QUICK)
    plain = evaluate(nets, defended, data, settings, progress=False)["classifiers"]["A"]
    cache = evaluation.AttackCache(tmp_path / "cache")
    first = evaluate(nets, defended, data, settings, cache=cache, progress=False)["classifiers"]["A"]
    assert len(list((tmp_path / "cache").glob("*.safetensors"))) == 3 * 2  # attacks x batches
    monkeypatch.setattr(evaluation, "_gray_box_attack", lambda name, params: pytest.fail("cache miss"))
    second = evaluate(nets, defended, data, settings, cache=evaluation.AttackCache(tmp_path / "cache"),
                      progress=False)["classifiers"]["A"]
    assert plain["gray_box"] == first["gray_box"] == second["gray_box"]


def test_attack_cache_key_follows_weights_params_and_pixels(tmp_path) -> None:
    from puvae_defense.evaluation import AttackCache

    cache, net, x = AttackCache(tmp_path), tiny_source().eval(), torch.rand(4, 1, 28, 28)
    key = cache.path(net, "FGSM", {"eps": 0.3}, 0, 0, x)
    assert key == AttackCache(tmp_path).path(net, "FGSM", {"eps": 0.3}, 0, 0, x.clone())
    other = tiny_source().eval()
    with torch.no_grad():
        other[1].weight.add_(1e-3)
    assert key != AttackCache(tmp_path).path(other, "FGSM", {"eps": 0.3}, 0, 0, x)
    assert key != cache.path(net, "FGSM", {"eps": 0.2}, 0, 0, x)
    assert key != cache.path(net, "FGSM", {"eps": 0.3}, 1, 0, x)
    assert key != cache.path(net, "FGSM", {"eps": 0.3}, 0, 0, x.flip(0))


def test_purifier_does_not_change_gray_box_examples(tiny_vae: PuVAE) -> None:
    """Targets and attack noise come from per-batch generators the purifier never touches."""
    nets, _ = _setup(tiny_vae)
    data = synthetic_dataset(16)
    settings = EvalSettings(attacks=("FGSM", "RAND+FGSM"), adaptive=(), batch_size=8, overrides=QUICK)
    torch.manual_seed(1)
    other_vae = PuVAE(tiny_vae.config).eval()
    reports = [evaluate(nets, {"puvae": {"A": PurifiedClassifier(nets["A"], vae, sigma_eps=s)}}, data, settings,
                        progress=False)
               for vae, s in ((tiny_vae, 0.1), (other_vae, 0.5))]
    assert reports[0]["classifiers"]["A"]["gray_box"]["RAND+FGSM"]["no_defense"] == \
        reports[1]["classifiers"]["A"]["gray_box"]["RAND+FGSM"]["no_defense"]


def test_weights_fingerprint_follows_the_values(tiny_vae: PuVAE) -> None:
    from puvae_defense.evaluation import weights_fingerprint

    half = PuVAE(tiny_vae.config)
    half.load_state_dict(tiny_vae.state_dict())
    assert weights_fingerprint(half) == weights_fingerprint(tiny_vae)
    with torch.no_grad():
        half.encoder_in.weight[0, 0] += 1.0
    assert weights_fingerprint(half) != weights_fingerprint(tiny_vae)


def test_markdown_marks_cells_a_merged_report_lacks(tiny_vae: PuVAE) -> None:
    nets, defenses = _setup(tiny_vae)
    settings = EvalSettings(attacks=("FGSM", "RAND+FGSM"), adaptive=(), batch_size=8, overrides=QUICK)
    report = evaluate(nets, defenses, synthetic_dataset(8), settings, progress=False)
    report["meta"]["defenses"].append("magnet")
    report["classifiers"]["A"]["gray_box"]["FGSM"]["magnet"] = 12.5
    table = results_markdown(report)
    assert "| PuVAE | MagNet |" not in table and "| MagNet | PuVAE |" in table  # the paper's column order
    assert "(26.90, -14.40) |" in table  # MagNet's FGSM cell against the paper's
    rand_row = next(line for line in table.splitlines() if "| RAND+FGSM |" in line)
    no_attack_row = next(line for line in table.splitlines() if "| no attack |" in line)
    assert rand_row.split(" | ")[4] == "-" and no_attack_row.split(" | ")[4] == "-"  # MagNet's column


def test_wilson_interval_matches_known_values() -> None:
    from puvae_defense.evaluation import wilson_interval

    low, high = wilson_interval(0, 200)
    assert low == pytest.approx(0.0, abs=1e-9) and high == pytest.approx(1.8846, abs=1e-3)
    low, high = wilson_interval(50, 100)
    assert 50 - low == pytest.approx(high - 50) and high == pytest.approx(59.61, abs=0.01)
    for correct, n in [(0, 0), (5, 4), (-1, 4)]:  # no images, or counts that cannot be: an error, not an interval
        with pytest.raises(ValueError, match="0 <= correct <= n"):
            wilson_interval(correct, n)


def test_a_stopped_evaluation_resumes_to_the_numbers_of_one_run(tiny_vae: PuVAE, tmp_path) -> None:
    from puvae_defense.evaluation import EvaluationProgress

    nets, defended = _setup(tiny_vae)
    data = synthetic_dataset(24)
    settings = EvalSettings(attacks=("FGSM", "RAND+FGSM"), adaptive=("PGD + EOT",), adaptive_limit=12, batch_size=8,
                            overrides=QUICK)
    straight = evaluate(nets, defended, data, settings, progress=False)
    path = tmp_path / "progress.json"
    evaluate(nets, defended, data, EvalSettings(**{**settings.__dict__, "limit": 8}), progress=False,
             checkpoint=EvaluationProgress(path))  # "stopped" after the first batch
    saved = json.loads(path.read_text())["classifiers"]["A"]
    assert saved["done"] == 8
    resumed = evaluate(nets, defended, data, settings, progress=False, checkpoint=EvaluationProgress(path))
    assert resumed["meta"]["resumed"]["images_done_before"] == {"A": 8}
    for key in ("n", "clean_accuracy", "clean_through", "gray_box", "adaptive", "adaptive_n", "per_image"):
        assert resumed["classifiers"]["A"][key] == straight["classifiers"]["A"][key], key
    # a finished run resumes to its report without recomputing
    again = evaluate(nets, defended, data, settings, progress=False, checkpoint=EvaluationProgress(path))
    assert again["classifiers"]["A"]["gray_box"] == straight["classifiers"]["A"]["gray_box"]


def _first_half(tiny_vae: PuVAE, path: Path) -> tuple[Callable[[int], dict], dict]:
    """A 16-image FGSM evaluation stopped after its first batch of 8 at ``path``: ``(run, report)``,
    where ``run(limit)`` resumes it from ``path`` up to ``limit`` images."""
    from puvae_defense.evaluation import EvaluationProgress

    nets, defended = _setup(tiny_vae)
    data = synthetic_dataset(16)
    settings = EvalSettings(attacks=("FGSM",), adaptive=(), limit=16, batch_size=8, overrides=QUICK)

    def run(limit: int) -> dict:
        return evaluate(nets, defended, data, EvalSettings(**{**settings.__dict__, "limit": limit}), progress=False,
                        checkpoint=EvaluationProgress(path))

    return run, run(8)


def test_a_resumed_evaluation_times_every_piece(tiny_vae: PuVAE, tmp_path) -> None:
    path = tmp_path / "progress.json"
    run, first = _first_half(tiny_vae, path)
    record = json.loads(path.read_text())
    assert 0 < record["seconds"] <= first["meta"]["wall_seconds"]
    path.write_text(json.dumps({**record, "seconds": 1000.0}))  # as if the first piece had taken 1,000 s
    resumed = run(16)
    assert resumed["meta"]["resumed"]["whole_run_timed"] is True
    assert 1000.0 < resumed["meta"]["wall_seconds"] < 1000.0 + 600
    assert json.loads(path.read_text())["seconds"] == pytest.approx(resumed["meta"]["wall_seconds"], abs=60)
    assert "per_image" in resumed["classifiers"]["A"]
    # a file written before pieces were timed or images recorded: the report says it timed only
    # the last piece, and has no per-image results rather than a partial list
    del record["seconds"]
    del record["classifiers"]["A"]["hits"]
    path.write_text(json.dumps(record))
    old = run(16)
    assert old["meta"]["resumed"]["whole_run_timed"] is False
    assert old["meta"]["wall_seconds"] < 600
    assert "seconds" not in json.loads(path.read_text())
    assert old["classifiers"]["A"]["gray_box"] == resumed["classifiers"]["A"]["gray_box"]
    assert "per_image" not in old["classifiers"]["A"]


def test_a_resumed_report_names_the_devices_that_did_the_work(tiny_vae: PuVAE, tmp_path) -> None:
    path = tmp_path / "progress.json"
    run, first = _first_half(tiny_vae, path)
    here = first["meta"]["device"]
    record = json.loads(path.read_text())
    assert record["devices"] == [here]
    # the first piece ran elsewhere: a piece that only writes the report names that device alone,
    # one that does some of the work names both, in the order they ran
    path.write_text(json.dumps({**record, "devices": ["NVIDIA H200"]}))
    assert run(8)["meta"]["device"] == "NVIDIA H200"
    assert run(16)["meta"]["device"] == f"NVIDIA H200 + {here}"
    assert json.loads(path.read_text())["devices"] == ["NVIDIA H200", here]


def test_report_says_which_images_each_cell_got_right(tiny_vae: PuVAE) -> None:
    from puvae_defense.evaluation import pack_hits, unpack_hits

    nets, defended = _setup(tiny_vae)
    settings = EvalSettings(attacks=("FGSM",), adaptive=("PGD + BPDA", "PGD on the distances"), limit=10,
                            adaptive_limit=6, batch_size=4, overrides=QUICK)
    result = evaluate(nets, defended, synthetic_dataset(12), settings, progress=False)["classifiers"]["A"]
    bits = {key: unpack_hits(packed) for key, packed in result["per_image"].items()}
    assert set(bits) == {"clean", "clean/puvae", "FGSM/no_defense", "FGSM/puvae", "puvae/PGD + BPDA",
                         "puvae/PGD on the distances"}
    assert len(bits["clean"]) == 10 and len(bits["puvae/PGD + BPDA"]) == 6
    assert 100 * sum(bits["clean/puvae"]) / 10 == result["clean_through"]["puvae"]
    assert 100 * sum(bits["puvae/PGD on the distances"]) / 6 == result["adaptive"]["puvae"]["PGD on the distances"]
    for sample in ([], [True], [False] * 7 + [True], [True, False] * 13):
        assert unpack_hits(pack_hits(sample)) == sample
    for bad in ("5", "5:b", "x:b8", "5:b8f"):
        with pytest.raises(ValueError, match="per-image results must read"):
            unpack_hits(bad)


def test_progress_file_restores_the_noise_and_refuses_other_runs(tiny_vae: PuVAE, tmp_path) -> None:
    from puvae_defense.evaluation import EvaluationProgress

    nets, defended = _setup(tiny_vae)
    data = synthetic_dataset(16)
    settings = EvalSettings(attacks=("FGSM",), adaptive=(), limit=6, batch_size=4, overrides=QUICK)
    path = tmp_path / "progress.json"
    evaluate(nets, defended, data, EvalSettings(**{**settings.__dict__, "limit": 4}), progress=False,
             checkpoint=EvaluationProgress(path))
    progress = EvaluationProgress(path)
    progress.bind(json.loads(path.read_text())["key"])
    gens = {"puvae": torch.Generator().manual_seed(0)}
    fresh = gens["puvae"].get_state().clone()
    done, counts, _, hits = progress.resume("A", 16, 4, gens)
    assert done == 4 and counts["clean"] >= 0
    assert hits is not None and all(len(bits) == 4 and sum(bits) == counts[key] for key, bits in hits.items())
    assert not torch.equal(gens["puvae"].get_state(), fresh)  # the purifier's noise had advanced; it is restored
    with pytest.raises(ValueError, match="more than the 2 asked for"):
        progress.resume("A", 2, 4, gens)
    evaluate(nets, defended, data, settings, progress=False, checkpoint=EvaluationProgress(path))  # 6: a partial batch
    with pytest.raises(ValueError, match="stopped after a partial batch"):
        evaluate(nets, defended, data, EvalSettings(**{**settings.__dict__, "limit": 12}), progress=False,
                 checkpoint=EvaluationProgress(path))
    with pytest.raises(ValueError, match="another evaluation .different settings"):
        evaluate(nets, defended, data, EvalSettings(**{**settings.__dict__, "seed": 1}), progress=False,
                 checkpoint=EvaluationProgress(path))
    other = {"puvae": {"A": PurifiedClassifier(nets["A"], tiny_vae, sigma_eps=0.0)}}
    with pytest.raises(ValueError, match="different defenses"):
        evaluate(nets, other, data, settings, progress=False, checkpoint=EvaluationProgress(path))


@pytest.mark.parametrize("changes, message", [
    ({"attacks": ("FGSM", "PGD")}, "unknown attacks .'PGD'."),
    ({"dataset": "svhn"}, "no attack settings for 'svhn'"),
    ({"limit": 0}, "count images; got 0, 500 and 1000"),
    ({"batch_size": 0}, "count images; got None, 0 and 1000"),
    ({"adaptive_limit": -1}, "count images; got None, 500 and -1"),
    ({"sigma_eps": -0.1}, "sigma_eps must be >= 0"),
    ({"overrides": {"pgd_stepz": 3}}, "unknown attack parameters .'pgd_stepz'."),
    ({"overrides": {"pgd_steps": 2.5}}, "pgd_steps must be of type int"),
    ({"overrides": {"eot_samples": True}}, "eot_samples must be of type int"),
    ({"overrides": {"pgd_steps": 0}}, "pgd_steps must be >= 1"),
    ({"overrides": {"pgd_step": -0.01}}, "pgd_step must be >= 0"),
])
def test_eval_settings_refuse_what_cannot_run(changes: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        EvalSettings(**changes)
    assert EvalSettings(overrides={"pgd_steps": 3, "eps": 1, "bpda_track_every_restart": False}).params["eps"] == 1


@pytest.mark.parametrize("n, shown", [(50, True), (999, True), (1000, False)])
def test_results_markdown_gives_small_samples_their_wilson_interval(n: int, shown: bool) -> None:
    from puvae_defense.evaluation import results_markdown, wilson_interval

    report = {"meta": {"settings": {"dataset": "custom"}, "defenses": ["puvae"]},
              "classifiers": {"mine": {"n": n, "clean_accuracy": 90.0, "clean_through": {"puvae": 88.0},
                                       "gray_box": {"FGSM": {"no_defense": 10.0, "puvae": 60.0}},
                                       "adaptive": {"puvae": {"PGD": 2.0}}, "adaptive_n": n}}}
    text = results_markdown(report)
    low, high = wilson_interval(round(0.6 * n), n)
    assert (f"60.00 [{low:.1f}-{high:.1f}]" in text) is shown
    assert ("[" in text) is shown


def test_progress_names_each_stage_within_the_first_batch(tiny_vae: PuVAE, capsys) -> None:
    nets, defended = _setup(tiny_vae)
    settings = EvalSettings(attacks=("FGSM",), adaptive=("PGD (full gradient)",), limit=4, adaptive_limit=4,
                            batch_size=4, overrides=QUICK)
    evaluate(nets, defended, synthetic_dataset(4), settings, progress=True)
    err = capsys.readouterr().err
    assert "clean" in err and "FGSM" in err and "puvae: PGD (full gradient)" in err  # one batch, three stages shown
