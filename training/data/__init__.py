"""The training side of data: torch Datasets, augmentation presets and the demo-data writers; the readers are
dataformats' (shared with evaluation)."""
