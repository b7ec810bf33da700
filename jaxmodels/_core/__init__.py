"""Floor 1: result codes, tree helpers and shared type aliases."""

from ._results import RESULTS as RESULTS
from ._tree import (
    check_positive as check_positive,
    check_positive_int as check_positive_int,
    leading_size as leading_size,
    tree_allfinite as tree_allfinite,
    tree_index as tree_index,
    tree_size as tree_size,
    tree_where as tree_where,
)
