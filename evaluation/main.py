"""`evaluate-saliency`: the `evaluate` stage, measuring the trained U-Net on real benchmarks.

Reads the `evaluate` section of params.yaml (command-line options override it), finds each
benchmark under the benchmarks root, runs every model it finds (the synthetic-trained U-Net, the
self-trained one when its folder holds a model) and the centre-prior baseline through the
inference protocol, each alone and, with `refinement`, "+ refinement" (evaluation/refinement.py),
and writes metrics, curves, a report and PNG grids (evaluation/report.py).
"""

from __future__ import annotations

import time
import warnings
from pathlib import Path
from typing import Any

import click
import torch

from evaluation.conventions import CONVENTIONS, get_convention
from evaluation.datasets import BenchmarkNotFound, Layout, generic_layout, get_layout, load_benchmark
from evaluation.download import DownloadError, download_benchmark
from evaluation.evaluate import REFINED_SUFFIX, BenchmarkResult, evaluate_benchmark, row_names
from evaluation.masks import UnreadableMaskError
from evaluation.predictors import CentrePrior, UNetPredictor
from evaluation.report import write_outputs
from generator.image_io import UnreadableImageError
from generator.params import load_params
from generator.runs import resolve_device

DEFAULTS: dict[str, Any] = {
    "model": "data/model",
    "selftrained_model": None,
    "refinement": False,
    "benchmarks_root": "data/benchmarks",
    "benchmarks": ["ECSSD", "DUTS-TE", "DUT-OMRON", "PASCAL-S", "HKU-IS", "CUB-200-2011", "Flowers"],
    "required": [],
    "conventions": ["paper"],
    "localisation": True,
    "batch_size": 16,
    "examples": 8,
    "limit": None,
    "download": False,
    "output": "data/eval",
    "device": "cpu",
    "threads": 1,
    "processes": 1,
}
DEFAULT_INPUT_SIZE = 128
TABLE_METRICS = ("max_f", "iou", "accuracy", "mae", "s_measure", "max_e", "max_box_acc", "pxap")


def _settings(params_path: str, overrides: dict[str, Any]) -> dict[str, Any]:
    settings = dict(DEFAULTS)
    if Path(params_path).is_file():
        try:
            section = load_params(params_path).get("evaluate") or {}
        except ValueError as error:
            raise click.ClickException(str(error)) from error
        if not isinstance(section, dict):
            raise click.ClickException(f"{params_path}: the `evaluate` section must be a mapping")
        unknown = set(section) - set(DEFAULTS)
        if unknown:
            raise click.ClickException(f"{params_path}: unknown evaluate settings {', '.join(sorted(unknown))}")
        settings.update(section)
    elif params_path != "params.yaml":
        raise click.ClickException(f"parameters file {params_path} not found")
    settings.update({key: value for key, value in overrides.items() if value is not None and value != ()})
    if overrides.get("benchmarks"):
        settings["required"] = _required_with_named(overrides["benchmarks"], overrides.get("required") or ())
    return settings


def _required_with_named(named: tuple[str, ...], required: tuple[str, ...]) -> list[str]:
    """The required list when --benchmark names the benchmarks: each named one must be found (asked
    for by name, it is not skipped), so params' `required` list is cut to these names; --required
    names are kept, and fail later when not in the list."""
    return list(dict.fromkeys([*named, *required]))


def _benchmark_specs(settings: dict[str, Any]) -> list[tuple[Layout, Path, bool]]:
    """(layout, folder, required) for each configured benchmark."""
    root = Path(settings["benchmarks_root"])
    required = set(settings["required"] or [])
    specs = []
    for entry in settings["benchmarks"] or []:
        if isinstance(entry, str):
            layout, folder = get_layout(entry), None
        elif isinstance(entry, dict) and "name" in entry:
            if entry.get("images") or entry.get("masks"):
                layout = generic_layout(entry["name"], entry.get("images", "images"), entry.get("masks", "masks"),
                                        bool(entry.get("recursive", False)))
            else:
                layout = get_layout(entry["name"])
            folder = entry.get("folder")
            if entry.get("required"):
                required.add(layout.name)
        else:
            raise click.ClickException(f"a benchmark entry must be a name or a mapping with `name`, got {entry!r}")
        specs.append((layout, Path(folder) if folder else root / layout.folder, layout.name in required))
    unknown = required - {layout.name for layout, _, _ in specs}
    if unknown:
        raise click.ClickException(f"required benchmarks not in the list: {', '.join(sorted(unknown))}")
    return specs


SELFTRAINED_NAME = "selftrained"


