"""Command line: ``puvae-defense {data,train,train-classifier,train-baseline,evaluate,certify,diagnose,adapt,purify,export,push,list-models}``.

Argument parsing only; every command calls the library.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import shlex
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["main"]


def _add_train_options(parser: argparse.ArgumentParser) -> None:
    from .config import TrainConfig
    from .recipes import DEFAULT_RECIPE, FINETUNE_RECIPE, RECIPES

    default, finetune = RECIPES[DEFAULT_RECIPE], RECIPES[FINETUNE_RECIPE]
    for item in dataclasses.fields(TrainConfig):
        kind = _flag if isinstance(item.default, bool) else type(item.default)
        ours, tuned = getattr(default, item.name), getattr(finetune, item.name)
        source = (f"{ours!r} in {DEFAULT_RECIPE!r}" + (f", {tuned!r} in {FINETUNE_RECIPE!r} (with --init)" if tuned != ours else ""))
        parser.add_argument(f"--{item.name.replace('_', '-')}", type=kind, default=None,
                            help=f"TrainConfig.{item.name}; default from --recipe: {source}".replace("%", "%%"))


def _flag(text: str) -> bool:
    """``true/false``, ``yes/no``, ``1/0`` (any case) for boolean training options."""
    value = text.strip().lower()
    if value in ("true", "yes", "1"):
        return True
    if value in ("false", "no", "0"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def _at_least(minimum: int):
    """An argparse type: an integer >= ``minimum``."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer >= {minimum}, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"expected an integer >= {minimum}, got {value}")
        return value

    return parse


_positive_int = _at_least(1)  # image counts, batch sizes, epochs, steps
_count = _at_least(0)


def _finite_float(text: str) -> float:
    """A finite float (no nan or inf)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


def _nonnegative_float(text: str) -> float:
    value = _finite_float(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a finite number >= 0, got {text!r}")
    return value


def _positive_float(text: str) -> float:
    value = _finite_float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a finite number > 0, got {text!r}")
    return value


def _sigma_eps(text: str) -> float:
    from .model import MAX_SIGMA_EPS

    value = _nonnegative_float(text)
    if value > MAX_SIGMA_EPS:
        raise argparse.ArgumentTypeError(f"expected a number in [0, {MAX_SIGMA_EPS:g}] (paper: 0.1), got {text!r}")
    return value


def _new_file(path: str | Path, *, option: str) -> Path:
    """``path`` for a file the command will write: not a folder, in a folder that can be made."""
    path = Path(path)
    if path.is_dir():
        raise SystemExit(f"{option} {path} is a folder; give the file to write")
    if path.parent.exists() and not path.parent.is_dir():
        raise SystemExit(f"{option} {path}: {path.parent} is a file, not a folder")
    return path


def _new_folder(path: str | Path, *, option: str) -> Path:
    """``path`` for a folder the command will write into: not an existing file."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise SystemExit(f"{option} {path} is a file; give a folder")
    return path


def _command(args: argparse.Namespace) -> str:
    """The command line that ran (``main``'s own arguments, also when called from Python)."""
    return shlex.join(["puvae-defense", *args.argv])


def _load_classifier(name_or_path: str, device: str):
    """A classifier by registered name or weights folder; a TorchScript file (``.pt``, ``.pth``,
    ``.ts``, saved with ``torch.jit.save``); or ``package.module:factory`` (an importable callable
    returning the network, e.g. your training code's constructor that loads its own weights)."""
    import torch

    from .classifiers import PaperClassifier

    path = Path(name_or_path)
    if path.suffix in (".pt", ".pth", ".ts") and path.is_file():
        return torch.jit.load(str(path), map_location=device).eval()
    module_name, colon, attribute = name_or_path.partition(":")
    if colon and not path.exists():
        import importlib

        try:
            factory = getattr(importlib.import_module(module_name), attribute)
        except (ImportError, AttributeError) as err:
            raise ValueError(f"cannot import the classifier factory {name_or_path!r}: {err}") from None
        net = factory()
        if not isinstance(net, torch.nn.Module):
            raise TypeError(f"{name_or_path} returned {type(net).__name__}, not an nn.Module")
        return net.to(device).eval()
    return PaperClassifier.from_pretrained(name_or_path, device=device)


def _data(args: argparse.Namespace, split: str):
    """``--data`` (your own images: a folder of class subfolders, a .safetensors or .npz) or the data set's split."""
    from .data import load_dataset, load_user_data

    return load_user_data(args.data) if getattr(args, "data", None) else load_dataset(args.dataset, split, root=args.data_root)


def _cmd_data(args: argparse.Namespace) -> None:
    from .data import fetch

    print(f"{args.name}: files verified in {fetch(args.name, args.root)}")


def _cmd_train(args: argparse.Namespace) -> None:
    import torch

    from .data import load_dataset
    from .training import TrainConfig, fit

    from .model_card import model_card
    from .recipes import DEFAULT_RECIPE, FINETUNE_RECIPE

    options = {f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig) if getattr(args, f.name) is not None}
    source = _load_classifier(args.source, args.device or "cpu")
    started = time.perf_counter()
    model = fit(
        load_dataset(args.dataset, "train", root=args.data_root),
        source,
        val_dataset=load_dataset(args.dataset, "val", root=args.data_root),
        recipe=args.recipe,
        init=args.init,
        attack_models=[_load_classifier(name, args.device or "cpu") for name in args.attack_models],
        checkpoint_dir=args.checkpoint_dir,
        device=args.device,
        **options,
    )
    recipe = args.recipe or (FINETUNE_RECIPE if args.init else DEFAULT_RECIPE)
    training: dict[str, Any] = {"recipe": recipe, "overrides": options, "source": args.source,
                                **({"attack models": args.attack_models} if args.attack_models else {}),
                                "epochs": len(model.training_history), "seconds (this run)": round(time.perf_counter() - started),
                                "command": _command(args)}
    if model.training_init is not None:
        training["fine-tuned from"] = model.training_init
    last = model.training_history[-1].to_dict() if model.training_history else {}
    metrics = {key.removeprefix("val_"): float(value) for key, value in last.items()
               if key.startswith("val_") and isinstance(value, float) and math.isfinite(value)}
    name = Path(args.out).name
    model.save_pretrained(args.out, dtype=None if args.fp32 else torch.float16,
                          metadata={"name": name, "dataset": args.dataset, "metrics": metrics, "training": training})
    (Path(args.out) / "history.json").write_text(json.dumps([h.to_dict() for h in model.training_history], indent=2))
    description = (f"A PuVAE purifier for {args.dataset} trained with puvae-defense (recipe {recipe!r}"
                   + (f", fine-tuned from {model.training_init['name']!r}" if model.training_init else "") + "). "
                   "Metrics are on the first validation images after the last epoch (percentages; rmse and kl raw).")
    (Path(args.out) / "README.md").write_text(model_card(name=name, model_type="puvae", dataset=args.dataset,
                                                         load_as=str(args.out),
                                                         description=description, metrics=metrics,
                                                         training={k: json.dumps(v) if isinstance(v, dict) else v
                                                                   for k, v in training.items()}))
    print(f"saved {args.out}")


