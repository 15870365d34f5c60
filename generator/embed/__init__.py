"""The embed stage: a folder of photos encoded into a latent bank (or the generator's own bank).

`images.py` finds and encodes the photos, `bank.py` reads and writes the bank format (contract 2:
`latents.npy` float32 N x latent_dim plus `index.json`), and `main.py` is the `embed-images`
command that ties them to params.yaml.
"""

from generator.embed.bank import LatentBank, copy_bundled_bank, read_bank, write_bank
from generator.embed.images import EncodedImages, encode_images, find_images

__all__ = ["EncodedImages", "LatentBank", "copy_bundled_bank", "encode_images", "find_images", "read_bank",
           "write_bank"]
