"""benchmarks/defenses.py end to end on untrained paper-size networks and a few real test images."""

import json
import subprocess
import sys
from pathlib import Path

from puvae_defense import PuVAE
from puvae_defense.baselines import DefenseGAN, DefenseGANConfig, MagNetReformer
from puvae_defense.classifiers import ClassifierConfig, PaperClassifier

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "defenses.py"


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=600)


def test_table6_measures_only_the_accuracy_grid(tmp_path, mnist_root) -> None:
    folders = {name: tmp_path / name for name in ("puvae", "magnet", "gan", "net")}
    PuVAE().save_pretrained(folders["puvae"])
    MagNetReformer().save_pretrained(folders["magnet"])
    DefenseGAN(DefenseGANConfig()).save_pretrained(folders["gan"])
    PaperClassifier(ClassifierConfig("A")).save_pretrained(folders["net"])
    out = tmp_path / "bench.json"
    result = _run("--batch", "4", "--repeats", "1", "--gan-images", "2", "--grid", "1x1,2x2", "--accuracy-grid", "1x1",
                  "--images", "4", "--puvae", str(folders["puvae"]), "--magnet", str(folders["magnet"]),
                  "--defense-gan", str(folders["gan"]), "--classifier", str(folders["net"]), "--out", str(out))
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(out.read_text())
    assert set(report["defense_gan_grid_seconds"]) == {"1x1", "2x2"}  # both timed ...
    points = {p["setting"]: p for p in report["table6"]["points"]}
    assert set(points) == {"puvae", "magnet", "defense-gan L1 R1"}  # ... only the accuracy grid evaluated
    for point in points.values():
        assert set(point["accuracy"]) == {"clean", "FGSM", "iFGSM", "RAND+FGSM", "CW"}
        assert all(0 <= v <= 100 for v in point["accuracy"].values())
    assert points["defense-gan L1 R1"]["seconds"] == report["defense_gan_grid_seconds"]["1x1"]
    assert set(report["weights_fingerprint"]) == {"puvae", "magnet", "defense_gan"}
    assert report["table6"]["images"] == 4


def test_bad_grids_are_refused(tmp_path) -> None:
    out = tmp_path / "bench.json"
    result = _run("--grid", "10x1,25", "--puvae", "untrained", "--out", str(out))
    assert result.returncode != 0 and "LxR" in result.stderr and "'25'" in result.stderr
    result = _run("--grid", "10x1", "--accuracy-grid", "25x2", "--puvae", "untrained", "--out", str(out))
    assert result.returncode != 0 and "not part of --grid" in result.stderr
    assert not out.exists()
