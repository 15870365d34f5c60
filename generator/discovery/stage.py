"""The discover stage: learn candidate directions, score them, choose h_bg, write the outputs.

Outputs in one folder (data/directions by default), each written atomically:
    direction.json      the chosen direction (generator/direction.py format)
    scores.json         every candidate's score components and total, the formula, the choice
    contact_sheet.png   images, shifted images and masks of the best candidates, both signs
    candidates.npy      all candidate directions, float32 latent_dim x K (unit columns)
    history/METHOD.csv  per-step losses of each discovery method that ran (a DVC plot per file)
    metrics.json        the choice, its score, and the run's time and speed (DVC metrics)
"""

from __future__ import annotations

import csv
import io
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from generator.direction import Direction, save_direction
from generator.discovery.config import POOLED_METHOD, SINGLE_METHODS, DiscoverConfig
from generator.discovery.contact_sheet import make_contact_sheet, png_bytes
from generator.discovery.latent_discovery import DiscoveryResult, discover_latent_directions, pool_results
from generator.discovery.refinement import RefinementOutcome, refine_direction
from generator.discovery.scoring import SCORE_FORMULA, CandidateScore, score_candidates, scoring_latents
from generator.discovery.selection import Choice, check_override, check_plausible, choose_direction
from generator.discovery.single_direction import discover_single_direction
from generator.files import atomic_write_bytes, atomic_write_json
from generator.interface import Generator

FORMAT_VERSION = 1


@dataclass
class StageOutcome:
    """What the stage found and wrote."""

    direction: Direction
    choice: Choice
    scores: list[CandidateScore]
    discovery: DiscoveryResult
    refinement: RefinementOutcome
    files: dict[str, Path]
    warning: str | None = None


def discover(generator: Generator, config: DiscoverConfig, progress: bool = True) -> DiscoveryResult:
    """Run the configured discovery method, or each method for `both` with their candidates pooled
    (each resumes from its own checkpoint when there is one)."""
    if config.method == POOLED_METHOD:
        return pool_results(POOLED_METHOD, [run_method(generator, config, name, progress) for name in SINGLE_METHODS])
    return run_method(generator, config, config.method, progress)


def run_method(generator: Generator, config: DiscoverConfig, method: str, progress: bool = True) -> DiscoveryResult:
    checkpoint = (Path(config.checkpoint_dir) / f"{method}.pt") if config.checkpoint_dir else None
    if method == "latent-discovery":
        return discover_latent_directions(generator, config.latent_discovery, config.seed, checkpoint, progress)
    return discover_single_direction(generator, config.single_direction, config.seed, checkpoint, progress)


def candidate_count(config: DiscoverConfig) -> int:
    """How many candidate directions the configured method yields (single-direction: one)."""
    counts = {"latent-discovery": config.latent_discovery.directions, "single-direction": 1}
    return sum(counts.values()) if config.method == POOLED_METHOD else counts[config.method]


def run_stage(generator: Generator, config: DiscoverConfig, output: str | Path, progress: bool = True) -> StageOutcome:
    """Discovery, scoring, choice, refinement and every output file.

    When no candidate scores above `discover.min_score`, the scores and the contact sheet are
    still written, then `NoPlausibleDirection` is raised and no direction file is saved."""
    output = Path(output)
    # refuse a bad override, a missing latent bank or a folder that cannot be made before the long part
    check_override(config.override, candidate_count(config))
    scoring_latents(generator, config.scoring, config.seed)
    for folder in (output, config.checkpoint_dir):
        if folder is not None:
            try:
                Path(folder).mkdir(parents=True, exist_ok=True)
            except OSError as error:
                raise ValueError(f"cannot make the folder {folder}: {error.strerror or error}") from error
    # a run that stops early must not leave an earlier run's direction beside its own files
    for stale in ("direction.json", "metrics.json"):
        (output / stale).unlink(missing_ok=True)
    result = discover(generator, config, progress)
    candidates = result.candidates
    scores = score_candidates(generator, candidates, config.magnitude, config.scoring, config.seed, progress)
    choice = choose_direction(scores, candidates.shape[1], config.override)
    files = {name: output / name for name in
             ("direction.json", "scores.json", "contact_sheet.png", "candidates.npy", "metrics.json")}
    sheet = make_contact_sheet(generator, candidates, scores, choice, config.magnitude, config.scoring, config.seed)
    atomic_write_bytes(files["contact_sheet.png"], png_bytes(sheet))
    buffer = io.BytesIO()
    np.save(buffer, candidates.numpy().astype(np.float32), allow_pickle=False)
    atomic_write_bytes(files["candidates.npy"], buffer.getvalue())
    write_history(output / HISTORY_FOLDER, result)
    try:
        warning = check_plausible(choice, scores, config.min_score, config.scoring)
    except ValueError:
        atomic_write_json(files["scores.json"], scores_record(generator, config, result, scores, choice, None))
        raise
    refinement = refine_chosen(generator, choice.sign * candidates[:, choice.index], choice, config, progress)
    direction = Direction.from_vector(
        refinement.vector, generator.identity, magnitude=config.magnitude,
        method=result.method_of(choice.index), index=choice.index, sign=choice.sign, chosen_by=choice.chosen_by,
        extra={"score": choice.score.to_json(), "candidates": int(candidates.shape[1]), "discovery": result.method,
               "steps": steps_of(config), "seed": config.seed, "refinement": refinement.to_json()})
    atomic_write_json(files["scores.json"], scores_record(generator, config, result, scores, choice, refinement))
    atomic_write_json(files["metrics.json"], metrics_record(result, choice, refinement))
    save_direction(direction, files["direction.json"])  # last: its presence means the stage finished
    return StageOutcome(direction, choice, scores, result, refinement, files, warning)


