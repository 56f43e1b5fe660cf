"""Readers of files written by other tools (PyTorch `.pth` checkpoints)."""
