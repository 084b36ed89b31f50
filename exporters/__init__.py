"""Deploy a (compressed) timm ViT: ONNX (FP32/FP16/INT8) and TensorRT, validated against PyTorch.

Entry point: `exporters.api.export(artifact_dir, ExportConfig(...))`; CLI: `exporters.command.export_command`.
"""
