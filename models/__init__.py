"""Readers and passage encoders: export, the model store, runtimes, evaluation, training.

Every module here that imports torch is imported after this: the OpenMP settings that
torch reads once, when it loads, are set first (models/openmp.py says why).
"""

from models import openmp

openmp.configure()
