"""`ship-house-gan`: make a finished training run the package's house generator.

    ship-house-gan RUN --photos ../shared/datasets/DUTS-TR/images

RUN is what `train-house-gan` or the one-command GPU run (generator/house/gpu_run.py) wrote:
house_gan.pt, samples.png, reconstructions.png, settings.json, train_log.jsonl and, from the GPU
run, timing.json.  The command

1. loads the weights as the backend will, reads the run's settings, log and timing and the card in
   --into, and checks that the weights are the run's end: the steps they record reach the targets
   in settings.json (or, with a time budget, they are its final export) and there was at least one
   GAN step; an unfinished run is refused unless --allow-unfinished.  Any bad file stops here,
   named, before anything is written;
2. encodes the photos into the bundled latent bank (latent_bank.npy / .json), whose index names
   the new weights' identity, so the bank is offered only with exactly these weights;
3. refuses when the shipped files would exceed --max-mib in all;
4. copies the weights and pictures into the package folder (--into) and writes
   TRAINING_RECORD.json and the training-record section of MODEL_CARD.md (between the markers
   below; added at the end when the card has none) from the run's own files.  The training time
   comes from the log (its last `seconds`), not from the weights.

Every file is written under a temporary name and renamed; the weights go last, so an interrupted
ship leaves the old weights in place and a bank that names the new ones, which is then not used.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import click

from generator.backends.house import HouseGenerator
from generator.embed.bank import BANK_FILE, write_bank
from generator.embed.images import encode_images
from generator.files import atomic_write_bytes, atomic_write_json
from generator.house import PACKAGE_DIR
from generator.house.training import (BANK_NAME, RECONSTRUCTIONS_NAME, SAMPLES_NAME, WEIGHTS_NAME,
                                      LOG_NAME, check_output_folder, read_training_log)
from generator.interface import GeneratorSpecError

RECORD_NAME = "TRAINING_RECORD.json"
CARD_NAME = "MODEL_CARD.md"
RECORD_BEGIN = "<!-- training record: written by ship-house-gan -->"
RECORD_END = "<!-- end of training record -->"


class ShipError(click.ClickException):
    """A run folder that cannot be shipped, saying why."""


def read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise ShipError(f"{path} cannot be read as JSON: {error}") from error


def _read_object(path: Path) -> dict[str, Any]:
    found = read_json(path)
    if not isinstance(found, dict):
        raise ShipError(f"{path} is not a JSON object (found {type(found).__name__})")
    return found


def read_log(path: Path) -> list[dict[str, Any]]:
    """The training log's entries; ShipError naming the file and line of a bad one."""
    try:
        return read_training_log(path)
    except OSError as error:
        raise ShipError(f"{path} cannot be read: {error}") from error
    except ValueError as error:          # its message names the file and the line
        raise ShipError(str(error)) from error


def training_record(run: Path, house: HouseGenerator) -> dict[str, Any]:
    """What the run did and cost, from its own files: settings, the last log line of each phase,
    the GPU run's timing (when there is one) and the summary inside the weights.  The training
    time is the log's last `seconds` (weights written before that moved there hold their own).
    ShipError naming any file that cannot be read."""
    settings = _read_object(run / "settings.json")
    log = read_log(run / LOG_NAME)
    last = {entry.get("phase"): entry for entry in log}
    timing = _read_object(run / "timing.json") if (run / "timing.json").is_file() else None
    environment = (timing or {}).get("environment")
    environment = environment if isinstance(environment, dict) else {}
    seconds = log[-1].get("seconds") if log else None
    if seconds is None:
        seconds = house.training_summary.get("train_seconds")
    return {"identity": house.identity, "architecture": house.architecture, "resolution": house.resolution,
            "latent_dim": house.latent_dim, "training": house.training_summary, "train_seconds": seconds,
            "device": environment.get("device_name") or settings.get("device_name"),
            "torch": settings.get("torch"), "settings": settings, "final": last, "timing": timing,
            "command": (timing or {}).get("command") or settings.get("command")}


