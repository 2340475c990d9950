"""The numpy example: time a 1000x1000 matrix product.

trustedml run -- python examples/test_numpy.py
"""

import time

import numpy as np

rng = np.random.default_rng(0)
a = rng.random((1000, 1000))
b = rng.random((1000, 1000))
start = time.perf_counter()
c = np.dot(a, b)
elapsed = time.perf_counter() - start
assert c.shape == (1000, 1000)
print(f"numpy.dot: {elapsed:.6f} sec")
