"""Environment defaults that must be set before TensorFlow is first imported."""
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")  # hide TensorFlow's C++ info lines, keep its warnings
