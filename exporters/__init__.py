"""Deploy a (compressed) timm ViT: ONNX (FP32/FP16/INT8) and TensorRT, validated against PyTorch.

Entry point: `vitshrink.exporters.api.export(artifact_dir, ExportConfig(...))`; CLI: `vitshrink.exporters.command.export_command`.
"""