def _cmd_train_baseline(args: argparse.Namespace) -> None:
    import torch

    from .baselines import fit_adversarial_classifier, fit_defense_gan, fit_magnet
    from .classifiers import accuracy
    from .data import load_dataset

    train = load_dataset(args.dataset, "train", root=args.data_root)
    val = load_dataset(args.dataset, "val", root=args.data_root)
    started = time.perf_counter()
    if args.defense == "magnet":
        model = fit_magnet(train, epochs=args.epochs or 100, noise=args.noise, seed=args.seed, device=args.device)
        images = val.images[:2000].to(model.encoder[0].weight.device)
        with torch.no_grad():
            score = {"val_mse": float(torch.nn.functional.mse_loss(model.purify(images), images))}
    elif args.defense == "defense-gan":
        model = fit_defense_gan(train, generator_steps=args.generator_steps, seed=args.seed, device=args.device,
                                checkpoint_dir=args.checkpoint_dir)
        images = val.images[:args.val_images].to(model.fc.weight.device)
        score = {f"val{len(images)}_projection_mse_L200_R20": float(model.project(images, torch.Generator().manual_seed(args.seed))[1].mean())}
    else:
        model = fit_adversarial_classifier(train, args.arch, eps=args.eps, clean_weight=args.clean_weight,
                                           epochs=args.epochs or 5, seed=args.seed, device=args.device)
        score = {"val_accuracy": accuracy(model, val, device=args.device)}
    training = {"defense": args.defense, "command": _command(args),
                "seconds": round(time.perf_counter() - started)}
    model.save_pretrained(args.out, dtype=torch.float16, metadata={"metrics": score, "training": training})
    print(f"{args.defense}: {json.dumps(score)}; saved {args.out}")


def _cmd_purify(args: argparse.Namespace) -> None:
    from .model import PuVAE
    from .purification import purify_dataset

    _new_file(args.out, option="--out")  # before the work, not at its end
    data = _data(args, args.split)
    if args.limit is not None:
        data = data.subset(0, args.limit)
    purifier = PuVAE.from_pretrained(args.purifier, device=args.device)
    result = purify_dataset(purifier, data, batch_size=args.batch_size, sigma_eps=args.sigma_eps, seed=args.seed)
    agree = float((result.projection_labels == result.labels).float().mean()) * 100
    path = result.save(args.out, metadata={"purifier": str(args.purifier), "dataset": args.dataset, "split": args.split,
                                           "sigma_eps": str(args.sigma_eps), "seed": str(args.seed)})
    print(f"wrote {path}: {len(result.labels)} images in {result.seconds:.1f} s ({result.images_per_second:.0f} images/s); "
          f"projection picks the true class for {agree:.2f}%")


def _cmd_export(args: argparse.Namespace) -> None:
    from .classifier import PurifiedClassifier
    from .data import load_dataset
    from .export import OnnxModel, compare_onnx, export_onnx
    from .model import PuVAE

    _new_file(args.out, option="--out")
    purifier = PuVAE.from_pretrained(args.purifier)
    model = PurifiedClassifier(_load_classifier(args.classifier, "cpu"), purifier, sigma_eps=0.0) if args.classifier else purifier
    path = export_onnx(model, args.out)
    print(f"wrote {path} ({path.stat().st_size / 2**20:.1f} MiB)")
    if args.check:
        images = load_dataset(args.dataset, "test", root=args.data_root).images[:args.check]
        print(json.dumps(compare_onnx(model, OnnxModel(path), images), indent=2))


def _cmd_train_classifier(args: argparse.Namespace) -> None:
    import torch

    from .classifiers import accuracy, fit_classifier, gaussian_noise_objective
    from .data import load_dataset

    objective = gaussian_noise_objective(args.noise_sigma) if args.noise_sigma is not None else None
    started = time.perf_counter()
    model = fit_classifier(load_dataset(args.dataset, "train", root=args.data_root), args.arch,
                           epochs=args.epochs, device=args.device, seed=args.seed, objective=objective)
    seconds = time.perf_counter() - started
    val = accuracy(model, load_dataset(args.dataset, "val", root=args.data_root), device=args.device)
    metadata = {"dataset": args.dataset, "metrics": {"val_accuracy": round(val, 2)},
                "training": {"command": _command(args), "epochs": args.epochs, "seed": args.seed,
                             "optimizer": "Adam 1e-3, cosine schedule, batch 128",
                             "wall time": f"{seconds:.0f} s",
                             **({"gaussian_noise_sigma": args.noise_sigma} if args.noise_sigma is not None else {})}}
    model.save_pretrained(args.out, dtype=torch.float16, metadata=metadata)
    print(f"classifier {args.arch}: validation accuracy {val:.2f}%; saved {args.out}")


#: Built-in defense labels of ``evaluate --defenses``: label -> default purifier (``{dataset}``
#: filled in); adversarial training has no purifier and brings its own classifiers.
BUILTIN_DEFENSES = {"puvae": "puvae-{dataset}", "puvae+squeeze": "puvae-{dataset}", "magnet": "magnet-{dataset}",
                    "defense-gan": "defense-gan-{dataset}", "adv-training": "none", "adv-training-transfer": "none"}
