"""The house generator: a small GAN with an encoder, trained by this project.

It is the offline default behind `make demo`.  The shipped files live beside this module:
`house_gan.pt` (generator and encoder state dicts plus their architecture), `latent_bank.npy` and
`latent_bank.json` (the training photos encoded), `samples.png` and `MODEL_CARD.md`.
`train-house-gan` (`generator.house.cli`) retrains them.  Two architectures exist
(`generator.house.architectures`): v1, the 64 x 64 DCGAN shipped now, and v2, a 128 x 128
BigGAN-style residual GAN meant to be trained on a GPU with `gpu_train.sh` / `gpu_run.py`.
"""

from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
WEIGHTS_PATH = PACKAGE_DIR / "house_gan.pt"
BANK_PATH = PACKAGE_DIR / "latent_bank.npy"
SAMPLES_PATH = PACKAGE_DIR / "samples.png"