def _predictors(settings: dict[str, Any], notes: list[str]) -> list:
    """The synthetic-trained U-Net (row `model`), the self-trained one (row `selftrained`) when its
    folder holds a model, and the centre prior."""
    from trainer.export import CONFIG_NAME, WEIGHTS_NAME, TrainedModelError
    predictors = []
    model = settings["model"]
    if model not in (None, "", "none"):
        try:
            predictors.append(UNetPredictor.from_folder(model, device=settings["device"]))
        except (TrainedModelError, ValueError, RuntimeError) as error:
            raise click.ClickException(f"cannot load the trained model: {error}") from error
    selftrained = settings["selftrained_model"]
    if selftrained not in (None, "", "none"):
        folder = Path(selftrained)
        if (folder / WEIGHTS_NAME).is_file() or (folder / CONFIG_NAME).is_file():
            try:
                predictor = UNetPredictor.from_folder(folder, device=settings["device"])
            except (TrainedModelError, ValueError, RuntimeError) as error:
                raise click.ClickException(f"cannot load the self-trained model: {error}") from error
            predictor.name = SELFTRAINED_NAME
            predictors.append(predictor)
        else:
            notes.append(f"no self-trained model in {folder}: its row is left out (selftrain.enabled false?)")
    input_size = predictors[0].input_size if predictors else DEFAULT_INPUT_SIZE
    predictors.append(CentrePrior(input_size))
    return predictors


def _row_descriptions(predictors: list, refinement: bool) -> list[dict[str, Any]]:
    """What each row of the report is: its model and whether refinement was applied."""
    from evaluation import refinement as bilateral
    described = {predictor.name: predictor.describe() for predictor in predictors}
    rows = []
    for row in row_names(predictors, refinement):
        refined = row.endswith(REFINED_SUFFIX)
        name = row[:-len(REFINED_SUFFIX)] if refined else row
        rows.append({"row": row, "model": name, "kind": described[name].get("kind"), "refinement": refined and {
            "method": "fast bilateral solver (Barron and Poole 2016)", "sigma_spatial": bilateral.SIGMA_SPATIAL,
            "sigma_luma": bilateral.SIGMA_LUMA, "sigma_chroma": bilateral.SIGMA_CHROMA, "lam": bilateral.LAM}})
    return rows


def _warn(message: str, notes: list[str]) -> None:
    """On stderr now, and in the report's `warnings`."""
    click.echo(f"warning: {message}", err=True)
    notes.append(message)


def _nothing_evaluated(settings: dict[str, Any], skipped: list[dict[str, str]]) -> str:
    reasons = "; ".join(entry["reason"] for entry in skipped) or "the benchmark list is empty"
    return (f"no benchmark was evaluated (benchmarks root {settings['benchmarks_root']}): {reasons}; "
            "nothing was written")


def _print_table(results: list[BenchmarkResult]) -> None:
    header = f"{'benchmark':14s} {'convention':10s} {'predictor':24s} " + " ".join(f"{m:>11s}" for m in TABLE_METRICS)
    click.echo(header)
    for result in results:
        for convention, by_predictor in result.metrics.items():
            for predictor, values in by_predictor.items():
                cells = " ".join(f"{values[m]:11.4f}" if m in values else f"{'-':>11s}" for m in TABLE_METRICS)
                click.echo(f"{result.name:14s} {convention:10s} {predictor:24s} {cells}")


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--params", "params_path", type=click.Path(dir_okay=False), default="params.yaml", show_default=True,
              help="Parameters file; its `evaluate` section gives the defaults of every option below.")
@click.option("--model", default=None,
              help="Trained-model folder (unet.pt + unet.json, from train-unet); `none` for the baseline alone.")
@click.option("--benchmarks-root", type=click.Path(file_okay=False), default=None,
              help="Folder holding one folder per benchmark (default data/benchmarks).")
@click.option("--benchmark", "benchmarks", multiple=True,
              help="Benchmark to evaluate (repeatable): ECSSD, DUTS-TE, DUT-OMRON, PASCAL-S, HKU-IS, "
                   "CUB-200-2011, Flowers. Replaces the list in params, and params' `required` list with it: "
                   "each benchmark named here must be found.")
@click.option("--required", multiple=True,
              help="Benchmark that must be found (repeatable); a missing one fails the command instead of "
                   "being skipped with a warning. Replaces params' `required` list.")
@click.option("--convention", "conventions", multiple=True, type=click.Choice(sorted(CONVENTIONS)),
              help="Metric convention (repeatable): paper (the E-BigBiGAN code's, default) or toolbox "
                   "(PySODMetrics'). Every report names the one it used.")
@click.option("--localisation/--no-localisation", default=None,
              help="Also compute MaxBoxAcc and PxAP (the slowest metrics).")
@click.option("--selftrained-model", default=None,
              help="Self-trained model folder (from self-train); evaluated as row `selftrained` when it holds a "
                   "model; `none` to leave it out.")
@click.option("--refinement/--no-refinement", default=None,
              help="Also report each model \"+ refinement\" (rows `<name>_refined`): its maps refined against "
                   "the photo by the fast bilateral solver.")
@click.option("--batch-size", type=click.IntRange(min=1), default=None,
              help="Images predicted together (images are grouped by resized shape).")
@click.option("--examples", type=click.IntRange(min=0), default=None, help="Images in each benchmark's PNG grid.")
@click.option("--limit", type=click.IntRange(min=1), default=None,
              help="Evaluate only the first N pairs of each benchmark (for quick checks).")
