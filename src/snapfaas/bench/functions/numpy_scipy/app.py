"""Reference function 2: numpy + scipy with ~80 MB of arrays built at init."""

import numpy as np
import scipy.linalg
import scipy.signal
import scipy.sparse

RNG = np.random.default_rng(7)
SAMPLES = RNG.standard_normal(10_000_000)  # 80 MB of float64
FILTER_B, FILTER_A = scipy.signal.butter(4, 0.1)
GRAPH = scipy.sparse.random(2_000, 2_000, density=0.01, random_state=7, format="csr")
BASIS = scipy.linalg.qr(RNG.standard_normal((200, 200)))[0]


def handler(event, context):
    n = int((event or {}).get("n", 1000))
    window = SAMPLES[:n]
    smooth = scipy.signal.lfilter(FILTER_B, FILTER_A, window)
    return {"mean": float(window.mean()), "smooth_last": float(smooth[-1]), "nnz": int(GRAPH.nnz),
            "basis_trace": float(np.trace(BASIS))}