def unfinished(record: dict[str, Any]) -> str | None:
    """Why the run's weights are not the end of its training (None when they are)."""
    training, settings = record["training"], record["settings"]
    steps, encoder_steps = training.get("steps"), training.get("encoder_steps")
    if not steps:
        return f"its weights record {steps or 0} GAN steps (an untrained generator)"
    if training.get("finished") is False:
        return (f"its weights are a periodic export at GAN step {steps}, not the run's end (continue it with "
                f"train-house-gan --resume)")
    targets = settings.get("steps"), settings.get("encoder_steps")
    if not all(isinstance(target, int) for target in targets):
        return "settings.json does not give the run's step targets (steps, encoder_steps)"
    done = f"its weights record {steps} GAN / {encoder_steps} encoder steps"
    if settings.get("time_budget_seconds") is None:
        if (steps, encoder_steps) != targets:
            return f"{done}, its settings.json asks for {targets[0]} / {targets[1]}"
    elif steps > targets[0] or (encoder_steps or 0) > targets[1]:
        return f"{done}, more than its settings.json's {targets[0]} / {targets[1]}: the weights are of another run"
    return None


def record_markdown(record: dict[str, Any]) -> str:
    training, final, timing = record["training"], record["final"], record["timing"] or {}
    rows = [("identity", f"`{record['identity']}`"),
            ("architecture", f"{record['architecture']}, {record['resolution']} x {record['resolution']}, "
                             f"latent {record['latent_dim']}"),
            ("hardware", f"{record['device']} (torch {record['torch']})"),
            ("photos", f"{training.get('photos')} from `{training.get('data')}`"),
            ("bundled latent bank", f"{record['bank']['count']} photos of `{record['bank']['photos']}` encoded"),
            ("GAN steps / encoder steps", f"{training.get('steps')} / {training.get('encoder_steps')} "
                                          f"at batch {training.get('batch_size')}, seed {training.get('seed')}"),
            ("training time", f"{record.get('train_seconds', training.get('train_seconds'))} s"
                              + (f" ({timing['total_seconds']} s with setup and export)"
                                 if timing.get("total_seconds") is not None else ""))]
    for phase, entry in final.items():
        losses = ", ".join(f"{key} {value}" for key, value in entry.items() if key.startswith(("loss", "real", "fake")))
        rows.append((f"last {phase} log line", f"step {entry.get('step')}, {entry.get('steps_per_second')} steps/s, "
                                               f"{entry.get('images_per_second')} images/s; {losses}"))
    if record["command"]:
        rows.append(("command", "`" + " ".join(record["command"]) + "`"))
    table = "\n".join(f"| {name} | {value} |" for name, value in rows)
    return f"{RECORD_BEGIN}\n## Training record\n\n| | |\n|---|---|\n{table}\n{RECORD_END}"


def card_with_record(card: str, section: str) -> str:
    """The card with its training-record section replaced (or appended)."""
    if RECORD_BEGIN in card and RECORD_END in card:
        before, rest = card.split(RECORD_BEGIN, 1)
        return before + section + rest.split(RECORD_END, 1)[1]
    return card.rstrip("\n") + "\n\n" + section + "\n"