#: Adversarial training's labels: attacked on its own classifier, or on the undefended one (transfer).
ADVERSARIAL_TRAINING = {"adv-training": False, "adv-training-transfer": True}
#: A label with this suffix puts 1-bit squeezing (Feature Squeezing) in front of its purifier.
SQUEEZE_SUFFIX = "+squeeze"

#: Images ``evaluate --data`` measures when no ``--limit`` is given: minutes, not hours, on a CPU.
USER_DATA_LIMIT = 500


def _defense_specs(args: argparse.Namespace) -> dict[str, str]:
    """``--defenses`` as label -> purifier source (folder, registered name, Hub repo id or ``none``)."""
    specs: dict[str, str] = {}
    for item in args.defenses:
        label, sep, source = item.partition("=")
        if not sep:
            if label not in BUILTIN_DEFENSES:
                raise SystemExit(f"unknown defense {label!r}: use one of {sorted(BUILTIN_DEFENSES)} or LABEL=PURIFIER")
            source = BUILTIN_DEFENSES[label].format(dataset=args.dataset)
        if not label or not source or label in specs:
            raise SystemExit(f"bad or repeated defense {item!r}: expected LABEL or LABEL=PURIFIER, each label once")
        specs[label] = source
    return specs


def _evaluation_inputs(args: argparse.Namespace):
    from .baselines import BitDepthSqueeze, DefenseGAN, load_purifier, parse_search
    from .classifier import PurifiedClassifier
    from .serialization import weights_fingerprint

    classifiers = dict(item.split("=", 1) for item in args.classifiers)
    own = dict(item.split("=", 1) for item in args.adv_classifiers) if args.adv_classifiers else {
        name: f"{args.dataset}-adv-classifier-{name.lower()}" for name in classifiers}
    nets = {name: _load_classifier(path, args.device) for name, path in classifiers.items()}
    loaded: dict[str, tuple[Any, str]] = {}  # source -> (purifier, fingerprint): puvae and puvae+squeeze share one
    try:
        steps, restarts = parse_search(args.gan_search) if args.gan_search is not None else (None, None)
    except ValueError as error:
        raise SystemExit(f"--gan-search: {error}") from None
    purifiers, defenses, sources = {}, {}, {}
    for label, source in _defense_specs(args).items():
        if source not in loaded:
            purifier = load_purifier(source, device=args.device)
            if isinstance(purifier, DefenseGAN):
                purifier = purifier.with_search(steps=steps, restarts=restarts, precision=args.gan_precision)
            loaded[source] = purifier, weights_fingerprint(purifier)
        purifier, fingerprint = loaded[source]
        purifiers[label] = purifier
        adversarial = label in ADVERSARIAL_TRAINING
        if adversarial and set(own) != set(classifiers):
            raise SystemExit(f"--adv-classifiers names {sorted(own)}, expected {sorted(classifiers)}")
        defended_nets = {name: _load_classifier(own[name], args.device) for name in classifiers} if adversarial else nets
        squeeze = BitDepthSqueeze(1) if label.endswith(SQUEEZE_SUFFIX) else None
        defenses[label] = {name: PurifiedClassifier(net, purifier, sigma_eps=args.sigma_eps, input_transform=squeeze)
                           for name, net in defended_nets.items()}
        sources[label] = {"purifier": source, "type": getattr(purifier, "model_type", "none"),
                          **({"search": {k: getattr(purifier.config, k) for k in ("steps", "restarts", "precision")}}
                             if isinstance(purifier, DefenseGAN) else {}),
                          **({"input_transform": repr(squeeze)} if squeeze is not None else {}),
                          **({"classifiers": [f"{n}={own[n]}" for n in classifiers]} if adversarial else {}),
                          "fingerprint": fingerprint,
                          **({"classifier_fingerprints": {n: weights_fingerprint(net) for n, net in defended_nets.items()}}
                             if adversarial else {})}
    if (args.gan_search or args.gan_precision) and not any(isinstance(p, DefenseGAN) for p in purifiers.values()):
        raise SystemExit("--gan-search and --gan-precision set Defense-GAN's projection, and --defenses has no Defense-GAN")
    return purifiers, nets, defenses, sources, _data(args, "test")


#: Command-line key -> name in ``evaluation.ADAPTIVE_ATTACKS`` (spelled out here so that building
#: the parser does not import torch; ``EvalSettings`` rejects a name that drifts).
ADAPTIVE_KEYS = {"full": "PGD (full gradient)", "bpda": "PGD + BPDA", "bpda-tracked": "PGD + BPDA (tracked)",
                 "eot": "PGD + EOT", "distance": "PGD on the distances", "bits": "Search over squeezed bits"}


def _evaluation_defaults(args: argparse.Namespace) -> None:
    """Fill ``--classifiers`` and ``--name`` (the paper's table for the data set, e.g.
    ``table3_fashion-mnist``) from ``--dataset`` when they are not given."""
    from .evaluation import PAPER_DATASETS

    if args.classifiers is None:
        args.classifiers = [f"A={args.dataset}-classifier-a", f"B={args.dataset}-classifier-b"]
    if args.data is not None and args.limit is None:
        args.limit = USER_DATA_LIMIT
        print(f"evaluating the first {USER_DATA_LIMIT} images of {args.data} (--limit N for more); intervals are 95% "
              "Wilson intervals", file=sys.stderr)
    if args.name is None:
        args.name = (f"evaluate_{Path(args.data).stem}" if args.data is not None
                     else f"table{PAPER_DATASETS[args.dataset][1]}_{args.dataset}")


def _attack_params(items: list[str]) -> dict[str, object]:
    """``["pgd_steps=100", "bpda_track_every_restart=false"]`` -> their values (JSON numbers and booleans)."""
    params: dict[str, object] = {}
    for item in items:
        key, sep, text = item.partition("=")
        try:
            value = json.loads(text) if sep else None
        except json.JSONDecodeError:
            value = None
        if value is None:
            raise SystemExit(f"--attack-param takes KEY=VALUE with a number or true/false, got {item!r}")
        params[key.strip()] = value
    return params


