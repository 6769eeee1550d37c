"""What the engine sees of distributed parameters: DTensor shards (FSDP2 ``fully_shard``),
replicated tensors (DDP), and the reduction of a norm over them.

Pure helpers the engine calls; nothing here launches a kernel, keeps state or knows a state
dict format (``triton_adam.distributed`` maps Paddle state dicts of sharded runs).

**What the optimizer sees.** ``torch.distributed.fsdp.fully_shard`` replaces every parameter
by an ``nn.Parameter`` that is a ``DTensor`` (placements ``(Shard(0),)`` on a 1-D mesh,
``(Replicate(), Shard(0))`` for HSDP); ``p.grad`` is a DTensor with the same mesh and
placements. The local shard (``p._local_tensor``) is a contiguous tensor that keeps its object
and address from step to step (FSDP2 all-gathers into other buffers); shards may be uneven
(``torch.chunk`` rule: 7 rows over 2 ranks are 4 + 3) or empty (1 row over 2 ranks: 1 + 0).
``p.data_ptr()`` of a DTensor is 0, so every address, shape and numel must be taken from
``local_tensor(p)``. Gradient locals are views into one flat reduce-scatter buffer per FSDP
group (a bias's grad starts at an offset of that buffer, not always 16-byte aligned); a
gradient that exists is accumulated into in place (same objects), a gradient set to None is
new at the next backward. ``DistributedDataParallel`` changes nothing the optimizer sees:
plain parameters, plain gradients already averaged over the ranks.

**Global norm over shards** (``ClipGradByGlobalNorm``, and ``ClipGradByNorm`` of a sharded
tensor). Every element of every gradient must enter the sum of squares exactly once::

    sum_sq_total = all_reduce(sum over sharded local shards) + (sum over replicated, once)

computed with one all-reduce of the ``[n_outputs]`` vector of per-output sums of squares:
each rank adds the local sum of squares of the members it *owns* (``NormReduction.owners``)
and the vector is summed over ``NormReduction.group``. A sharded member is owned by every rank
whose coordinate is 0 on each mesh dimension the member is replicated over (so each distinct
shard is added once; HSDP's replicas on other coordinates add 0); a replicated member (plain
tensor, or a DTensor replicated on every mesh dimension) is owned by rank 0 of the group only.
When no member is sharded there is no group and every rank owns everything: the norm is the
local one, as in a single process (DDP). Because the all-reduced sum is the same bits on every
rank, every rank derives the same clip scale, and DDP-style replicated parameters stay
identical across ranks.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

__all__ = [
    "NormReduction", "all_reduce_sum_", "check_grad_placement", "full_tensor_like",
    "global_offset", "is_dtensor", "is_sharded", "local_shard_like", "local_tensor",
    "norm_reduction",
]


def _dtensor_type() -> type | None:
    # A DTensor can only exist once torch.distributed.tensor has been imported, so a model
    # without one never pays for that import (and a torch build without distributed works).
    module = sys.modules.get("torch.distributed.tensor")
    return getattr(module, "DTensor", None) if module is not None else None


def is_dtensor(t: object) -> bool:
    """True if ``t`` is a ``torch.distributed.tensor.DTensor`` (an FSDP2 parameter or grad)."""
    cls = _dtensor_type()
    return cls is not None and isinstance(t, cls)


def local_tensor(t: torch.Tensor) -> torch.Tensor:
    """The local shard of a DTensor (the tensor object DTensor holds: no copy, no view, the
    same object at every call), else ``t`` itself.

    ``DTensor.to_local()`` is not used: on an ``nn.Parameter`` it returns a fresh view at every
    call, which would defeat the buckets' per-step identity check of gradients and params.
    """
    if not is_dtensor(t):
        return t
    local = getattr(t, "_local_tensor", None)
    if local is None:  # not expected for torch >= 2.4; keep working if the attribute moves
        with torch.no_grad():
            local = t.to_local()
    return local


def _split_dims(placements: Sequence[Any], what: str) -> list[int]:
    """Mesh dimensions a DTensor is split over (Shard, _StridedShard, any non-replicate)."""
    dims = []
    for i, pl in enumerate(placements):
        if pl.is_partial():
            raise ValueError(f"{what} has a Partial placement on mesh dimension {i}: its "
                             "local values are unreduced partial sums; reduce (redistribute) "
                             "the gradients before the optimizer step")
        if not pl.is_replicate():
            dims.append(i)
    return dims


def is_sharded(t: torch.Tensor) -> bool:
    """True if ``t`` is a DTensor split over at least one mesh dimension (its local tensor is
    not the whole tensor). Plain tensors and all-``Replicate`` DTensors are not."""
    return is_dtensor(t) and bool(_split_dims(t.placements, "tensor"))


def check_grad_placement(param: torch.Tensor, grad: torch.Tensor, what: str) -> None:
    """Raise ``ValueError`` unless ``grad`` is laid out like ``param``: both plain tensors, or
    DTensors on the same mesh with the same placements (so the local grad lines up element
    for element with the local param)."""
    p_dt, g_dt = is_dtensor(param), is_dtensor(grad)
    if p_dt != g_dt:
        raise ValueError(f"{what}: the parameter is {'a DTensor' if p_dt else 'a plain tensor'}"
                         f" but its gradient is {'a DTensor' if g_dt else 'a plain tensor'}")
    if not p_dt:
        return
    if grad.device_mesh != param.device_mesh or tuple(grad.placements) != tuple(
            param.placements):
        raise ValueError(f"{what}: gradient placements {tuple(grad.placements)} on "
                         f"{grad.device_mesh} differ from the parameter's "
                         f"{tuple(param.placements)} on {param.device_mesh}; redistribute "
                         "the gradient like the parameter")
    _split_dims(grad.placements, what)  # Partial gradients are rejected


@dataclass(frozen=True)
class NormReduction:
    """How the sums of squares of a list of gradients combine into a global norm.

    ``group``: the process group the per-output sums of squares are all-reduced over, or None
    when every rank holds every gradient entirely (no all-reduce; the local norm is the norm).
    ``owners``: per tensor of the list, whether this rank adds the tensor's local sum of
    squares (always True without a group). Every rank of ``group`` must take part in the
    all-reduce at every clipped step, also with nothing to add (it adds zeros).
    """

    group: Any  # torch.distributed.ProcessGroup | None
    owners: tuple[bool, ...]

    @property
    def distributed(self) -> bool:
        return self.group is not None


def _root_mesh(mesh: Any) -> Any:
    get = getattr(mesh, "_get_root_mesh", None)
    return get() if get is not None else mesh


def _owner_of_sharded(t: torch.Tensor, root: Any, what: str) -> bool:
    """Whether this rank adds sharded ``t``'s local sum: coordinate 0 on every dimension of
    the root mesh that ``t`` is not split over."""
    mesh = t.device_mesh
    split = set(_split_dims(t.placements, what))
    coord = mesh.get_coordinate()
    if coord is None:  # this rank is not in the mesh: it holds nothing of t
        return False
    if mesh == root or mesh.size() == root.size():
        return all(c == 0 for i, c in enumerate(coord) if i not in split)
    # A submesh (e.g. FSDP's data-parallel mesh inside a (dp, tp) mesh): the root dimensions
    # it does not cover are replicate dimensions of t too. Map by dimension name.
    names, root_names = mesh.mesh_dim_names, root.mesh_dim_names
    if not names or not root_names or any(n not in root_names for n in names):
        raise NotImplementedError(
            f"{what} lives on a submesh {mesh} of {root} whose dimensions cannot be matched by "
            "name (flattened or unnamed mesh dimensions): its replicas cannot be counted once")
    root_coord = root.get_coordinate()
    split_names = {names[i] for i in split}
    return all(c == 0 for i, c in enumerate(root_coord) if root_names[i] not in split_names)


def norm_reduction(tensors: Sequence[torch.Tensor]) -> NormReduction:
    """The group and ownership rule for a norm over (the gradients of) ``tensors``.

    Call it with **all** the parameters of the optimizer that can enter a norm (the rule must
    not depend on which of them have a gradient this step, and must be the same on every
    rank): one group serves the whole ``[n_outputs]`` vector of sums of squares.

    * No sharded tensor: ``group=None``, every rank owns everything (single process, DDP).
    * Some sharded: all sharded tensors must live on one root mesh (``NotImplementedError``
      otherwise); the group is that mesh's (a 1-D mesh's own group, ``WORLD`` for an n-D mesh
      over every rank). Sharded tensors are owned as explained in the module docstring;
      replicated ones (plain, or all-``Replicate`` DTensors) by rank 0 of the group.

    Raises ``ValueError`` for a ``Partial`` placement.
    """
    what = [f"parameters[{i}]" for i in range(len(tensors))]
    sharded = [i for i, t in enumerate(tensors) if is_dtensor(t)
               and _split_dims(t.placements, what[i])]
    if not sharded:
        return NormReduction(None, (True,) * len(tensors))
    import torch.distributed as dist

    roots = []
    for i in sharded:
        root = _root_mesh(tensors[i].device_mesh)
        if not any(root == r for r in roots):
            roots.append(root)
    if len(roots) > 1:
        raise NotImplementedError(f"sharded parameters live on {len(roots)} different device "
                                  "meshes; a global norm over several meshes is not supported")
    root = roots[0]
    if root.ndim == 1:
        group = root.get_group()
    elif root.size() == dist.get_world_size():
        group = dist.group.WORLD
    else:
        raise NotImplementedError(f"sharded parameters on the {root.ndim}-D mesh {root} that "
                                  "does not span every rank: no single group to reduce over")
    first_rank = dist.get_rank(group) == 0
    owners = tuple(_owner_of_sharded(t, root, what[i]) if i in sharded else first_rank
                   for i, t in enumerate(tensors))
    return NormReduction(group, owners)


def all_reduce_sum_(tensor: torch.Tensor, group: Any, *, async_op: bool = False) -> Any:
    """Sum ``tensor`` in place over ``group`` (no-op for ``group=None`` or a 1-rank group).

    Never reads a value on the host. With NCCL (CUDA tensors) the collective is enqueued on
    NCCL's stream and, with ``async_op=False``, the current stream is made to wait for it:
    kernels launched afterwards on the current stream see the sum, the host does not block.
    With ``async_op=True`` the returned work's ``wait()`` must be called before a consumer is
    launched (a stream wait on NCCL, no host block). With gloo (CPU tensors) the sum runs on
    the calling thread. Returns the work (``async_op=True``) or None.
    """
    if group is None:
        return None
    import torch.distributed as dist

    if dist.get_world_size(group) == 1:
        return None
    if not tensor.is_contiguous():
        raise ValueError("all_reduce_sum_ needs a contiguous tensor (it reduces in place)")
    return dist.all_reduce(tensor, op=dist.ReduceOp.SUM, group=group, async_op=async_op)


# ------------------------------------------------------------------------ state of a sharded run
def global_offset(t: torch.Tensor) -> int:
    """Where ``t``'s local tensor starts in the whole tensor, in elements of the whole
    (row-major) tensor: 0 for a plain tensor. For a dim-0 shard (FSDP2's default) the local
    elements are that many places on in the whole tensor, in order; for other splits it is
    the offset of the local tensor's first element (distinct per shard, not a mapping of
    every element). Host arithmetic on the placements, no communication."""
    if not is_sharded(t):
        return 0
    from torch.distributed.tensor._utils import compute_local_shape_and_global_offset

    _, offset = compute_local_shape_and_global_offset(t.shape, t.device_mesh, t.placements)
    strides = [1] * len(t.shape)
    for d in range(len(t.shape) - 2, -1, -1):
        strides[d] = strides[d + 1] * t.shape[d + 1]
    return sum(o * s for o, s in zip(offset, strides))


def full_tensor_like(local: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """The whole tensor whose local shard on this rank is ``local``, sharded as ``like`` (a
    parameter); ``local`` itself if ``like`` is not a DTensor. A collective (an all-gather
    over ``like``'s mesh): every rank must call it, in the same order."""
    if not is_dtensor(like):
        return local
    from torch.distributed.tensor import DTensor

    if tuple(local.shape) != tuple(local_tensor(like).shape):
        raise ValueError(f"a local shard of shape {tuple(local.shape)} does not match the "
                         f"parameter's local shape {tuple(local_tensor(like).shape)}")
    dt = DTensor.from_local(local, like.device_mesh, like.placements, run_check=False,
                            shape=like.shape, stride=like.stride())
    return dt.full_tensor()


def local_shard_like(full: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """This rank's shard of ``full``, sharded as ``like``: a new contiguous tensor shaped like
    ``like``'s local tensor (``full`` itself if ``like`` is not a DTensor). No communication:
    every rank must hold ``full``."""
    if not is_dtensor(like):
        return full
    from torch.distributed.tensor import Replicate, distribute_tensor

    if tuple(full.shape) != tuple(like.shape):
        raise ValueError(f"a full tensor of shape {tuple(full.shape)} does not match the "
                         f"parameter's shape {tuple(like.shape)}")
    mesh = like.device_mesh
    # Replicate (each rank takes its own copy, src_data_rank=None: no broadcast), then
    # redistribute to the parameter's placements: a local slice, the same split (including
    # uneven and _StridedShard layouts) the parameter itself has.
    replicated = distribute_tensor(full.detach(), mesh, [Replicate()] * mesh.ndim,
                                   src_data_rank=None)
    shard = replicated.redistribute(mesh, like.placements).to_local()
    return shard.contiguous().clone()