def ship(run: Path, photos: Path, into: Path, max_mib: float, batch_size: int = 64, progress: bool = True,
         allow_unfinished: bool = False) -> dict:
    """Ship the run in `run` into the package folder `into`; return the training record.

    Everything is read and checked before the first write: a bad run, card or --into changes
    nothing in `into`."""
    run, into = Path(run), Path(into)
    try:
        check_output_folder(into, "--into")
    except ValueError as error:
        raise ShipError(str(error)) from error
    needed = [WEIGHTS_NAME, SAMPLES_NAME, RECONSTRUCTIONS_NAME, "settings.json", "train_log.jsonl"]
    missing = [name for name in needed if not (run / name).is_file()]
    if missing:
        raise ShipError(f"{run} is not a finished training run: {', '.join(missing)} missing")
    try:
        house = HouseGenerator(run / WEIGHTS_NAME)
    except GeneratorSpecError as error:
        raise ShipError(str(error)) from error
    record = training_record(run, house)
    reason = unfinished(record)
    if reason and not allow_unfinished:
        raise ShipError(f"{run} is not a finished training run: {reason}; ship it anyway with --allow-unfinished")
    card = into / CARD_NAME
    try:
        card_text = card.read_text() if card.exists() else "# House generator\n"
        files = {name: (run / name).read_bytes() for name in (SAMPLES_NAME, RECONSTRUCTIONS_NAME, WEIGHTS_NAME)}
    except (OSError, ValueError) as error:
        raise ShipError(f"cannot read {getattr(error, 'filename', None) or card}: {error}") from error
    with tempfile.TemporaryDirectory(prefix="ship-bank-") as staging:
        try:
            encoded = encode_images(house, photos, batch_size=batch_size, progress=progress)
        except (ValueError, OSError) as error:
            raise ShipError(f"cannot encode {photos}: {error}") from error
        if not encoded.files:
            raise ShipError(f"no readable photos under {photos}")
        try:
            bank = write_bank(staging, encoded.latents, house.identity, encoded.files, encoded.skipped,
                              source={"kind": "images", "folder": str(photos)})
        except ValueError as error:  # NaN codes, say: weights that do not encode
            raise ShipError(f"the bank of {photos} cannot be made with {run / WEIGHTS_NAME}: {error}") from error
        bank_bytes = Path(staging, BANK_FILE).read_bytes()
    sizes = {**{name: len(data) for name, data in files.items()}, BANK_NAME: len(bank_bytes)}
    total = sum(sizes.values()) / 2 ** 20
    if total > max_mib:
        listed = ", ".join(f"{name} {size / 2 ** 20:.1f} MiB" for name, size in sizes.items())
        raise ShipError(f"the shipped files would take {total:.1f} MiB, over --max-mib {max_mib} ({listed})")
    record["bank"] = {"count": len(encoded.files), "skipped": len(encoded.skipped), "photos": str(photos)}
    if reason:
        record["unfinished"] = reason
    card_bytes = card_with_record(card_text, record_markdown(record)).encode()
    try:
        record_bytes = (json.dumps(record, indent=2) + "\n").encode()
    except (TypeError, ValueError) as error:
        raise ShipError(f"the training record of {run} cannot be written as JSON: {error}") from error
    # every check is done: write, the weights last (the old weights serve till then)
    into.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(into / BANK_NAME, bank_bytes)
    atomic_write_json(into / Path(BANK_NAME).with_suffix(".json"), bank.index)
    for name in (SAMPLES_NAME, RECONSTRUCTIONS_NAME):
        atomic_write_bytes(into / name, files[name])
    atomic_write_bytes(into / RECORD_NAME, record_bytes)
    atomic_write_bytes(card, card_bytes)
    atomic_write_bytes(into / WEIGHTS_NAME, files[WEIGHTS_NAME])
    return record


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("run", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--photos", type=click.Path(exists=True, file_okay=False, path_type=Path), required=True,
              help="Folder of the photos to encode into the bundled latent bank (the training photos, "
                   "e.g. ../shared/datasets/DUTS-TR/images); never a benchmark.")
@click.option("--into", type=click.Path(file_okay=False, path_type=Path), default=PACKAGE_DIR, show_default=True,
              help="The package folder the house generator is loaded from.")
@click.option("--max-mib", type=click.FloatRange(min=0, min_open=True), default=20.0, show_default=True,
              help="Refuse when weights, bank and pictures would take more than this.")
@click.option("--batch-size", type=click.IntRange(min=1), default=64, show_default=True,
              help="Photos per encoder call.")
@click.option("--allow-unfinished", is_flag=True, default=False,
              help="Ship weights that are not the run's end (a periodic export, fewer steps than settings.json "
                   "asks for, or no GAN step at all); the record says so.")
def main(run: Path, photos: Path, into: Path, max_mib: float, batch_size: int, allow_unfinished: bool) -> None:
    """Make the training run in RUN the package's house generator: its weights, a latent bank of
    --photos encoded by them, its pictures and its training record in the model card.  Only a
    finished run is shipped, and nothing in --into changes unless every file of the run reads."""
    record = ship(run, photos, into, max_mib, batch_size, allow_unfinished=allow_unfinished)
    click.echo(f"shipped {record['identity']} ({record['architecture']}, {record['resolution']} px) into {into}; "
               f"bank of {record['bank']['count']} photos encoded from {photos}")
