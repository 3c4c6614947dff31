"""Model packs on disk and the runtimes that execute them (ONNX Runtime; llama.cpp later)."""
