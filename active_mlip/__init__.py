"""active-mlip: active learning of machine-learned interatomic potentials.

The science lives in :mod:`makers` (one module per stage of the loop) and the
composition in :mod:`workflows`; this package holds what they share: frames,
hashing, content-addressed blobs, stores and the command line.
"""

__version__ = "0.1.0"
