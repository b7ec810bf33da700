"""Kolmogorov-Arnold networks: learnable univariate functions on the edges.

Spline KANs with adaptive grids, grid extension, sparsity regularisation, pruning and
symbolic snapping; bases defined by data (B-spline, Chebyshev, Fourier, Gaussian RBF,
ReLU-KAN, AF-KAN) and a KAN that selects its basis per layer; KAN autoencoders; and
MetaCluster compression.
"""

from ._autoencoder import KANAutoencoder as KANAutoencoder
from ._bases import (
    AFKAN as AFKAN,
    AFKANLayer as AFKANLayer,
    Chebyshev as Chebyshev,
    Fourier as Fourier,
    GaussianRBF as GaussianRBF,
    ReLUKAN as ReLUKAN,
    Selectable as Selectable,
    af_kan as af_kan,
)
from ._basis import (
    AbstractBasis as AbstractBasis,
    BSpline as BSpline,
    bspline as bspline,
)
from ._grid import extend_grid as extend_grid, update_grid as update_grid
from ._layer import (
    KAN as KAN,
    AbstractKANLayer as AbstractKANLayer,
    KANLayer as KANLayer,
    edge_curves as edge_curves,
)
from ._metacluster import (
    CodebookKANLayer as CodebookKANLayer,
    KMeansSolution as KMeansSolution,
    MetaKANLayer as MetaKANLayer,
    compress as compress,
    kmeans as kmeans,
    meta_kan as meta_kan,
    storage as storage,
)
from ._prune import (
    active_nodes as active_nodes,
    edge_scores as edge_scores,
    prune_edges as prune_edges,
    prune_nodes as prune_nodes,
)
from ._regularise import regularisation as regularisation
from ._symbolic import (
    SYMBOLIC_LIBRARY as SYMBOLIC_LIBRARY,
    SymbolicLayer as SymbolicLayer,
    auto_symbolic as auto_symbolic,
    fit_symbolic as fit_symbolic,
    formula as formula,
    snap as snap,
    suggest_symbolic as suggest_symbolic,
)
