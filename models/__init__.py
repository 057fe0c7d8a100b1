"""Torch-free core shared by training, export and the dashboard.

Preprocessing, metrics, ONNX Runtime sessions, the grading API/CLI and the run registry live
here so that every part of the project prepares and judges a scan with the very same code.
This package must never import torch (``tests/test_layout.py`` checks it).
"""
