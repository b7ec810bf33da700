import optimistix as optx


class RESULTS(optx.RESULTS):  # pyright: ignore[reportGeneralTypeIssues]
    """Result codes of every iterative procedure in jaxmodels (solves, fits, sweeps).

    Extends `optimistix.RESULTS` (and so `lineax.RESULTS`): a code returned by an inner
    optimistix or lineax solve is promoted with `RESULTS.promote(code)`.
    """

    nonfinite_loss = (
        "The loss became non-finite (NaN or inf). Lower the learning rate, clip the "
        "gradients, or check the data for NaNs."
    )