def _cmd_evaluate(args: argparse.Namespace) -> None:
    import torch

    from .evaluation import AttackCache, EvalSettings, EvaluationProgress, evaluate, results_markdown

    # Same seed, same hardware, same numbers: no autotuned or nondeterministic kernels.
    torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.deterministic = True

    _evaluation_defaults(args)
    try:  # before loading anything: a bad setting fails at once
        settings = EvalSettings(
            attacks=tuple(args.attacks),
            adaptive=tuple(ADAPTIVE_KEYS[k] for k in args.adaptive) if args.adaptive_limit > 0 else (),
            limit=args.limit, adaptive_limit=args.adaptive_limit, batch_size=args.batch_size,
            sigma_eps=args.sigma_eps, seed=args.seed, dataset=args.dataset, overrides=_attack_params(args.attack_param),
        )
    except ValueError as error:
        raise SystemExit(str(error)) from None
    out = _new_folder(args.out, option="--out")
    if args.figure:
        _new_file(args.figure, option="--figure")
    purifiers, nets, defenses, sources, test = _evaluation_inputs(args)
    cache = AttackCache(args.cache) if args.cache else None
    transfer = [label for label in defenses if ADVERSARIAL_TRAINING.get(label)]
    checkpoint = EvaluationProgress(args.progress) if args.progress else None
    report = evaluate(nets, defenses, test, settings, cache=cache, transfer=transfer, progress=not args.quiet,
                      checkpoint=checkpoint)
    report["meta"]["command"] = _command(args)
    report["meta"]["classifiers"] = args.classifiers
    report["meta"]["defense_sources"] = sources
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{args.name}.json").write_text(json.dumps(report, indent=2) + "\n")
    table = results_markdown(report)
    (out / f"{args.name}.md").write_text(table)
    print(table)
    if args.figure:
        from .model import PuVAE
        from .visualize import projection_figure

        vae = next((p for p in purifiers.values() if isinstance(p, PuVAE)), None)
        if vae is None:
            raise SystemExit("--figure shows PuVAE's class projections; no defense of this run has them")
        projection_figure(vae, nets[next(iter(nets))], test, Path(args.figure), seed=args.seed)
        print(f"wrote {args.figure}")


def _cmd_certify(args: argparse.Namespace) -> None:
    import torch

    from .baselines import load_purifier
    from .certification import CertifySettings, certification_markdown, certify_dataset
    from .classifier import PurifiedClassifier
    from .serialization import weights_fingerprint
    from .smoothing import SmoothedClassifier

    try:  # before loading anything: a bad setting fails at once
        settings = CertifySettings(sigma=args.sigma, n0=args.n0, n=args.n, alpha=args.alpha, limit=args.limit,
                                   seed=args.seed, batch_size=args.batch_size)
    except ValueError as error:
        raise SystemExit(str(error)) from None
    out = _new_folder(args.out, option="--out")
    net = _load_classifier(args.classifier, args.device)
    base: torch.nn.Module = net
    # The run is the weights, not the names they were loaded by: a progress file written with a
    # folder path resumes under the registered name of the same weights.
    key: dict[str, Any] = {"dataset": args.dataset, "classifier_fingerprint": weights_fingerprint(net)}
    if args.purifier != "none":
        purifier = load_purifier(args.purifier, device=args.device)
        base = PurifiedClassifier(net, purifier, sigma_eps=args.sigma_eps).eval()
        key.update(purifier_fingerprint=weights_fingerprint(purifier), sigma_eps=args.sigma_eps)
    if args.precision != "fp32":  # another base classifier: its progress never mixes with float32's
        key["precision"] = args.precision
    smoothed = SmoothedClassifier(base, args.sigma, batch_size=args.batch_size, precision=args.precision)
    test = _data(args, "test")
    report = certify_dataset(smoothed, test, settings, key=key, progress_file=args.progress, device=args.device,
                             show_progress=not args.quiet)
    report["meta"].update(command=_command(args), classifier=args.classifier, purifier=args.purifier)
    out.mkdir(parents=True, exist_ok=True)
    name = args.name or f"certify_{args.dataset}_{Path(args.classifier).name}_{Path(args.purifier).name}_sigma{args.sigma:g}"
    (out / f"{name}.json").write_text(json.dumps(report, indent=1) + "\n")
    print(certification_markdown([(name, report)]), end="")
    print(f"wrote {out / name}.json")


def _cmd_compare_certificates(args: argparse.Namespace) -> None:
    from .certification import REPORT_RADII, compare_reports, comparison_markdown

    reports = []
    for path in (args.first, args.second):
        try:
            reports.append(json.loads(Path(path).read_text()))
        except FileNotFoundError:
            raise SystemExit(f"{path}: no such file") from None
        except OSError as error:
            raise SystemExit(f"{path}: cannot be read ({error.strerror})") from None
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise SystemExit(f"{path}: not JSON; expected a report written by `puvae-defense certify`") from None
    try:
        comparisons = compare_reports(*reports, radii=args.radii or REPORT_RADII)
    except ValueError as error:
        raise SystemExit(f"{args.first} and {args.second}: {error}") from None
    print(comparison_markdown(comparisons, Path(args.first).stem, Path(args.second).stem), end="")


def _cmd_diagnose(args: argparse.Namespace) -> None:
    from .baselines import load_purifier
    from .diagnosis import diagnose

    net = _load_classifier(args.classifier, args.device)
    data = _data(args, args.split)
    result = diagnose(net, load_purifier(args.purifier, device=args.device), data, limit=args.limit,
                      batch_size=args.batch_size, sigma_eps=args.sigma_eps, tolerance=args.tolerance, seed=args.seed,
                      warn=False)
    print(result)
    if args.json:
        print(json.dumps({**dataclasses.asdict(result), "drop": result.drop, "verdict": result.verdict}))


