"""Kernel predictions, mirroring `neural_tangents.predict`: GP posteriors of the
NNGP / NTK / NTK-GP regimes and linearised gradient flow on MSE (Lee et al., "Wide
Neural Networks of Any Depth Evolve as Linear Models Under Gradient Descent", 2019).
"""

from ._predict import (
    Gaussian as Gaussian,
    gp_inference as gp_inference,
    gradient_descent_mse as gradient_descent_mse,
    gradient_descent_mse_ensemble as gradient_descent_mse_ensemble,
)
