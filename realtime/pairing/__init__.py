"""Pairing: which NBI frame goes with each WLI frame."""