def _cmd_adapt(args: argparse.Namespace) -> None:
    import torch

    from .data import load_dataset
    from .baselines import load_purifier
    from .diagnosis import adapt, diagnose

    out = _new_folder(args.out, option="--out")
    net = _load_classifier(args.classifier, args.device)
    purifier = load_purifier(args.purifier, device=args.device)
    train = load_dataset(args.dataset, "train", root=args.data_root)
    if args.limit is not None:
        train = train.subset(0, args.limit)
    val = load_dataset(args.dataset, "val", root=args.data_root)
    adapted = adapt(net, purifier, train, epochs=args.epochs, lr=args.lr, batch_size=args.batch_size,
                    clean_fraction=args.clean_fraction, sigma_eps=args.sigma_eps, seed=args.seed, progress=not args.quiet)
    before = diagnose(net, purifier, val, limit=args.val_images, sigma_eps=args.sigma_eps, seed=args.seed, warn=False)
    after = diagnose(adapted, purifier, val, limit=args.val_images, sigma_eps=args.sigma_eps, seed=args.seed, warn=False)
    metrics = {"val_accuracy": round(after.clean_accuracy, 2), "val_accuracy_through_purifier": round(after.purified_accuracy, 2),
               "val_accuracy_before": round(before.clean_accuracy, 2),
               "val_accuracy_through_purifier_before": round(before.purified_accuracy, 2)}
    adapted.save_pretrained(out, dtype=torch.float16, metadata={
        "dataset": args.dataset, "metrics": metrics,
        "training": {"command": _command(args), "adapted from": args.classifier, "purifier": args.purifier}})
    print(f"before: {before.clean_accuracy:.2f}% alone, {before.purified_accuracy:.2f}% behind the purifier; "
          f"after: {after.clean_accuracy:.2f}% and {after.purified_accuracy:.2f}% (first {after.images:,} validation "
          f"images); saved {out}")


def _cmd_push(args: argparse.Namespace) -> None:
    from .hub import push_to_hub, update_registry

    commit, sha256 = push_to_hub(args.folder, args.repo_id, private=args.private)
    print(f"pushed {args.folder} to {args.repo_id}: revision {commit}, sha256 {sha256}")
    if args.update_registry:
        registry = Path(__file__).resolve().parent / "registry.json"
        update_registry(registry, args.update_registry, revision=commit, sha256=sha256)
        print(f"pinned {args.update_registry!r} in {registry}")


def _cmd_list(args: argparse.Namespace) -> None:
    from .hub import get_entry, list_models

    entries = [get_entry(name) for name in list_models()]
    if args.json:
        print(json.dumps([{"name": e.name, "type": e.model_type, "dataset": e.dataset, "repo_id": e.repo_id,
                           "revision": e.revision, "sha256": e.sha256, "metrics": dict(e.metrics),
                           "description": e.description} for e in entries], indent=2))
        return
    header = ("NAME", "TYPE", "DATASET", "PINNED BY", "MEASURED")
    def measured(metrics: dict[str, float]) -> str:
        tested = [(k.removeprefix("test_"), v) for k, v in metrics.items() if k.startswith("test_")]
        if not tested:
            return "-"
        more = f" (+{len(tested) - 1} more)" if len(tested) > 1 else ""
        return f"{tested[0][0]} {tested[0][1]:.2f}%{more}"

    rows = [(e.name, e.model_type, e.dataset, f"revision {e.revision[:12]}" if e.revision else "sha256",
             measured(dict(e.metrics))) for e in entries]
    widths = [max(len(row[i]) for row in (header, *rows)) for i in range(len(header))]
    for row in (header, *rows):
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())
    print("\n`puvae-defense list-models --json` gives every field, with descriptions; docs/weights.md the model cards.")


#: Help of options that several commands share (filled where a command gives none of its own).
_COMMON_HELP = {
    "dataset": "data set", "data_root": "data root (default $PUVAE_DEFENSE_DATA or the user cache)",
    "device": "torch device (cpu, cuda, cuda:1, ...)", "seed": "seeds every random choice",
    "checkpoint_dir": "write a checkpoint after every epoch here and resume from the latest",
    "batch_size": "images per batch", "sigma_eps": "PuVAE's sampling noise at inference (paper: 0.1; 0: deterministic)",
    "quiet": "no progress bars", "out": "where to write", "epochs": "passes over the training set",
    "arch": "the paper's classifier architecture (A-D), the source classifier, or Carlini & Wagner's (cw)",
    "split": "which split", "folder": "the weights folder (config.json, model.safetensors, README.md)",
    "repo_id": "Hub repository, ORGANIZATION/NAME", "private": "create the repository private",
    "name": "data set name", "action": "what to do",
}


