"""Backbones: the registry (one entry a network), its weights, preprocessing numbers and taps."""
