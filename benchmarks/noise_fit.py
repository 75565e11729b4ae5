"""The minimax polynomials of the noise transform (yoda_kernels/philox.py: LOG_P, SIN_P, COS_P; DESIGN.md §9).

    .venv/bin/python benchmarks/noise_fit.py        # prints the three tuples (Python floats and C hex literals)

Fits in float64 by Lawson's algorithm (iteratively reweighted least squares towards the minimax error) on a grid
of 40001 points, rounded to float32:
    LOG_P: P(f) ~ -2 log(1 + f) / f on [sqrt(1/2) - 1, sqrt(2) - 1], degree 7, relative error
    SIN_P: sin(pi t) / t as a polynomial in t^2 on [-1/2, 1/2], degree 4 (sin of degree 9), absolute error of sin
    COS_P: (cos(pi t) - 1) / t^2 as a polynomial in t^2, degree 3 (cos of degree 8), absolute error of cos
Changing a coefficient changes the noise stream (every seed's image): CHANGELOG.md must say so, and every
backend's copy (philox.py, csrc/philox.h, yoda_kernels/triton/noise.py) must change with it.
"""

from __future__ import annotations

import argparse

import numpy as np


def lawson(f: np.ndarray, A: np.ndarray, w: np.ndarray, iters: int = 300) -> tuple[np.ndarray, float]:
    """Coefficients c minimising max |w (f - A c)| approximately, and that maximum."""
    lam = np.full(len(f), 1.0 / len(f))
    for _ in range(iters):
        sw = np.sqrt(lam) * w
        c, *_ = np.linalg.lstsq(A * sw[:, None], f * sw, rcond=None)
        e = np.abs(w * (f - A @ c))
        lam = lam * e
        lam /= lam.sum()
    return c, float(e.max())


def fits() -> dict[str, tuple[tuple[float, ...], float]]:
    x = np.linspace(np.sqrt(0.5) - 1, np.sqrt(2) - 1, 40001)
    x = x[np.abs(x) > 1e-12]
    g = -2 * np.log1p(x) / x
    log_c, log_e = lawson(g, np.stack([x**k for k in range(8)], 1), 1 / np.abs(g))
    t = np.linspace(-0.5, 0.5, 40001)
    t = t[np.abs(t) > 1e-12]
    sin_c, sin_e = lawson(np.sin(np.pi * t) / t, np.stack([t ** (2 * k) for k in range(5)], 1), np.abs(t))
    cos_c, cos_e = lawson((np.cos(np.pi * t) - 1) / t**2, np.stack([t ** (2 * k) for k in range(4)], 1), t**2)
    f32 = lambda c: tuple(float(np.float32(v)) for v in c)  # noqa: E731
    return {"LOG_P": (f32(log_c), log_e), "SIN_P": (f32(sin_c), sin_e), "COS_P": (f32(cos_c), cos_e)}


def main(argv=None) -> None:
    argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter).parse_args(argv)
    for name, (coefs, err) in fits().items():
        print(f"{name} = {coefs}  # fit error {err:.3g}")
        print(f"    hex: {', '.join(float(c).hex().replace('0000000p', 'p') + 'f' for c in coefs)}")


if __name__ == "__main__":
    main()
