"""What runs the CNN and where: the Keras backend (keras_backend.py), the CPU runtimes and the
ONNX export (inference.py), the local or Ray engine (engine.py) and extraction on Ray Data
(ray_extract.py)."""
