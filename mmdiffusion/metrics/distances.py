"""Distances between two sets of features (DESIGN.md §6).

Both functions take feature matrices `a: [N, D]` and `b: [M, D]` (numpy arrays or torch tensors of
any real dtype), compute in float64 on the CPU (torch's LAPACK, which shares torch's thread pool)
and return a Python float.

- `frechet_distance`: the Fréchet (2-Wasserstein) distance between the Gaussian fits of the two
  sets, as in FID / FVD / FAD.
- `kernel_distance`: the unbiased MMD² with the cubic polynomial kernel, as in KID / KVD.
"""
from __future__ import annotations

import numpy as np
import torch

ArrayLike = np.ndarray | torch.Tensor

_KERNEL_BLOCK = 2048  # rows per block when summing kernel matrices (bounds memory for large sets)


def as_features(x: object, name: str, *, min_rows: int = 1) -> torch.Tensor:
    """Validate one feature matrix and return it as a float64 CPU tensor `[N, D]`."""
    if isinstance(x, np.ndarray):
        if not (np.issubdtype(x.dtype, np.floating) or np.issubdtype(x.dtype, np.integer)):
            raise TypeError(f"{name} must be a real-valued array, got dtype {x.dtype}")
        x = torch.from_numpy(x)
    elif not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a numpy array or torch tensor [N, D], got {type(x).__name__}")
    if x.is_complex() or x.dtype == torch.bool:
        raise TypeError(f"{name} must be real-valued, got dtype {x.dtype}")
    x = x.detach().to("cpu", torch.float64)
    if x.ndim != 2:
        raise ValueError(f"{name} must be a feature matrix [N, D], got shape {tuple(x.shape)}")
    if x.shape[0] < min_rows or x.shape[1] < 1:
        raise ValueError(f"{name} must have at least {min_rows} rows and 1 column, got shape {tuple(x.shape)}")
    if not torch.isfinite(x).all():
        raise ValueError(f"{name} contains NaN or infinite values")
    return x


def feature_pair(a: ArrayLike, b: ArrayLike, *, names: tuple[str, str] = ("a", "b"),
                 min_rows: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Two validated feature matrices `[N, D]`, `[M, D]` with the same `D` (errors use `names`)."""
    a, b = as_features(a, names[0], min_rows=min_rows), as_features(b, names[1], min_rows=min_rows)
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"{names[0]} and {names[1]} must have the same feature dimension, got "
                         f"{names[0]}: {tuple(a.shape)} and {names[1]}: {tuple(b.shape)}")
    return a, b


def _psd_eigenvalues(m: torch.Tensor, eps: float | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Eigen-decomposition of a symmetric PSD matrix with round-off eigenvalues set to zero.

    Eigenvalues below `tol * max(|λ|)` are zeroed, `tol = eps` if given, else `D · 2^-52` (the
    tolerance `numpy.linalg.matrix_rank` uses): below it an eigenvalue is indistinguishable from
    the round-off of a rank-deficient covariance (fewer samples than dimensions), and negative
    round-off would otherwise make the square root undefined.
    """
    w, v = torch.linalg.eigh((m + m.T) / 2)
    tol = (m.shape[0] * torch.finfo(torch.float64).eps if eps is None else eps) * w.abs().max()
    return torch.where(w > tol, w, torch.zeros_like(w)), v


def _covariance(x: torch.Tensor) -> torch.Tensor:
    centred = x - x.mean(0)
    return centred.T @ centred / (x.shape[0] - 1)


def frechet_distance(a: ArrayLike, b: ArrayLike, *, eps: float | None = None) -> float:
    """Fréchet distance between Gaussian fits of `a: [N, D]` and `b: [M, D]` (N, M >= 2).

    `d² = |μ_a - μ_b|² + tr(Σ_a) + tr(Σ_b) - 2 tr((Σ_a^½ Σ_b Σ_a^½)^½)` with unbiased covariances.
    The trace term is computed with symmetric eigendecompositions only (no general matrix square
    root): `tr sqrt(Σ_a Σ_b) = Σ_i sqrt(λ_i(Σ_a^½ Σ_b Σ_a^½))`, which is exact for PSD matrices
    and stable when either covariance is singular. `eps` is the relative eigenvalue tolerance
    (see `_psd_eigenvalues`); the result is clamped at 0 against round-off.
    """
    a, b = feature_pair(a, b, min_rows=2)
    mean_term = float(((a.mean(0) - b.mean(0)) ** 2).sum())
    cov_a, cov_b = _covariance(a), _covariance(b)
    w, v = _psd_eigenvalues(cov_a, eps)
    sqrt_a = (v * w.sqrt()) @ v.T
    inner, _ = _psd_eigenvalues(sqrt_a @ cov_b @ sqrt_a, eps)
    trace_term = float(torch.trace(cov_a) + torch.trace(cov_b) - 2.0 * inner.sqrt().sum())
    return max(mean_term + trace_term, 0.0)


def _polynomial_kernel_sum(x: torch.Tensor, y: torch.Tensor, *, skip_diagonal: bool) -> float:
    """Σ_ij k(x_i, y_j) with `k(x, y) = (x·y / D + 1)^3`, in row blocks; `skip_diagonal` drops i == j."""
    dim = x.shape[1]
    total = 0.0
    for start in range(0, x.shape[0], _KERNEL_BLOCK):
        block = (x[start:start + _KERNEL_BLOCK] @ y.T / dim + 1.0) ** 3
        if skip_diagonal:
            rows = torch.arange(block.shape[0])
            block[rows, rows + start] = 0.0
        total += float(block.sum())
    return total


def kernel_distance(a: ArrayLike, b: ArrayLike) -> float:
    """Unbiased MMD² between `a: [N, D]` and `b: [M, D]` (N, M >= 2) with `k(x, y) = (x·y/D + 1)^3`.

    `MMD² = Σ_{i≠j} k(a_i, a_j) / N(N-1) + Σ_{i≠j} k(b_i, b_j) / M(M-1) - 2 Σ_ij k(a_i, b_j) / NM`,
    the estimator of KID (Bińkowski et al. 2018) and KVD; it can be slightly negative.
    """
    a, b = feature_pair(a, b, min_rows=2)
    n, m = a.shape[0], b.shape[0]
    k_aa = _polynomial_kernel_sum(a, a, skip_diagonal=True) / (n * (n - 1))
    k_bb = _polynomial_kernel_sum(b, b, skip_diagonal=True) / (m * (m - 1))
    k_ab = _polynomial_kernel_sum(a, b, skip_diagonal=False) / (n * m)
    return k_aa + k_bb - 2.0 * k_ab