@click.option("--download/--no-download", default=None,
              help="Fetch missing benchmarks from their official addresses, checking checksums (needs network).")
@click.option("--output", type=click.Path(file_okay=False), default=None, help="Output folder (default data/eval).")
@click.option("--device", default=None, help="Torch device for the model: auto, cpu, cuda or cuda:N.")
@click.option("--threads", type=click.IntRange(min=1), default=None,
              help="Torch threads on the CPU (default 1: images are decoded in a second thread meanwhile).")
@click.option("--processes", type=click.IntRange(min=1), default=None,
              help="Worker processes on the CPU, each predicting, refining and scoring its share of the batches "
                   "(default 1: all in this process). Numbers differ from one process's only by the rounding of "
                   "the sums; the same settings give the same numbers.")
@click.option("--quiet", is_flag=True, help="No progress bars.")
def main(params_path: str, quiet: bool, **options: Any) -> None:
    """Measure the trained saliency models and the centre-prior baseline on real benchmarks.

    Rows: `model` (the U-Net trained on synthetic pairs), `selftrained` (when --selftrained-model
    holds a model), `centre_prior`, and with --refinement each again as `<row>_refined`.

    Writes OUTPUT/metrics.json (DVC metrics: benchmark -> convention -> predictor -> metric),
    OUTPUT/plots/{pr,f_threshold}/*.csv (DVC plots), OUTPUT/report.json (conventions, model,
    unmatched files, skipped benchmarks, warnings, the files written) and OUTPUT/grids/<benchmark>.png.
    The curves and grids the previous run wrote are replaced; other files there are left alone.
    When no benchmark is found, nothing is written and the command fails.
    """
    settings = _settings(params_path, options)
    try:
        conventions = [get_convention(name) for name in settings["conventions"]]
    except ValueError as error:
        raise click.ClickException(str(error)) from error
    if not conventions:
        raise click.ClickException("no convention chosen")
    try:
        specs = _benchmark_specs(settings)
    except ValueError as error:
        raise click.ClickException(str(error)) from error
    try:
        settings["device"] = str(resolve_device(settings["device"]))
    except ValueError as error:
        raise click.ClickException(str(error)) from error
    torch.set_num_threads(int(settings["threads"]))
    processes = int(settings["processes"])
    if processes > 1 and settings["device"] != "cpu":
        raise click.ClickException(f"--processes {processes} runs on the CPU only; the device is {settings['device']}")
    notes: list[str] = []
    predictors = _predictors(settings, notes)
    for note in notes:
        click.echo(f"note: {note}", err=True)
    refinement = bool(settings["refinement"])
    output = Path(settings["output"])
    start = time.perf_counter()
    results, skipped = [], []
    for layout, folder, required in specs:
        if not folder.is_dir() and settings["download"]:
            try:
                download_benchmark(layout, folder.parent, log=click.echo)
            except DownloadError as error:
                if required:
                    raise click.ClickException(str(error)) from error
                notes.append(str(error))
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                benchmark = load_benchmark(layout, folder)
        except BenchmarkNotFound as error:
            if required:
                raise click.ClickException(f"required benchmark missing: {error}") from error
            click.echo(f"warning: skipping {layout.name}: {error}", err=True)
            skipped.append({"name": layout.name, "folder": str(folder), "reason": str(error)})
            continue
        for warning in caught:
            _warn(str(warning.message), notes)
        try:
            result = evaluate_benchmark(benchmark, predictors, conventions, int(settings["batch_size"]),
                                        bool(settings["localisation"]), int(settings["examples"]),
                                        settings["limit"], progress=not quiet, refinement=refinement,
                                        processes=processes)
        except (UnreadableImageError, UnreadableMaskError) as error:
            raise click.ClickException(f"{layout.name}: {error}") from error
        for message in result.warnings():
            _warn(message, notes)
        results.append(result)
    if not results:  # a mistyped root, most likely: the previous results stay as they are
        raise click.ClickException(_nothing_evaluated(settings, skipped))
    report = {
        "conventions": {c.name: c.description for c in conventions},
        "headline_convention": conventions[0].name,
        "predictors": [predictor.describe() for predictor in predictors],
        "rows": _row_descriptions(predictors, refinement),
        "inference": {"shorter_side": predictors[0].input_size, "input_range": [-1.0, 1.0],
                      "resize_in": "bilinear, antialiased when shrinking", "resize_back": "bilinear to the mask size"},
        "benchmarks_root": str(settings["benchmarks_root"]),
        "skipped": skipped,
        "warnings": notes,
        "settings": {key: settings[key] for key in ("batch_size", "limit", "localisation", "examples", "refinement",
                                                    "processes")},
        "seconds": round(time.perf_counter() - start, 2),
    }
    written = write_outputs(output, results, report)
    _print_table(results)
    click.echo(f"wrote {written['metrics']}, {written['report']}, {len(written['curves'])} curves, "
               f"{len(written['grids'])} grids")


if __name__ == "__main__":
    main()
