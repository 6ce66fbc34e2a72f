"""Keras runs on its torch backend in these tests (there is no TensorFlow): chosen before any
test module imports keras."""

import os

os.environ.setdefault("KERAS_BACKEND", "torch")
