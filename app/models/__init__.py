"""The ML model registry: validate, store, version and run ONNX models."""
