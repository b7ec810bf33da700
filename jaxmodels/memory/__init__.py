"""Associative memories: modern Hopfield networks and layers, classical and dense
associative memories, Hebbian networks, differentiable clustering, scaling laws of
outer-product memories, and fast-weight programmers.
"""
from ._hopfield import (
    Hopfield as Hopfield,
    HopfieldLayer as HopfieldLayer,
    HopfieldPooling as HopfieldPooling,
    HopfieldSolution as HopfieldSolution,
    hopfield_energy as hopfield_energy,
    hopfield_retrieve as hopfield_retrieve,
    hopfield_update as hopfield_update,
)
from ._clam import (
    ClAM as ClAM,
    ClAMSolution as ClAMSolution,
    KMeansSolution as KMeansSolution,
    clam_loss as clam_loss,
    kmeans as kmeans,
    kmeans_plusplus as kmeans_plusplus,
    normalised_mutual_info as normalised_mutual_info,
    silhouette_score as silhouette_score,
)
from ._spin import (
    AbstractSpinNetwork as AbstractSpinNetwork,
    DenseAssociativeMemory as DenseAssociativeMemory,
    FiniteSizeCapacity as FiniteSizeCapacity,
    HopfieldNetwork as HopfieldNetwork,
    RetrievalCurve as RetrievalCurve,
    SpinSolution as SpinSolution,
    critical_load as critical_load,
    finite_size_capacity as finite_size_capacity,
    hebbian_couplings as hebbian_couplings,
    krotov_hopfield_capacity as krotov_hopfield_capacity,
    max_patterns as max_patterns,
    random_patterns as random_patterns,
    retrieval_curve as retrieval_curve,
)
from ._hebbian import (
    MultitaskResult as MultitaskResult,
    PhaseDiagram as PhaseDiagram,
    diluted_patterns as diluted_patterns,
    hierarchical_amplitudes as hierarchical_amplitudes,
    multitask_magnetisations as multitask_magnetisations,
    noisy_examples as noisy_examples,
    phase_diagram as phase_diagram,
    supervised_network as supervised_network,
    unsupervised_network as unsupervised_network,
)
