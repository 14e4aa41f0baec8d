"""ONNX backend helpers: precision modes with onnxruntime's float16 and quantization tools, and
what a saved artifact holds (IO types, initializer types, quantized ops)."""
