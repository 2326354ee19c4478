"""Environment defaults that must be set before TensorFlow is first imported.

A notebook cell shows whatever TensorFlow writes to stderr as a red box: its C++ info and warning lines (oneDNN,
CPU features, absl's InitializeLog notice, rendezvous aborts after an interrupt) and its Python warnings say
nothing about the user's loop. They are silenced here, before TensorFlow is imported; its errors still show, and
so do recdebug's own warnings (Python's warnings and logging are left as they are). A TF_CPP_MIN_LOG_LEVEL the
user set is kept.
"""
import logging
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # C++: errors only
logging.getLogger("tensorflow").setLevel(logging.ERROR)  # TensorFlow's Python logger: errors only
