"""optic's training side: fine-tune torchvision models, export ONNX with its `model.json`.

One task-agnostic loop (`training.engine.fit`) and one exporter (`training.export.export_onnx`); everything
that differs between classification, detection and segmentation lives in a `training.tasks` plug-in.
"""
