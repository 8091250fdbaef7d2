"""DeepDetect inference server: timm deepfake detectors behind a batching FastAPI app."""

__version__ = "0.1.0"
