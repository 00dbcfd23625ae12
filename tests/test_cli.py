from __future__ import annotations

import json

import pytest
import torch

from puvae_defense import PuVAE
from puvae_defense.classifiers import ClassifierConfig, PaperClassifier
from puvae_defense.cli import ADAPTIVE_KEYS, main
from puvae_defense.evaluation import ADAPTIVE_ATTACKS, weights_fingerprint
from puvae_defense.serialization import sha256_of


def test_evaluate_writes_well_formed_results(tmp_path, tiny_vae: PuVAE, mnist_root, capsys) -> None:
    tiny_vae.save_pretrained(tmp_path / "vae")
    torch.manual_seed(0)
    PaperClassifier(ClassifierConfig("source")).save_pretrained(tmp_path / "clf")
    status = main(["evaluate", "--defenses", f"puvae={tmp_path / 'vae'}", "--classifiers", f"A={tmp_path / 'clf'}",
                   "--attacks", "FGSM", "iFGSM", "--limit", "12", "--adaptive-limit", "0", "--batch-size", "6",
                   "--data-root", str(mnist_root), "--out", str(tmp_path / "out"), "--name", "t",
                   "--figure", str(tmp_path / "out" / "fig.png"), "--quiet"])
    assert status == 0
    report = json.loads((tmp_path / "out" / "t.json").read_text())
    assert report["classifiers"]["A"]["n"] == 12 and set(report["classifiers"]["A"]["gray_box"]) == {"FGSM", "iFGSM"}
    assert report["meta"]["command"].startswith("puvae-defense evaluate")
    assert report["meta"]["defense_sources"]["puvae"]["fingerprint"] == weights_fingerprint(tiny_vae)
    assert (tmp_path / "out" / "t.md").read_text().startswith("| Classifier |")
    assert (tmp_path / "out" / "fig.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "| A | FGSM |" in capsys.readouterr().out


def test_evaluate_defaults_follow_the_dataset() -> None:
    """Without --classifiers and --name, evaluate takes the data set's own classifiers and table."""
    from puvae_defense.cli import _evaluation_defaults, build_parser

    for dataset, table in (("mnist", "table2_mnist"), ("fashion-mnist", "table3_fashion-mnist")):
        args = build_parser().parse_args(["evaluate", "--dataset", dataset])
        _evaluation_defaults(args)
        assert args.classifiers == [f"A={dataset}-classifier-a", f"B={dataset}-classifier-b"] and args.name == table
    args = build_parser().parse_args(["evaluate", "--dataset", "fashion-mnist", "--classifiers", "A=x", "--name", "t"])
    _evaluation_defaults(args)
    assert args.classifiers == ["A=x"] and args.name == "t"
    assert args.out == "runs/evaluate" and args.limit is None  # never into docs/results unless asked


def test_evaluate_on_your_own_data_defaults_to_a_quick_run(capsys) -> None:
    from puvae_defense.cli import USER_DATA_LIMIT, _evaluation_defaults, build_parser

    args = build_parser().parse_args(["evaluate", "--data", "my/images.npz", "--classifiers", "mine=net.pt"])
    _evaluation_defaults(args)
    assert args.limit == USER_DATA_LIMIT and args.name == "evaluate_images" and args.out == "runs/evaluate"
    assert f"first {USER_DATA_LIMIT} images of my/images.npz" in capsys.readouterr().err
    args = build_parser().parse_args(["evaluate", "--data", "my/images.npz", "--limit", "20000"])
    _evaluation_defaults(args)
    assert args.limit == 20000


def test_data_fetch_verifies_existing_files(mnist_root, capsys) -> None:
    assert main(["data", "fetch", "mnist", "--root", str(mnist_root)]) == 0
    assert "files verified" in capsys.readouterr().out


def test_list_models(capsys) -> None:
    from puvae_defense import hub

    assert main(["list-models"]) == 0
    header, *lines = capsys.readouterr().out.split("\n\n")[0].splitlines()
    assert header.split() == ["NAME", "TYPE", "DATASET", "PINNED", "BY", "MEASURED"]
    assert [line.split()[0] for line in lines] == hub.list_models()
    type_column = {line.index(f" {hub.get_entry(line.split()[0]).model_type} ") for line in lines}
    assert len(type_column) == 1 and header.index(" TYPE ") + 1 in {c + 1 for c in type_column}  # aligned columns
    assert main(["list-models", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [m["name"] for m in listed] == hub.list_models() and all(len(m["sha256"]) == 64 for m in listed)


def test_train_commands(tmp_path, monkeypatch, capsys) -> None:
    from puvae_defense import data

    from conftest import synthetic_dataset

    monkeypatch.setattr(data, "load_dataset", lambda name, split, root=None: synthetic_dataset(32, classes=10))
    assert main(["train-classifier", "--arch", "source", "--epochs", "1", "--out", str(tmp_path / "src")]) == 0
    assert "validation accuracy" in capsys.readouterr().out
    assert main(["train", "--source", str(tmp_path / "src"), "--out", str(tmp_path / "vae"), "--epochs", "1",
                 "--batch-size", "32", "--val-size", "8", "--lambda-proj", "1.0", "--device", "cpu"]) == 0
    model = PuVAE.from_pretrained(tmp_path / "vae")
    assert model.config.num_classes == 10
    history = json.loads((tmp_path / "vae" / "history.json").read_text())
    assert history[0]["epoch"] == 1 and "proj" in history[0]["train"]
    assert main(["train", "--source", str(tmp_path / "src"), "--out", str(tmp_path / "paper"), "--recipe", "paper",
                 "--epochs", "1", "--batch-size", "32", "--val-size", "8", "--device", "cpu"]) == 0
    history = json.loads((tmp_path / "paper" / "history.json").read_text())
    assert set(history[0]["train"]) == {"total", "rc", "kl", "ce"}
    assert main(["train", "--source", str(tmp_path / "src"), "--attack-models", str(tmp_path / "src"),
                 "--out", str(tmp_path / "ens"), "--epochs", "1", "--batch-size", "32", "--val-size", "8",
                 "--lambda-proj", "0", "--device", "cpu"]) == 0
    metadata = json.loads((tmp_path / "ens" / "config.json").read_text())["metadata"]
    assert metadata["training"]["attack models"] == [str(tmp_path / "src")]
    assert "attack models" in (tmp_path / "ens" / "README.md").read_text()
    tune = ["train", "--source", str(tmp_path / "src"), "--out", str(tmp_path / "tuned"), "--init", str(tmp_path / "vae"),
            "--freeze-trunk", "true", "--batch-size", "32", "--val-size", "8", "--device", "cpu",
            "--checkpoint-dir", str(tmp_path / "ckpt")]
    assert main(tune) == 0
    metadata = json.loads((tmp_path / "tuned" / "config.json").read_text())["metadata"]
    assert metadata["training"]["recipe"] == "finetune" and metadata["training"]["overrides"]["freeze_trunk"] is True
    assert metadata["training"]["command"].startswith("puvae-defense train --source ")  # main's arguments, not pytest's
    assert metadata["training"]["fine-tuned from"] == {"name": str(tmp_path / "vae"),
                                                       "sha256": sha256_of(tmp_path / "vae" / "model.safetensors")}
    card = (tmp_path / "tuned" / "README.md").read_text()
    assert "fine-tuned from" in card and metadata["training"]["fine-tuned from"]["sha256"] in card
    tuned = PuVAE.from_pretrained(tmp_path / "tuned")
    assert torch.equal(tuned.trunk[0].weight, model.trunk[0].weight)  # frozen, and stored in float16 both times
    first = (tmp_path / "tuned" / "history.json").read_text()
    assert main(tune) == 0  # the finished run resumes from its last checkpoint: nothing left to train
    assert (tmp_path / "tuned" / "history.json").read_text() == first
    assert torch.equal(PuVAE.from_pretrained(tmp_path / "tuned").encoder_out.weight, tuned.encoder_out.weight)


def test_evaluate_runs_only_the_chosen_adaptive_attacks(tmp_path, tiny_vae: PuVAE, mnist_root) -> None:
    tiny_vae.save_pretrained(tmp_path / "vae")
    torch.manual_seed(0)
    PaperClassifier(ClassifierConfig("source")).save_pretrained(tmp_path / "clf")
    status = main(["evaluate", "--defenses", f"puvae={tmp_path / 'vae'}", "--classifiers", f"A={tmp_path / 'clf'}",
                   "--attacks", "--limit", "4", "--adaptive", "bpda", "--adaptive-limit", "4", "--batch-size", "4",
                   "--data-root", str(mnist_root), "--out", str(tmp_path / "out"), "--name", "t", "--quiet"])
    assert status == 0
    result = json.loads((tmp_path / "out" / "t.json").read_text())["classifiers"]["A"]
    assert list(result["adaptive"]["puvae"]) == ["PGD + BPDA"] and result["adaptive_n"] == 4 and result["gray_box"] == {}


def test_every_adaptive_attack_has_one_command_line_key() -> None:
    assert sorted(ADAPTIVE_KEYS.values()) == sorted(ADAPTIVE_ATTACKS)


def test_user_errors_are_one_line_with_status_2(tmp_path, tiny_vae: PuVAE, mnist_root, capsys) -> None:
    """Regression (hardening): these were Python tracebacks, or ran and failed at the end."""
    import pytest

    tiny_vae.save_pretrained(tmp_path / "vae")
    PaperClassifier(ClassifierConfig("source")).save_pretrained(tmp_path / "clf")
    clf = ["--classifiers", f"A={tmp_path / 'clf'}"]
    cases = [
        (["purify", "--purifier", str(tmp_path / "vae"), "--out", str(tmp_path)], "is a folder; give the file to write"),
        (["purify", "--purifier", str(tmp_path / "missing"), "--out", str(tmp_path / "p.safetensors")],
         "no such weights folder"),
        (["evaluate", *clf, "--defenses", "magnets", "--out", str(tmp_path / "o")], "unknown defense 'magnets'"),
        (["evaluate", *clf, "--out", str(tmp_path / "vae" / "config.json")], "is a file; give a folder"),
        (["certify", "--classifier", "no-such-model", "--sigma", "0.5"],
         "unknown pretrained model 'no-such-model'"),
    ]
    for argv, message in cases:
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"puvae-defense {argv[0]}: error: ") and message in err and "Traceback" not in err
        assert err.count("\n") == 1
    with pytest.raises(ValueError, match="unknown pretrained model"):
        main(["--debug", "certify", "--classifier", "no-such-model", "--sigma", "0.5"])


def test_bad_numbers_are_refused_by_the_parser(capsys) -> None:
    """Regression (hardening): purify --limit -5 purified 9,995 images; --sigma-eps inf wrote NaN."""
    import pytest

    for argv, message in ((["purify", "--out", "x", "--limit", "-5"], "expected an integer >= 1, got -5"),
                          (["purify", "--out", "x", "--sigma-eps", "inf"], "expected a finite number"),
                          (["purify", "--out", "x", "--sigma-eps", "1e300"], "expected a number in [0, 10]"),
                          (["purify", "--out", "x", "--batch-size", "0"], "expected an integer >= 1"),
                          (["certify", "--classifier", "c", "--sigma", "nan"], "expected a finite number"),
                          (["evaluate", "--adaptive-limit", "-1"], "expected an integer >= 0")):
        with pytest.raises(SystemExit) as stop:
            main(argv)
        assert stop.value.code == 2 and message in capsys.readouterr().err


def test_version_and_help_do_not_load_torch() -> None:
    """`--help` is fast: building the parser imports neither torch nor the Hub client."""
    import subprocess
    import sys

    import puvae_defense

    code = ("import sys; from puvae_defense.cli import build_parser; build_parser(); "
            "print('torch' in sys.modules, 'huggingface_hub' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]
    version = subprocess.run([sys.executable, "-m", "puvae_defense.cli", "--version"], capture_output=True, text=True)
    assert version.returncode == 0 and version.stdout.strip() == f"puvae-defense {puvae_defense.__version__}"


def test_every_option_has_help_and_shows_its_default(capsys) -> None:
    import argparse

    from puvae_defense.cli import build_parser

    parser = build_parser()
    commands = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)][0].choices
    for name, command in commands.items():
        for action in command._actions:
            assert action.help, f"{name} {action.dest} has no help"
            if action.option_strings and action.default not in (None, False) and not isinstance(action, argparse._HelpAction):
                assert "default" in action.help, f"{name} {action.option_strings[0]} does not show its default"
    train_help = commands["train"].format_help()
    assert "--epochs EPOCHS" in train_help and "3 in 'robust', 1 in 'finetune'" in " ".join(train_help.split())


def test_diagnose_and_adapt_commands(tmp_path, tiny_vae: PuVAE, mnist_root, capsys) -> None:
    tiny_vae.save_pretrained(tmp_path / "vae")
    torch.manual_seed(0)
    PaperClassifier(ClassifierConfig("source")).save_pretrained(tmp_path / "clf")
    common = ["--classifier", str(tmp_path / "clf"), "--purifier", str(tmp_path / "vae"), "--data-root", str(mnist_root)]
    assert main(["diagnose", *common, "--limit", "8", "--json"]) == 0
    out = capsys.readouterr().out
    assert "classifier alone" in out and "verdict: " in out
    record = json.loads(out.strip().splitlines()[-1])
    assert record["images"] == 8 and record["verdict"] in ("ok", "adapt the classifier", "fine-tune the purifier")
    assert main(["adapt", *common, "--out", str(tmp_path / "adapted"), "--limit", "16", "--val-images", "8", "--quiet"]) == 0
    assert "before: " in capsys.readouterr().out
    adapted = PaperClassifier.from_pretrained(tmp_path / "adapted")
    assert adapted.config == PaperClassifier.from_pretrained(tmp_path / "clf").config
    card = json.loads((tmp_path / "adapted" / "config.json").read_text())["metadata"]
    assert card["training"]["adapted from"] == str(tmp_path / "clf") and "val_accuracy_through_purifier" in card["metrics"]


@pytest.mark.filterwarnings("ignore:`torch.jit:FutureWarning")
def test_diagnose_your_own_torchscript_classifier_on_your_own_images(tmp_path, tiny_vae: PuVAE, capsys) -> None:
    import numpy as np

    tiny_vae.save_pretrained(tmp_path / "vae")
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, 10)).eval()
    torch.jit.save(torch.jit.script(net), str(tmp_path / "mine.pt"))
    np.savez(tmp_path / "mine.npz", images=np.random.default_rng(0).random((6, 1, 28, 28), dtype=np.float32),
             labels=np.arange(6) % 10)
    assert main(["diagnose", "--classifier", str(tmp_path / "mine.pt"), "--purifier", str(tmp_path / "vae"),
                 "--data", str(tmp_path / "mine.npz"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["images"] == 6
    assert main(["diagnose", "--classifier", "no_such_module:make", "--data", str(tmp_path / "mine.npz")]) == 2
    assert "cannot import the classifier factory 'no_such_module:make'" in capsys.readouterr().err
