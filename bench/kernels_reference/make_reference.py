"""Reference NNGP/NTK values from neural-tangents for `tests/test_kernels_stax.py`.

neural-tangents (NT) no longer imports with current JAX, so its last release runs in a
separate environment (Python 3.11):

    python -m venv .nt-env && .nt-env/bin/pip install -r bench/kernels_reference/requirements.txt && JAX_ENABLE_X64=1 .nt-env/bin/python bench/kernels_reference/make_reference.py

It computes, in float64, the NNGP and NTK of every architecture in `ARCHITECTURES` on
fixed inputs (stored too), with `x2=None` ("self") and `x2 != x1` ("cross"), and NT's
`cov1` (the batch diagonal, "diag"), and writes `tests/data/kernels_reference.npz`.
The table is stored in the file as JSON (key `table`), and the test builds the same
networks from it with `jaxmodels.kernels.stax`.
"""

import json
import os
from pathlib import Path

import jax
import numpy as np


# One architecture: (input set, layers); a layer is [name, args, kwargs] or
# ["serial" | "parallel", [layers...]].
def _mlp(act, depth=2, W_std=1.5, b_std=0.1, width=512, **kwargs):
    layers = []
    for _ in range(depth):
        layers += [["Dense", [width], dict(W_std=W_std, b_std=b_std, **kwargs)], act]
    return layers + [["Dense", [1], dict(W_std=W_std, b_std=b_std, **kwargs)]]


def _conv1d(padding, parameterization="ntk"):
    kw = dict(padding=padding, W_std=1.5, b_std=0.1, parameterization=parameterization)
    return [
        ["Conv", [8, [3]], kw],
        ["Relu", [], {}],
        ["Conv", [8, [2]], kw],
        ["Relu", [], {}],
        ["GlobalAvgPool", [], {}],
        ["Dense", [1], dict(W_std=1.5, b_std=0.1, parameterization=parameterization)],
    ]


RELU = ["Relu", [], {}]
ARCHITECTURES = {
    "relu3_ntk": ["dense", _mlp(RELU)],
    "relu3_standard": ["dense", _mlp(RELU, parameterization="standard")],
    "erf": ["dense", _mlp(["Erf", [1.2, 0.7, 0.1], {}])],
    "leaky_relu": ["dense", _mlp(["LeakyRelu", [0.1], {}])],
    "abrelu": ["dense", _mlp(["ABRelu", [-0.5, 1.0], {}])],
    "sign": ["dense", _mlp(["Sign", [], {}])],
    "gelu": ["dense", _mlp(["Gelu", [], {}])],
    "identity": ["dense", _mlp(["Identity", [], {}])],
    "relu5": ["dense", _mlp(RELU, depth=4, b_std=0.05)],
    "residual": [
        "dense",
        [
            ["Dense", [512], dict(W_std=1.0, b_std=0.1)],
            [
                "serial",
                [
                    ["FanOut", [2], {}],
                    [
                        "parallel",
                        [
                            ["serial", [RELU, ["Dense", [512], dict(W_std=1.5)]]],
                            ["Identity", [], {}],
                        ],
                    ],
                    ["FanInSum", [], {}],
                ],
            ],
            RELU,
            ["Dense", [1], dict(W_std=1.5, b_std=0.1)],
        ],
    ],
    "conv1d_same": ["seq", _conv1d("SAME")],
    "conv1d_valid": ["seq", _conv1d("VALID")],
    "conv1d_circular": ["seq", _conv1d("CIRCULAR")],
    "conv1d_standard": ["seq", _conv1d("SAME", "standard")],
    "conv2d_flatten": [
        "image",
        [
            ["Conv", [8, [2, 2]], dict(padding="SAME", W_std=1.5, b_std=0.1)],
            RELU,
            ["Conv", [8, [3, 2]], dict(strides=[2, 1], padding="VALID", W_std=1.3)],
            RELU,
            ["Flatten", [], {}],
            ["Dense", [1], dict(W_std=1.5, b_std=0.1)],
        ],
    ],
}


def build(stax, layers):
    """The `stax.serial` network of a layer list (shared with the test)."""

    def one(layer):
        if layer[0] in ("serial", "parallel"):
            return getattr(stax, layer[0])(*(one(sub) for sub in layer[1]))
        name, args, kwargs = layer
        args = [tuple(a) if isinstance(a, list) else a for a in args]
        kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in kwargs.items()}
        return getattr(stax, name)(*args, **kwargs)

    return stax.serial(*(one(layer) for layer in layers))


def main():
    from neural_tangents import stax

    assert jax.config.jax_enable_x64, "run with JAX_ENABLE_X64=1"
    rng = np.random.default_rng(0)
    shapes = {"dense": (3,), "seq": (6, 2), "image": (5, 4, 2)}
    arrays = {}
    for kind, shape in shapes.items():
        arrays[f"inputs/{kind}/x1"] = rng.normal(size=(4,) + shape)
        arrays[f"inputs/{kind}/x2"] = rng.normal(size=(3,) + shape)
    for name, (kind, layers) in ARCHITECTURES.items():
        _, _, kernel_fn = build(stax, layers)
        x1, x2 = arrays[f"inputs/{kind}/x1"], arrays[f"inputs/{kind}/x2"]
        for case, other in (("self", None), ("cross", x2)):
            k = kernel_fn(x1, other, ("nngp", "ntk"))
            arrays[f"{name}/{case}/nngp"] = np.asarray(k.nngp)
            arrays[f"{name}/{case}/ntk"] = np.asarray(k.ntk)
        arrays[f"{name}/diag/nngp"] = np.asarray(kernel_fn(x1, None, "cov1"))
    arrays["table"] = np.array(json.dumps(ARCHITECTURES))
    out = (
        Path(__file__).resolve().parents[2] / "tests" / "data" / "kernels_reference.npz"
    )
    np.savez_compressed(out, **arrays)
    print(f"wrote {out} ({os.path.getsize(out)} bytes, {len(arrays)} arrays)")


if __name__ == "__main__":
    main()
