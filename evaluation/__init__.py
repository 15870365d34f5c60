"""Measures a trained saliency model on real benchmarks: loaders, metrics, inference, reports."""
