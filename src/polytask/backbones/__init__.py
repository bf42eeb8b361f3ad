"""Backbones: loading pretrained models and the one place that knows model-family layouts."""
