"""Evaluation: safe archive extraction and the one runner behind POST /evaluate and `optic eval`."""
