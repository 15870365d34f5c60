"""Worked examples of plugging one's own models into the pipeline."""
