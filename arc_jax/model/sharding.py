"""Logical axis names and the rules that map them onto a device mesh.

Every parameter carries a `logical_axes` tuple (one name per dimension, e.g. ("embed", "mlp")),
and activations are constrained with names like ("batch", "act_seq", "act_embed"). A `Sharding`
pairs a mesh with rules `(logical name, mesh axis or axes or None)`; mesh axes that the mesh lacks
are ignored, so the same rules serve a (data, fsdp, tensor) mesh and a 1-device one.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Sequence

import jax
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

MeshAxes = str | tuple[str, ...] | None

# Parameters: FSDP over "fsdp" on the model dimension, tensor parallelism over "tensor" on
# heads / MLP / vocab. Activations: batch over (data, fsdp), heads / MLP / vocab over "tensor".
DEFAULT_RULES: tuple[tuple[str, MeshAxes], ...] = (
    ("vocab", "tensor"),
    ("embed", "fsdp"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("mlp", "tensor"),
    ("norm", None),
    ("lora_rank", None),
    ("batch", ("data", "fsdp")),
    ("act_seq", None),
    ("act_embed", None),
    ("act_heads", "tensor"),
    ("act_mlp", "tensor"),
    ("act_vocab", "tensor"),
)


@dataclasses.dataclass(frozen=True)
class Sharding:
    """A mesh plus logical-axis rules; turns logical axis names into `NamedSharding`s."""

    mesh: Mesh
    rules: tuple[tuple[str, MeshAxes], ...] = DEFAULT_RULES

    def spec(self, logical_axes: Sequence[str | None], shape: Sequence[int] | None = None
             ) -> PartitionSpec:
        """PartitionSpec for `logical_axes`; a dimension that does not divide evenly is replicated."""
        rules = dict(self.rules)
        used: set[str] = set()
        out = []
        for dim, name in enumerate(logical_axes):
            if name is not None and name not in rules:
                raise KeyError(f"logical axis {name!r} has no sharding rule; rules cover "
                               f"{sorted(rules)}")
            axes = rules.get(name) if name is not None else None
            axes = (axes,) if isinstance(axes, str) else tuple(axes or ())
            axes = tuple(a for a in axes if a in self.mesh.shape and a not in used)
            size = math.prod(self.mesh.shape[a] for a in axes)
            if shape is not None and shape[dim] % size:
                axes = ()
            used.update(axes)
            out.append(None if not axes else axes[0] if len(axes) == 1 else axes)
        return PartitionSpec(*out)

    def named(self, logical_axes: Sequence[str | None], shape: Sequence[int] | None = None
              ) -> NamedSharding:
        return NamedSharding(self.mesh, self.spec(logical_axes, shape))


def constrain(x: jax.Array, sharding: Sharding | None, logical_axes: Sequence[str | None]):
    """`with_sharding_constraint` by logical names; the identity without a sharding."""
    if sharding is None:
        return x
    return jax.lax.with_sharding_constraint(x, sharding.named(logical_axes, x.shape))


def variable_sharding(variable: nnx.Variable, sharding: Sharding) -> NamedSharding:
    """Placement of one model variable from its `logical_axes` metadata."""
    axes = variable.get_metadata().get("logical_axes")
    shape = tuple(variable.get_value().shape)
    if axes is None or len(axes) != len(shape):
        raise ValueError(f"variable of shape {shape} has logical_axes {axes}; expected one "
                         "name per dimension")
    return sharding.named(axes, shape)


def state_shardings(state: nnx.State, sharding: Sharding) -> nnx.State:
    """A State of `NamedSharding`s matching `state` (usable as jit in/out shardings)."""
    return jax.tree.map(lambda v: variable_sharding(v, sharding), state,
                        is_leaf=lambda x: isinstance(x, nnx.Variable))
