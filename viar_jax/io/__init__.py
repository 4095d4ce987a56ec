"""Checkpoints and formats: PyTorch conversion, orbax checkpoints, released configs, images."""
