"""Calibration and evaluation text: named corpora or local files, tokenised and fingerprinted."""
