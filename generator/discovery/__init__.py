"""Direction discovery: learn latent directions, choose the background direction h_bg automatically.

    directions.py        A, the K candidate directions (plain or orthonormal)
    reconstructor.py     R, the CNN that tells from an image pair which direction moved it and how far
    latent_discovery.py  Voynov & Babenko: A and R trained jointly
    single_direction.py  Melas-Kyriazi et al.: one direction optimised directly
    loop.py              the shared optimisation loop (progress bar, checkpoints, exact resume)
    checkpoint.py        atomic checkpoints, read without unpickling
    randomness.py        counter-based per-step randomness, freezing the generator
    scoring.py           every candidate and sign scored by the masks it makes
    selection.py         the automatic choice, or a person's override
    contact_sheet.py     the PNG that shows the best candidates
    stage.py             the discover stage: all of the above, and its output files
    cli.py               the `discover-direction` command
    config.py            the `discover` section of params.yaml
"""
