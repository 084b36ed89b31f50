"""Deploy a (compressed) timm ViT: ONNX (FP32/FP16/INT8) and TensorRT, validated against PyTorch.

Entry point: `vitshrink.exporters.export_job.export(artifact_dir, ExportConfig(...))`; CLI: `vitshrink.exporters.export_command.export_command`.
"""
