"""PlayerPulse: live player events in, real-time profiles and ONNX predictions out."""

__version__ = "0.1.0"
