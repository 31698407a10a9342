"""Data readers and demo-data writers for the training tasks."""