def refine_chosen(generator: Generator, chosen: torch.Tensor, choice: Choice, config: DiscoverConfig,
                  progress: bool = True) -> RefinementOutcome:
    """Refine the chosen (signed) direction, then keep the result only when it stays within
    `refine.min_cosine` of the choice and its masks' quality drops by no more than
    `refine.score_tolerance` (see refinement.py)."""
    before = choice.score
    settings = config.refine
    if not settings.enabled:
        return RefinementOutcome(chosen, False, "refinement is off (discover.refine.enabled)", None, before.total,
                                 None, 0, before.mask_quality, None)
    refined = refine_direction(generator, chosen, settings, config.seed, progress)
    cosine = float(torch.dot(refined, chosen / chosen.norm()))
    (after,) = [score for score in score_candidates(generator, refined[:, None], config.magnitude, config.scoring,
                                                    config.seed, progress=False) if score.sign == 1]
    figures = (cosine, before.total, after.total, settings.steps, before.mask_quality, after.mask_quality)
    if cosine < settings.min_cosine:
        reason = f"kept the chosen direction: refinement moved it to cosine {cosine:.3f} < min_cosine " \
                 f"{settings.min_cosine:g}"
        return RefinementOutcome(chosen, False, reason, *figures)
    if after.mask_quality < before.mask_quality - settings.score_tolerance:
        reason = f"kept the chosen direction: the refined one's masks scored lower (mask quality " \
                 f"{after.mask_quality:.3f} < {before.mask_quality:.3f} - score_tolerance {settings.score_tolerance:g})"
        return RefinementOutcome(chosen, False, reason, *figures)
    reason = f"refined: cosine {cosine:.3f} to the chosen direction, mask quality {before.mask_quality:.3f} -> " \
             f"{after.mask_quality:.3f}, score {before.total:.3f} -> {after.total:.3f}"
    return RefinementOutcome(refined, True, reason, *figures)


def steps_of(config: DiscoverConfig) -> int:
    """Training steps of the configured method (of both, for the pooled one)."""
    steps = {"latent-discovery": config.latent_discovery.steps, "single-direction": config.single_direction.steps}
    return sum(steps.values()) if config.method == POOLED_METHOD else steps[config.method]


def scores_record(generator: Generator, config: DiscoverConfig, result: DiscoveryResult,
                  scores: list[CandidateScore], choice: Choice, refinement: RefinementOutcome | None) -> dict:
    return {
        "format_version": FORMAT_VERSION,
        "generator": generator.identity,
        "method": result.method,
        "magnitude": config.magnitude,
        "seed": config.seed,
        "formula": SCORE_FORMULA,
        "scoring": asdict(config.scoring),
        "chosen": {"index": choice.index, "sign": choice.sign, "chosen_by": choice.chosen_by,
                   "method": result.method_of(choice.index), "total": round(choice.score.total, 6)},
        "candidate_methods": [result.method_of(i) for i in range(result.candidates.shape[1])],
        "min_score": config.min_score,
        "refinement": None if refinement is None else refinement.to_json(),
        "candidates": [score.to_json() for score in scores],
    }


def metrics_record(result: DiscoveryResult, choice: Choice, refinement: RefinementOutcome) -> dict:
    outcome = result.outcome
    return {
        "method": result.method, "chosen_method": result.method_of(choice.index), "index": choice.index,
        "sign": choice.sign, "chosen_by": choice.chosen_by, "score": round(choice.score.total, 6),
        "refined": refinement.refined,
        "refined_score": None if refinement.score_after is None else round(refinement.score_after, 6),
        "refined_cosine": None if refinement.cosine_to_chosen is None else round(refinement.cosine_to_chosen, 6),
        "steps_run": outcome.steps_run, "resumed_from": outcome.resumed_from,
        "seconds": round(outcome.seconds, 3),
        "steps_per_second": round(outcome.steps_per_second, 3) if outcome.steps_run else None,
        **{f"final_{key}": round(value, 6) for key, value in result.final_metrics.items()},
    }


#: The folder of per-method history tables, beside direction.json.
HISTORY_FOLDER = "history"


def history_tables(result: DiscoveryResult) -> dict[str, str]:
    """{method: CSV of its per-step metrics}.  One table per method, each with its own `loss`
    column, so one plot definition fits whichever methods ran (their losses are on different
    scales and their step counts differ; a pooled history names its metrics `method/metric`)."""
    by_method: dict[str, dict[str, list[float]]] = {}
    for key, values in result.outcome.history.items():
        method, _, metric = key.rpartition("/")
        by_method.setdefault(method or result.method, {})[metric] = values
    tables = {}
    for method, history in by_method.items():
        keys = sorted(history)
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(["step", *keys])
        for step in range(max(len(values) for values in history.values())):
            writer.writerow([step, *(f"{history[key][step]:.6g}" if step < len(history[key]) else "" for key in keys)])
        tables[method] = buffer.getvalue()
    return tables


def write_history(folder: Path, result: DiscoveryResult) -> None:
    """history/METHOD.csv for each method that ran; tables of methods that did not are removed."""
    tables = history_tables(result)
    folder.mkdir(parents=True, exist_ok=True)
    for stale in folder.glob("*.csv"):
        if stale.stem not in tables:
            stale.unlink()
    for method, table in tables.items():
        atomic_write_bytes(folder / f"{method}.csv", table.encode())
