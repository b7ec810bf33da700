"""Implicit and equilibrium models: layers defined by a fixed point or a root.

Deep equilibrium models with Anderson and Broyden solvers written as optimistix solvers,
monotone operator equilibrium networks and monotone deep Boltzmann machines, HomoODE
(an equilibrium reached along a homotopy ODE), equilibrium propagation with Jacobian
homeostasis, and learned proximal networks.
"""

from ._deq import (
    AbstractDEQGradient as AbstractDEQGradient,
    DEQ as DEQ,
    DEQSolution as DEQSolution,
    ImplicitGradient as ImplicitGradient,
    jacobian_penalty as jacobian_penalty,
    JacobianFreeGradient as JacobianFreeGradient,
    PhantomGradient as PhantomGradient,
    TanhCell as TanhCell,
)
from ._solvers import Anderson as Anderson, BadBroyden as BadBroyden, Broyden as Broyden
