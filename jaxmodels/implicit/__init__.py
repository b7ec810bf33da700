"""Implicit and equilibrium models: layers defined by a fixed point or a root.

Deep equilibrium models with Anderson and Broyden solvers written as optimistix solvers,
monotone operator equilibrium networks and monotone deep Boltzmann machines, HomoODE
(an equilibrium reached along a homotopy ODE), equilibrium propagation with Jacobian
homeostasis, and learned proximal networks.
"""

from ._deq import (
    DEQ as DEQ,
    AbstractDEQGradient as AbstractDEQGradient,
    DEQSolution as DEQSolution,
    ImplicitGradient as ImplicitGradient,
    JacobianFreeGradient as JacobianFreeGradient,
    PhantomGradient as PhantomGradient,
    TanhCell as TanhCell,
    jacobian_penalty as jacobian_penalty,
)
from ._eqprop import (
    EPGradient as EPGradient,
    EquilibriumNetwork as EquilibriumNetwork,
    ep_loss as ep_loss,
    equilibrium_propagation as equilibrium_propagation,
    homeostatic_loss as homeostatic_loss,
)
from ._homoode import (
    HomoODE as HomoODE,
    MLPCell as MLPCell,
    NewtonHomotopy as NewtonHomotopy,
)
from ._lpn import (
    LearnedProximalNetwork as LearnedProximalNetwork,
    pnp_proximal_gradient as pnp_proximal_gradient,
    proximal_matching_loss as proximal_matching_loss,
    proximal_matching_schedule as proximal_matching_schedule,
)
from ._mondbm import (
    RBM as RBM,
    MeanFieldActivation as MeanFieldActivation,
    MonotoneDBM as MonotoneDBM,
)
from ._monotone import (
    AbstractMonotoneSplitting as AbstractMonotoneSplitting,
    AbstractProxActivation as AbstractProxActivation,
    ForwardBackward as ForwardBackward,
    MonotoneDEQ as MonotoneDEQ,
    MonotoneLinear as MonotoneLinear,
    MonotoneSolution as MonotoneSolution,
    PeacemanRachford as PeacemanRachford,
    ReLU as ReLU,
)
from ._solvers import (
    Anderson as Anderson,
    AndersonLinearSolver as AndersonLinearSolver,
    BadBroyden as BadBroyden,
    Broyden as Broyden,
)
