"""Evaluation: feature extractors, FID/KID, the few-shot protocol, pictures and reports."""
