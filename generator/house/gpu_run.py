"""One command that retrains the house generator on a bare PyTorch machine within a time budget.

    python3 -m generator.house.gpu_run --pack data/house_photos_128.pt --out "$OUT" --minutes 8
    python3 -m generator.house.gpu_run ... --architecture layered    # the shipped default's design

It needs only Python, torch and a JPEG decoder.  When Pillow does not import, the Pillow wheel in
`--wheels` (default data/wheels, fetched beforehand with `pip download`, see README) is unpacked
into a private folder and put on the path; without either Pillow or torchvision it stops at once
and says so.  Then it:

1. reports Python, torch, CUDA and the device, and decodes the whole pack once into a uint8 tensor
   on the device (setup time is measured and taken off the budget);
2. trains v2 or, with `--architecture layered`, the layered design (`generator.house.training.train`:
   bf16 autocast, channels_last, device-side random streams, optional torch.compile) until the
   budget, minus the export reserve, is spent;
3. exports to --out: `house_gan.pt` (EMA generator + encoder, float16), `samples.png`,
   `reconstructions.png` (photos, then G(E(photo))), `train_log.jsonl`, `settings.json` and
   `timing.json` (setup, training and total seconds, steps, steps/s and images/s per phase).

The resumable checkpoint (with the discriminator and optimiser states, too big to bring back) is
kept in --work; without --work, in a temporary folder whose path is printed, removed once the
outputs are exported (kept, and named again, when the run fails or is interrupted).  Every file
written to --out is checked against --max-file-mib.  Options, the pack and the output folders are
checked before any work.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import shutil
import sys
import tempfile
import time
import traceback
import warnings
from pathlib import Path

from generator.wheels import import_from_wheels

STARTED = time.monotonic()
#: What this command trains (architectures made for photos at 128 px on a GPU; v1 is the old CPU DCGAN).
GPU_ARCHITECTURES = ("v2", "layered")
#: Generator widths here, where they differ from the architecture's default: the layered design's 32
#: is for 64 px (1.75 M parameters); at 128 px, 16 gives 1.3 M and keeps the shipped files under 20 MiB.
GPU_WIDTHS = {"layered": 16}


def say(message: str) -> None:
    print(f"[{time.monotonic() - STARTED:6.1f}s] {message}", flush=True)


def _number(kind, low=None, high=None, low_open=False, high_open=False):
    """An argparse type: `kind` within [low, high] (open ends where told), else a usage error."""
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {'an integer' if kind is int else 'a number'}") from None
        if (low is not None and (value < low or (low_open and value == low))) or \
                (high is not None and (value > high or (high_open and value == high))):
            bounds = " and ".join(filter(None, [
                None if low is None else f"{'above' if low_open else 'at least'} {low}",
                None if high is None else f"{'below' if high_open else 'at most'} {high}"]))
            raise argparse.ArgumentTypeError(f"{text} is out of range: must be {bounds}")
        return value
    return parse


def ensure_jpeg_decoder(wheels: Path) -> str:
    """Import Pillow, unpacking a shipped wheel if needed; torchvision is the fallback."""
    try:
        source = import_from_wheels({"PIL.Image": "pillow"}, [wheels])["PIL.Image"]
        return "pillow (installed)" if source == "installed" else f"pillow (from {source})"
    except ImportError as error:
        say(str(error))
    try:
        import torchvision.io  # noqa: F401
        return "torchvision"
    except ImportError:
        pass
    raise SystemExit(f"no JPEG decoder: Pillow does not import, no usable pillow-*.whl in {wheels}, "
                     "and torchvision is absent. Ship a cp312 manylinux Pillow wheel in that folder.")


def environment_report(device: str) -> dict:
    import torch

    report = {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
              "device": device, "cpu_count": os.cpu_count()}
    for name in ("numpy", "PIL", "torchvision", "click", "tqdm"):
        try:
            module = importlib.import_module(name)
        except ImportError:
            report[name] = None
            continue
        with warnings.catch_warnings():  # some packages deprecate __version__
            warnings.simplefilter("ignore")
            report[name] = str(getattr(module, "__version__", "present"))
    if device == "cuda":
        properties = torch.cuda.get_device_properties(0)
        report.update(gpu=properties.name, gpu_memory_gib=round(properties.total_memory / 2 ** 30, 1),
                      bf16_supported=torch.cuda.is_bf16_supported())
    return report


def phase_figures(log_path: Path, batch_size: int) -> dict:
    """Steps, seconds and the steady rates per phase, from the training log."""
    figures: dict[str, dict] = {}
    if not log_path.is_file():
        return figures
    from generator.house.training import read_training_log      # after the wheels are set up, as main's imports
    entries = read_training_log(log_path)
    for phase in ("gan", "encoder"):
        rows = [e for e in entries if e["phase"] == phase]
        if not rows:
            continue
        steady = rows[1:] or rows  # the first window holds warm-up (cuDNN tuning, compilation)
        rates = sorted(e["steps_per_second"] for e in steady)
        median = rates[len(rates) // 2]
        figures[phase] = {"steps": rows[-1]["step"], "train_seconds": rows[-1]["seconds"],
                          "steps_per_second_median": median, "images_per_second_median": round(median * batch_size, 1),
                          "last": {k: v for k, v in rows[-1].items() if k.startswith(("loss", "real", "fake"))}}
    return figures


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pack", required=True, help="photo pack from pack-house-photos")
    parser.add_argument("--out", required=True, help="folder for what comes back (weights, PNGs, log, timing)")
    parser.add_argument("--work", default=None, help="folder for the checkpoint (default: a temporary folder)")
    parser.add_argument("--minutes", type=_number(float, 0, low_open=True), default=8.0,
                        help="budget of the whole command, setup included")
    parser.add_argument("--export-reserve", type=_number(float, 0), default=45.0, help="seconds kept for the export")
    parser.add_argument("--encoder-share", type=_number(float, 0, 1, high_open=True), default=0.12,
                        help="share of the training time for phase 2 (0 to below 1)")
    parser.add_argument("--steps", type=_number(int, 1), default=1_000_000, help="upper bound of GAN steps")
    parser.add_argument("--encoder-steps", type=_number(int, 0), default=1_000_000,
                        help="upper bound of encoder steps")
    parser.add_argument("--batch-size", type=_number(int, 2), default=256, help="photos and generated images per step")
    parser.add_argument("--architecture", choices=GPU_ARCHITECTURES, default="v2",
                        help="v2 (BigGAN-style) or layered (an object pasted over a background, the shipped "
                             "default's design; at --resolution 128 here instead of its CPU run's 64)")
    parser.add_argument("--resolution", type=int, choices=(16, 32, 64, 128), default=128,
                        help="side of the generated images")
    parser.add_argument("--width", type=_number(int, 1), default=None,
                        help="generator width (default: v2 8, layered 16)")
    parser.add_argument("--encoder-width", type=_number(int, 1), default=None, help="v2's encoder width (default 8)")
    parser.add_argument("--discriminator-width", type=_number(int, 1), default=None,
                        help="discriminator width (default: v2 32, layered 48)")
    parser.add_argument("--latent-dim", type=_number(int, 1), default=None,
                        help="size of z (default 128; layered: above 32, its background's share)")
    parser.add_argument("--lr-generator", type=float, default=None,
                        help="Adam learning rate of G (default: v2 1e-4, layered 2e-4)")
    parser.add_argument("--lr-discriminator", type=float, default=None, help="of D (default: v2 4e-4, layered 2e-4)")
    parser.add_argument("--limit", type=_number(int, 1), default=None,
                        help="decode only an evenly spaced subset of the pack")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto", help="auto: CUDA when present")
    parser.add_argument("--no-bf16", action="store_true", help="train in float32 on CUDA too")
    parser.add_argument("--compile", action="store_true", help="torch.compile G and D (compiling takes time)")
    parser.add_argument("--checkpoint-every", type=_number(int, 1), default=2000,
                        help="steps between checkpoints in --work")
    parser.add_argument("--log-every", type=_number(int, 1), default=100, help="steps between log lines")
    parser.add_argument("--calibration-images", type=_number(int, 1), default=4096,
                        help="generated images that measure the exported batch-norm statistics")
    parser.add_argument("--seed", type=int, default=0, help="seed of weights, photo draws, augmentation, latents")
    parser.add_argument("--wheels", default="data/wheels", help="folder of wheels to unpack when Pillow is missing")
    parser.add_argument("--max-file-mib", type=_number(float, 0, low_open=True), default=16.0,
                        help="every file in --out must stay below this")
    args = parser.parse_args(argv)
    if args.encoder_width is not None and args.architecture != "v2":
        parser.error("--encoder-width is v2's only (the layered encoder is v1's, of the generator's width)")
    # every check before any work: options, then the output folders, then the pack
    if args.minutes * 60 <= args.export_reserve + 10:
        parser.error(f"--minutes {args.minutes:g} ({args.minutes * 60:.0f} s) leaves no time to train beside the "
                     f"{args.export_reserve:g} s export reserve (--export-reserve) and 10 s of setup")
    import torch

    from generator.house.architectures import ARCHITECTURE_DEFAULTS, latent_dim_problem, make_config
    from generator.house.pack import PackError, load_pack, read_pack_index
    from generator.house.training import (CHECKPOINT_NAME, LOG_NAME, SETTINGS_NAME, TrainingInterrupted,
                                          TrainSettings, check_output_folder, train)

    defaults = ARCHITECTURE_DEFAULTS[args.architecture]
    pick = lambda value, name: defaults[name] if value is None else value  # noqa: E731
    fields = {"latent_dim": pick(args.latent_dim, "latent_dim"), "resolution": args.resolution,
              "width": args.width if args.width is not None else GPU_WIDTHS.get(args.architecture, defaults["width"])}
    if args.encoder_width is not None:
        fields["encoder_width"] = args.encoder_width
    problem = latent_dim_problem(args.architecture, fields["latent_dim"])
    if problem:
        parser.error(f"--latent-dim {problem}")
    try:
        config = make_config(args.architecture, fields)
    except ValueError as error:
        parser.error(str(error))
    out = Path(args.out)
    try:
        check_output_folder(out, "--out")
        if args.work:
            check_output_folder(Path(args.work), "--work")
    except ValueError as error:
        parser.error(str(error))
    if args.work:
        earlier = sorted(Path(args.work).glob(f"attempt*/{CHECKPOINT_NAME}"))
        if earlier:
            raise SystemExit(f"--work {args.work} holds the checkpoint of an earlier run ({earlier[0]}): continue it "
                             f"with train-house-gan --resume {earlier[0]} and that run's settings, or give another "
                             "--work")
    try:
        read_pack_index(args.pack)
    except (PackError, OSError) as error:
        raise SystemExit(f"--pack: {error}") from None

    decoder = ensure_jpeg_decoder(Path(args.wheels))

    device = args.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda, but torch sees no CUDA device")
    if device == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    environment = environment_report(device)
    say(f"environment: {json.dumps(environment)}; JPEG decoder: {decoder}")

    try:
        photos, _ = load_pack(args.pack, side=args.resolution, limit=args.limit)
    except (PackError, OSError) as error:
        raise SystemExit(f"--pack: {error}") from None
    photos = photos.to(device)
    out.mkdir(parents=True, exist_ok=True)
    temporary = not args.work
    work = Path(tempfile.mkdtemp(prefix="house-run-")) if temporary else Path(args.work)
    say(f"checkpoints in {work}" + (" (a temporary folder, removed once the outputs are exported)"
                                    if temporary else ""))
    setup_seconds = time.monotonic() - STARTED
    say(f"{photos.shape[0]} photos {tuple(photos.shape[1:])} uint8 on {device} "
        f"({photos.numel() / 2 ** 20:.0f} MiB); setup took {setup_seconds:.1f} s")

    def settings_for(attempt_work: Path, budget: float, bf16: bool, compile_: bool) -> TrainSettings:
        return TrainSettings(
            data=Path(args.pack), out=attempt_work, export_to=out, steps=args.steps,
            encoder_steps=args.encoder_steps, batch_size=args.batch_size, seed=args.seed,
            lr_generator=pick(args.lr_generator, "lr_generator"),
            lr_discriminator=pick(args.lr_discriminator, "lr_discriminator"), adam_betas=defaults["adam_betas"],
            discriminator_width=pick(args.discriminator_width, "discriminator_width"),
            checkpoint_every=args.checkpoint_every, export_every=0, log_every=args.log_every, config=config,
            device=device, bf16=bf16, compile=compile_, time_budget_seconds=budget,
            encoder_share=args.encoder_share, export_reserve_seconds=args.export_reserve,
            calibration_images=args.calibration_images, bank=False)

    # the settings asked for first; if they fail (a kernel or compiler this machine lacks), the
    # plainest ones with what is left of the budget, so one failed option does not waste the run
    attempts = [(not args.no_bf16, args.compile)]
    if attempts[0] != (False, False):
        attempts.append((False, False))
    errors = []
    train_started = time.monotonic()
    weights = attempt_work = None
    for number, (bf16, compile_) in enumerate(attempts):
        budget = args.minutes * 60 - (time.monotonic() - STARTED)
        if budget <= args.export_reserve + 10:
            errors.append(f"attempt {number + 1} skipped: {budget:.0f} s left of the budget")
            break
        attempt_work = work / f"attempt{number + 1}"
        settings = settings_for(attempt_work, budget, bf16, compile_)
        say(f"training {args.architecture} for at most {budget:.0f} s (export reserve {args.export_reserve:.0f} s), "
            f"batch {args.batch_size}, bf16 {bf16 and device == 'cuda'}, compile {compile_}")
        try:
            weights = train(settings, photos=(photos, [], []))
            break
        except TrainingInterrupted as stop:
            raise SystemExit(f"{stop}\n(the checkpoint folder {work} is kept; resume with train-house-gan "
                             f"--resume and the settings in {attempt_work / SETTINGS_NAME})") from None
        except Exception:  # noqa: BLE001 - reported in errors.txt, then the plain settings are tried
            errors.append(f"attempt {number + 1} (bf16 {bf16}, compile {compile_}):\n{traceback.format_exc()}")
            say(errors[-1])
            if device == "cuda":
                torch.cuda.empty_cache()
    if errors:
        (out / "errors.txt").write_text("\n".join(errors) + "\n")
    if weights is None:
        raise SystemExit(f"training failed; see {out / 'errors.txt'} (checkpoints kept in {work})")
    train_and_export_seconds = time.monotonic() - train_started

    for name in (LOG_NAME, SETTINGS_NAME):
        shutil.copyfile(attempt_work / name, out / name)
    figures = phase_figures(out / LOG_NAME, args.batch_size)
    timing = {"setup_seconds": round(setup_seconds, 1),
              "train_and_export_seconds": round(train_and_export_seconds, 1),
              "total_seconds": round(time.monotonic() - STARTED, 1), "budget_seconds": args.minutes * 60,
              "photos": int(photos.shape[0]), "batch_size": args.batch_size, "phases": figures,
              "attempts": number + 1, "bf16": settings.bf16 and device == "cuda", "compile": settings.compile,
              "environment": environment, "jpeg_decoder": decoder, "command": sys.argv}
    (out / "timing.json").write_text(json.dumps(timing, indent=2) + "\n")
    if temporary:  # everything that comes back is in --out now
        shutil.rmtree(work, ignore_errors=True)
        say(f"removed the temporary checkpoint folder {work}")
    limit = args.max_file_mib * 2 ** 20
    too_big = [f"{p.name} ({p.stat().st_size / 2 ** 20:.1f} MiB)" for p in out.iterdir() if p.stat().st_size >= limit]
    for phase, figure in figures.items():
        say(f"{phase}: {figure['steps']} steps, {figure['steps_per_second_median']} steps/s, "
            f"{figure['images_per_second_median']} images/s (median of the log windows)")
    say(f"weights {weights} ({weights.stat().st_size / 2 ** 20:.1f} MiB); total {timing['total_seconds']} s")
    if too_big:
        raise SystemExit(f"files over {args.max_file_mib} MiB in {out}: {', '.join(too_big)}")


if __name__ == "__main__":
    main()