def _document_defaults(parser: argparse.ArgumentParser) -> None:
    """Give every option a help text and show its default (argparse's ``%(default)s``)."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            action.help = action.help or _COMMON_HELP["action"]
            for child in action.choices.values():
                _document_defaults(child)
            continue
        if action.help is argparse.SUPPRESS or isinstance(action, (argparse._HelpAction, argparse._VersionAction)):
            continue
        action.help = action.help or _COMMON_HELP.get(action.dest, action.dest.replace("_", " "))
        shows_default = "default" in action.help
        if action.option_strings and not shows_default and not any(action.default is v for v in (None, False, argparse.SUPPRESS)):
            action.help += " (default: %(default)s)"


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``puvae-defense``."""
    from ._version import __version__

    parser = argparse.ArgumentParser(prog="puvae-defense", description="PuVAE adversarial purification")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress at INFO level")
    parser.add_argument("--debug", action="store_true", help="show the full traceback of an error")
    sub = parser.add_subparsers(dest="command", required=True)

    data = sub.add_parser("data", help="offline data sets")
    data_sub = data.add_subparsers(dest="action", required=True)
    fetch = data_sub.add_parser("fetch", help="lay out a data set's files and verify their md5")
    fetch.add_argument("name", choices=["mnist", "fashion-mnist"])
    fetch.add_argument("--root", default=None, help="data root (default $PUVAE_DEFENSE_DATA or the user cache)")
    fetch.set_defaults(func=_cmd_data)

    train = sub.add_parser("train", help="train a PuVAE (fit)")
    train.add_argument("--dataset", default="mnist", choices=["mnist", "fashion-mnist", "cifar10"])
    train.add_argument("--source", required=True, help="source classifier: folder or registered name")
    train.add_argument("--attack-models", nargs="+", default=[], metavar="CLASSIFIER",
                       help="more classifiers (folders or registered names) whose FGSM / PGD images the encoder "
                            "also sees (ensemble adversarial training; fit's attack_models)")
    train.add_argument("--out", required=True, help="folder for config.json + model.safetensors")
    train.add_argument("--checkpoint-dir", default=None)
    train.add_argument("--device", default=None)
    train.add_argument("--data-root", default=None)
    train.add_argument("--fp32", action="store_true", help="store float32 weights (default float16)")
    train.add_argument("--recipe", default=None,
                       help="named recipe (puvae_defense.recipes): 'robust' (default, ours), 'paper' (the paper, "
                            "literally), 'finetune' (default with --init), 'smooth' (a denoiser for randomized smoothing, "
                            "with --init); the options below override single fields")
    train.add_argument("--init", default=None,
                       help="fine-tune this PuVAE (folder, registered name such as puvae-mnist, or Hub repo id) "
                            "instead of starting from random weights")
    _add_train_options(train)
    train.set_defaults(func=_cmd_train)

    train_clf = sub.add_parser("train-classifier", help="train one of the paper's classifiers")
    train_clf.add_argument("--dataset", default="mnist", choices=["mnist", "fashion-mnist", "cifar10"])
    train_clf.add_argument("--arch", required=True, choices=["A", "B", "C", "D", "source", "cw"])
    train_clf.add_argument("--out", required=True)
    train_clf.add_argument("--epochs", type=_positive_int, default=10)
    train_clf.add_argument("--seed", type=_count, default=0)
    train_clf.add_argument("--noise-sigma", type=_positive_float, default=None, metavar="SIGMA",
                           help="train on Gaussian-noisy images clip(x + SIGMA * N(0, I)) (Cohen et al.'s base classifier "
                                "for randomized smoothing; default: clean images)")
    train_clf.add_argument("--device", default=None)
    train_clf.add_argument("--data-root", default=None)
    train_clf.set_defaults(func=_cmd_train_classifier)

    ev = sub.add_parser("evaluate", help="reproduce Table 2 (gray-box) and run adaptive attacks")
    ev.add_argument("--dataset", default="mnist", choices=["mnist", "fashion-mnist", "cifar10"])
    ev.add_argument("--defenses", nargs="+", default=["puvae"], metavar="LABEL[=PURIFIER]",
                    help="defenses measured on the same images in one run: puvae, magnet, defense-gan (the registered "
                         "'<label>-<dataset>' purifier), adv-training (no purifier, classifiers from --adv-classifiers, "
                         "attacked on themselves), adv-training-transfer (the same classifiers, attacked on the "
                         "undefended --classifiers), "
                         "puvae+squeeze (1-bit squeezing, Feature Squeezing, before puvae), or LABEL=PURIFIER for a "
                         "folder, registered name, Hub repo id or 'none'; a LABEL ending in +squeeze squeezes first "
                         "(default: puvae)")
    ev.add_argument("--classifiers", nargs="+", default=None, metavar="NAME=MODEL",
                    help="target classifiers (default: A=<dataset>-classifier-a B=<dataset>-classifier-b)")
    ev.add_argument("--adv-classifiers", nargs="+", default=None, metavar="NAME=MODEL",
                    help="adversarially trained counterparts of --classifiers for the adv-training defense (default: "
                         "'<dataset>-adv-classifier-<name>', e.g. mnist-adv-classifier-a)")
    ev.add_argument("--attacks", nargs="*", default=["FGSM", "iFGSM", "RAND+FGSM", "CW"],
                    help="gray-box attacks (none: only clean accuracy and adaptive attacks)")
    ev.add_argument("--limit", type=_positive_int, default=None,
                    help=f"first N test images (default all of the data set's test split; with --data the first {USER_DATA_LIMIT})")
    ev.add_argument("--adaptive", nargs="*", default=list(ADAPTIVE_KEYS), choices=list(ADAPTIVE_KEYS),
                    help="adaptive attacks: PGD through the full purifier, with BPDA, with BPDA on a projection "
                         "tracked from step to step (Defense-GAN only), with EOT, on the purifier's distances "
                         "(PuVAE only), a search over the binary images 1-bit squeezing lets the eps-ball reach "
                         "(+squeeze defenses only) (default all that apply)")
    ev.add_argument("--adaptive-limit", type=_count, default=1000, help="images for adaptive attacks (0: none)")
    ev.add_argument("--attack-param", nargs="+", default=[], metavar="KEY=VALUE",
                    help="replace an attack parameter, e.g. pgd_steps=100 or bpda_track_every_restart=false "
                         "(the names of evaluation.ATTACK_SETTINGS; recorded in the report)")
    ev.add_argument("--batch-size", type=_positive_int, default=500)
    ev.add_argument("--sigma-eps", type=_sigma_eps, default=0.1)
    ev.add_argument("--seed", type=_count, default=0)
    ev.add_argument("--device", default="cpu")
    ev.add_argument("--data-root", default=None)
    ev.add_argument("--data", default=None, metavar="PATH",
                        help="your own labelled images instead of the data set: a folder with one subfolder of PNG/JPEG "
                             "images per class, or a .safetensors / .npz with 'images' (N, C, H, W) and 'labels'")
    ev.add_argument("--out", default="runs/evaluate", help="folder of the JSON and Markdown reports (default runs/evaluate)")
    ev.add_argument("--name", default=None,
                    help="results file name (default: the paper's table for --dataset, e.g. table2_mnist, "
                         "table3_fashion-mnist)")
    ev.add_argument("--figure", default=None, help="also write the projection figure (PNG) here")
    ev.add_argument("--cache", default=None, metavar="DIR",
                    help="keep gray-box adversarial examples here and reuse them (they do not depend on the purifier)")
    ev.add_argument("--progress", default=None, metavar="FILE",
                    help="record the progress here after every batch; the same command resumes from it (also with a "
                         "larger --limit when it stopped on a whole batch), giving the numbers of one uninterrupted run")
    ev.add_argument("--gan-precision", default=None, choices=["fp32", "bf16"],
                    help="arithmetic of Defense-GAN's projection (default: the weights' config, fp32); bf16 autocast "
                         "is about 2.4x faster on CPUs with AMX units")
    ev.add_argument("--gan-search", default=None, metavar="LxR",
                    help="Defense-GAN's projection with L steps and R random restarts instead of the weights' own "
                         "(the paper's 200x20); recorded in the report")
    ev.add_argument("--quiet", action="store_true")
    ev.set_defaults(func=_cmd_evaluate)

    cert = sub.add_parser("certify", help="certified L2 robustness by randomized smoothing (Cohen et al., 2019)")
    cert.add_argument("--dataset", default="mnist", choices=["mnist", "fashion-mnist", "cifar10"])
    cert.add_argument("--classifier", required=True,
                      help="the base classifier: folder or registered name, a TorchScript file, or package.module:factory")
    cert.add_argument("--purifier", default="none",
                      help="denoiser in front of the classifier: folder, registered name (e.g. puvae-mnist-smooth, "
                           "magnet-mnist) or 'none' (default: none, the classifier smoothed alone)")
    cert.add_argument("--sigma", type=_positive_float, required=True, help="standard deviation of the smoothing noise")
    cert.add_argument("--n0", type=_positive_int, default=100, help="noisy copies that choose the class (default 100)")
    cert.add_argument("--n", type=_positive_int, default=10_000, help="noisy copies that bound its probability (default 10,000)")
    cert.add_argument("--alpha", type=_positive_float, default=0.001, help="failure probability of a certificate (default 0.001)")
    cert.add_argument("--limit", type=_positive_int, default=200, help="certify the first N test images (default 200)")
    cert.add_argument("--batch-size", type=_positive_int, default=1000, help="noisy copies classified at once (default 1000)")
    cert.add_argument("--sigma-eps", type=_sigma_eps, default=0.1, help="PuVAE's sampling noise (default 0.1)")
    cert.add_argument("--seed", type=_count, default=0, help="image i's noise is seeded with seed * 1000003 + i (default 0)")
    cert.add_argument("--precision", default="fp32", choices=["fp32", "bf16"],
                      help="arithmetic of the base classifier (default fp32); bf16 autocast (1.5x faster on a CPU with "
                           "bf16 units in docs/smoothing.md) certifies the classifier in that arithmetic (recorded in the report)")
    cert.add_argument("--device", default="cpu", help="default cpu")
    cert.add_argument("--data-root", default=None)
    cert.add_argument("--data", default=None, metavar="PATH",
                        help="your own labelled images instead of the data set: a folder with one subfolder of PNG/JPEG "
                             "images per class, or a .safetensors / .npz with 'images' (N, C, H, W) and 'labels'")
    cert.add_argument("--out", default="runs/certify", help="folder of the JSON report (default runs/certify)")
    cert.add_argument("--name", default=None, help="report name (default from the dataset, models and sigma)")
    cert.add_argument("--progress", default=None, metavar="FILE",
                      help="record every image's certificate here; the same command resumes from it (also with a "
                           "larger --limit)")
    cert.add_argument("--quiet", action="store_true", help="no progress bar")
    cert.set_defaults(func=_cmd_certify)

    compare = sub.add_parser("compare-certificates",
                             help="compare two certify reports on the same images, image by image (McNemar's exact test)")
    compare.add_argument("first", help="a report written by `puvae-defense certify`")
    compare.add_argument("second", help="another, on the same data set")
    compare.add_argument("--radii", type=_nonnegative_float, nargs="+", default=None,
                         help="radii to compare at (default 0 0.25 0.5 0.75 1 1.5 2)")
    compare.set_defaults(func=_cmd_compare_certificates)

    diag = sub.add_parser("diagnose", help="does the purifier fit your classifier? accuracy with and without it, "
                                           "the projection's own accuracy, a verdict and the next step")
    diag.add_argument("--classifier", required=True,
                      help="your classifier: folder or registered name, a TorchScript file (.pt, .ts), or "
                           "package.module:factory (an importable callable returning the network)")
    diag.add_argument("--purifier", default="puvae-mnist", help="folder, registered name or Hub repo id")
    diag.add_argument("--dataset", default="mnist", choices=["mnist", "fashion-mnist", "cifar10"])
    diag.add_argument("--split", default="val", choices=["train", "val", "test"])
    diag.add_argument("--data", default=None, metavar="PATH",
                        help="your own labelled images instead of the data set: a folder with one subfolder of PNG/JPEG "
                             "images per class, or a .safetensors / .npz with 'images' (N, C, H, W) and 'labels'")
    diag.add_argument("--limit", type=_positive_int, default=1000, help="first N images")
    diag.add_argument("--batch-size", type=_positive_int, default=250)
    diag.add_argument("--sigma-eps", type=_sigma_eps, default=0.1)
    diag.add_argument("--tolerance", type=_nonnegative_float, default=1.0,
                      help="largest acceptable accuracy drop, in points")
    diag.add_argument("--seed", type=_count, default=0)
    diag.add_argument("--device", default="cpu")
    diag.add_argument("--data-root", default=None)
    diag.add_argument("--json", action="store_true", help="also print the measurements as one JSON line")
    diag.set_defaults(func=_cmd_diagnose)

    adapt_cmd = sub.add_parser("adapt", help="fine-tune a copy of your classifier on purified (and clean) training images")
    adapt_cmd.add_argument("--classifier", required=True, help="your classifier: folder or registered name")
    adapt_cmd.add_argument("--purifier", default="puvae-mnist", help="folder, registered name or Hub repo id")
    adapt_cmd.add_argument("--out", required=True, help="folder for the adapted classifier")
    adapt_cmd.add_argument("--dataset", default="mnist", choices=["mnist", "fashion-mnist", "cifar10"])
    adapt_cmd.add_argument("--limit", type=_positive_int, default=None, help="first N training images (default all)")
    adapt_cmd.add_argument("--epochs", type=_positive_int, default=1)
    adapt_cmd.add_argument("--lr", type=_positive_float, default=1e-4, help="Adam learning rate")
    adapt_cmd.add_argument("--batch-size", type=_positive_int, default=128)
    adapt_cmd.add_argument("--clean-fraction", type=_nonnegative_float, default=0.5,
                           help="share of each batch kept clean (the rest purified)")
    adapt_cmd.add_argument("--sigma-eps", type=_sigma_eps, default=0.1)
    adapt_cmd.add_argument("--val-images", type=_positive_int, default=1000, help="validation images measured before and after")
    adapt_cmd.add_argument("--seed", type=_count, default=0)
    adapt_cmd.add_argument("--device", default="cpu")
    adapt_cmd.add_argument("--data-root", default=None)
    adapt_cmd.add_argument("--quiet", action="store_true")
    adapt_cmd.set_defaults(func=_cmd_adapt)

    push = sub.add_parser("push", help="upload a weights folder to the Hugging Face Hub")
    push.add_argument("folder")
    push.add_argument("--repo-id", required=True)
    push.add_argument("--private", action="store_true")
    push.add_argument("--update-registry", metavar="NAME", default=None,
                      help="pin NAME in puvae_defense/registry.json to the new revision and sha256")
    push.set_defaults(func=_cmd_push)

    baseline = sub.add_parser("train-baseline", help="train a baseline defence of the paper's Table 2")
    baseline.add_argument("defense", choices=["magnet", "defense-gan", "adv-training"],
                          help="magnet: MagNet's reformer; defense-gan: Defense-GAN's WGAN-GP generator; adv-training: a "
                               "classifier trained on its own FGSM images")
    baseline.add_argument("--out", required=True)
    baseline.add_argument("--dataset", default="mnist", choices=["mnist", "fashion-mnist", "cifar10"])
    baseline.add_argument("--arch", default="A", choices=["A", "B", "C", "D", "source", "cw"], help="adv-training only")
    baseline.add_argument("--epochs", type=_positive_int, default=None, help="default: MagNet 100, adversarial training 5")
    baseline.add_argument("--eps", type=_nonnegative_float, default=0.3, help="adv-training: FGSM budget")
    baseline.add_argument("--clean-weight", type=_nonnegative_float, default=0.5, help="adv-training: weight of the clean loss")
    baseline.add_argument("--noise", type=_nonnegative_float, default=0.1, help="magnet: training noise (standard deviation)")
    baseline.add_argument("--generator-steps", type=_positive_int, default=20000,
                          help="defense-gan: generator updates (Defense-GAN trains 200,000)")
    baseline.add_argument("--checkpoint-dir", default=None, help="defense-gan: checkpoints every 1,000 steps; resumes")
    baseline.add_argument("--val-images", type=_count, default=64,
                          help="defense-gan: validation images projected (L = 200, R = 20: seconds per image on a CPU)")
    baseline.add_argument("--seed", type=_count, default=0)
    baseline.add_argument("--device", default=None)
    baseline.add_argument("--data-root", default=None)
    baseline.set_defaults(func=_cmd_train_baseline)

    purify = sub.add_parser("purify", help="purify a whole data set split and store it (safetensors)")
    purify.add_argument("--purifier", default="puvae-mnist", help="folder, registered name or Hub repo id")
    purify.add_argument("--dataset", default="mnist", choices=["mnist", "fashion-mnist", "cifar10"])
    purify.add_argument("--split", default="test", choices=["train", "val", "test"])
    purify.add_argument("--out", required=True, help="the .safetensors file to write")
    purify.add_argument("--limit", type=_positive_int, default=None, help="first N images (default all)")
    purify.add_argument("--batch-size", type=_positive_int, default=500)
    purify.add_argument("--sigma-eps", type=_sigma_eps, default=0.1)
    purify.add_argument("--seed", type=_count, default=0)
    purify.add_argument("--device", default="cpu")
    purify.add_argument("--data-root", default=None)
    purify.add_argument("--data", default=None, metavar="PATH",
                        help="your own labelled images instead of the data set: a folder with one subfolder of PNG/JPEG "
                             "images per class, or a .safetensors / .npz with 'images' (N, C, H, W) and 'labels'")
    purify.set_defaults(func=_cmd_purify)

    export = sub.add_parser("export", help="export the purifier, or a classifier behind it, to ONNX")
    export.add_argument("--purifier", default="puvae-mnist", help="folder, registered name or Hub repo id")
    export.add_argument("--classifier", default=None,
                        help="also put this classifier (folder or registered name) behind the purifier: the graph outputs "
                             "logits; without it the graph outputs purified images, labels and distances")
    export.add_argument("--out", required=True, help="the .onnx file")
    export.add_argument("--check", type=_count, default=0, metavar="N",
                        help="compare onnxruntime with torch on the first N test images and print the agreement")
    export.add_argument("--dataset", default="mnist", choices=["mnist", "fashion-mnist", "cifar10"])
    export.add_argument("--data-root", default=None)
    export.set_defaults(func=_cmd_export)

    listing = sub.add_parser("list-models", help="list the registered pretrained models")
    listing.add_argument("--json", action="store_true", help="every field of every entry, as JSON")
    _document_defaults(parser)
    listing.set_defaults(func=_cmd_list)
    return parser


#: Errors that mean the user asked for something that cannot be done (a bad file, value or name):
#: reported as one line, exit status 2, no traceback (``--debug`` shows it).
USER_ERRORS: tuple[type[BaseException], ...] = (ValueError, TypeError, FileNotFoundError, PermissionError,
                                                IsADirectoryError, NotADirectoryError, FileExistsError)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit status (0 done, 2 a user error, 130 interrupted)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = argv
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(message)s")
    try:
        args.func(args)
    except SystemExit as stop:  # the commands' own checks: SystemExit("message")
        if isinstance(stop.code, str) and not args.debug:
            print(f"{parser.prog} {args.command}: error: {stop.code}", file=sys.stderr)
            return 2
        raise
    except USER_ERRORS as error:
        if args.debug:
            raise
        print(f"{parser.prog} {args.command}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        if args.debug:
            raise
        print(f"{parser.prog} {args.command}: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
