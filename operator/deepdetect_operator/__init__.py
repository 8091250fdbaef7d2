"""DeepDetect operator: reconciles DeepDetectService resources into inference-server workloads."""

__version__ = "0.1.0"
