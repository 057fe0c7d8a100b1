"""PyTorch -> ONNX export with a parity gate, int8/fp16 variants and the speed benchmark."""
