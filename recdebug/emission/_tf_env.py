"""Environment defaults that must be set before TensorFlow is first imported.

A notebook cell shows whatever TensorFlow writes to stderr as a red box: its C++ info and warning lines (oneDNN,
CPU features, absl's InitializeLog notice, rendezvous aborts after an interrupt) and its Python warnings say
nothing about the user's loop. They are silenced here, before TensorFlow is imported; its errors still show, and
so do recdebug's own warnings (Python's warnings and logging are left as they are). A TF_CPP_MIN_LOG_LEVEL the
user set is kept.

TensorFlow's pooled CPU allocator is the default here: a trace writes its recorded values into fresh memory, and
the system hands that out page by page, which made tracing about 1.15 times a run instead of 1.07 (bench LSTM,
``bench/bench_stepping.py``). Pooled, the memory of a dropped trace or result is reused by the next one; it stays
with TensorFlow rather than going back to the system. ``TF_CPU_ALLOCATOR_USE_BFC=false`` set by the user wins.
"""
import logging
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # C++: errors only
os.environ.setdefault("TF_CPU_ALLOCATOR_USE_BFC", "true")  # read when TensorFlow makes its CPU device
logging.getLogger("tensorflow").setLevel(logging.ERROR)  # TensorFlow's Python logger: errors only
