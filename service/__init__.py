"""optic's serving side: ONNX Runtime behind BentoML. Never imports torch."""

__version__ = "0.1.0"
