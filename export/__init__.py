"""Export: ONNX graphs, ONNX Runtime sessions and TensorRT engines of the engine's own modules (DESIGN.md §9)."""
