"""Per-layer FSDP2 (``torch.distributed.fsdp.fully_shard``) for ICAE's twin encoder and decoder.

The encoder (base + LoRA) and the decoder (the twin tree, see ``model.twin_module``) run the same
frozen weights. FSDP2 lets a parameter belong to one group only, and a group that lists the
encoder's layer i and the decoder's layer i stays gathered from the first's forward to the
second's: after the encoder pass every layer would be gathered at once. So each group is the
*leaf modules* of layer i (its Linear and norm modules): both trees hold those very modules, a
layer call of either tree runs each of them once, and the group is gathered for that call only
(and again for its backward). Everything else (embeddings, final norm, LM head, LoRA weights,
memory and task embeddings) is one root group.
"""

from __future__ import annotations

import contextlib
import sys
from typing import Any, Iterator

from torch import nn


def layer_pairs(model: Any) -> list[tuple[nn.Module, nn.Module]]:
    """(encoder layer i, decoder layer i) of an ICAE."""
    enc = model.encoder.get_base_model().model.layers
    dec = model.decoder.model.layers
    return list(zip(enc, dec))


def shared_leaves(enc_layer: nn.Module, dec_layer: nn.Module) -> list[nn.Module]:
    """The weight-holding modules that layer i of both trees runs: the decoder layer's leaves with parameters."""
    in_encoder = {id(m) for m in enc_layer.modules()}
    leaves = [m for m in dec_layer.modules() if not m._modules and any(True for _ in m.parameters(recurse=False))]
    missing = [type(m).__name__ for m in leaves if id(m) not in in_encoder]
    if missing:
        raise RuntimeError(f"decoder layer modules {missing} are not the encoder's: the decoder is not a twin")
    return leaves


def shard_icae(model: nn.Module, **fsdp_kwargs: Any) -> nn.Module:
    """Shard an ICAE (or HierarchicalICAE) in place with FSDP2: one group per layer's shared leaves, one root group.

    ``fsdp_kwargs`` go to every ``fully_shard`` call (``mesh``, ``reshard_after_forward``,
    ``mp_policy``, ``offload_policy``). Needs an initialised process group.
    """
    from torch.distributed.fsdp import fully_shard

    for enc, dec in layer_pairs(model):
        fully_shard(shared_leaves(enc, dec), **fsdp_kwargs)
    root = {k: v for k, v in fsdp_kwargs.items() if k != "reshard_after_forward"}
    fully_shard(model, **root)
    return model


def fsdp_kwargs(plugin: Any, mesh: Any = None) -> dict[str, Any]:
    """``fully_shard`` arguments from accelerate's ``FullyShardedDataParallelPlugin`` (the fsdp_config of an accelerate config)."""
    from torch.distributed.fsdp import MixedPrecisionPolicy, OffloadPolicy

    return {
        "mesh": mesh,
        "reshard_after_forward": plugin.reshard_after_forward,
        "mp_policy": plugin.mixed_precision_policy or MixedPrecisionPolicy(),
        "offload_policy": plugin.cpu_offload or OffloadPolicy(),
    }


@contextlib.contextmanager
def full_trained_parameters(model: nn.Module) -> Iterator[None]:
    """Within: every trainable parameter of a sharded model is a full (gathered) tensor, to be read (saved).

    A collective: every process must enter. The sharded parameters are put back on exit (loading
    into the full tensors would not reach them: load before sharding). Plain parameters are left
    alone, so without FSDP it does nothing.
    """
    from torch.distributed.tensor import DTensor

    swapped: list[tuple[nn.Module, str, nn.Parameter]] = []
    for module in model.modules():
        for name, p in list(module._parameters.items()):
            if isinstance(p, DTensor) and p.requires_grad:
                # the sharded fp32 master weights, gathered on every process
                module._parameters[name] = nn.Parameter(p.detach().full_tensor(), requires_grad=False)
                swapped.append((module, name, p))
    try:
        yield
    finally:
        for module, name, p in swapped:
            module._parameters[name] = p


def is_sharded(model: nn.Module) -> bool:
    from torch.distributed.fsdp import FSDPModule

    return isinstance(model, FSDPModule)


def enable_on_cpu(accelerator: Any) -> bool:
    """Turn an accelerate FSDP launch into FSDP on CPU processes (gloo); returns whether FSDP is on.

    accelerate sets FSDP up only for GPU processes (its state's FSDP branch sits under MULTI_GPU):
    launched with an FSDP config and ``--use_cpu true``, each process gets plain MULTI_CPU (DDP)
    and the config's FSDP settings are dropped. hicae shards the model itself, so it switches the
    accelerator's state to FSDP with the launcher's settings (its FSDP_* environment): the CPU run
    then takes the same Trainer paths as a GPU run.
    """
    import os

    from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin

    state = accelerator.state
    if getattr(state, "fsdp_plugin", None) is not None:
        return True
    if state.distributed_type != DistributedType.MULTI_CPU or os.environ.get("ACCELERATE_USE_FSDP", "").lower() != "true":
        return False
    state.fsdp_plugin = FullyShardedDataParallelPlugin()
    state.distributed_type = DistributedType.FSDP
    return True


def shard_for_training(model: nn.Module, accelerator: Any) -> None:
    """Shard ``model`` per layer with the accelerator's FSDP settings (before the Trainer prepares it:
    accelerate then leaves a model that is already sharded as it is)."""
    from ..errors import ConfigError

    plugin = accelerator.state.fsdp_plugin
    if plugin.fsdp_version != 2:
        raise ConfigError(f"FSDP version {plugin.fsdp_version}: hicae shards with FSDP version 2 (fully_shard); "
                          "set fsdp_version: 2 in the accelerate config (see configs/accelerate/fsdp.yaml)")
    if plugin.activation_checkpointing:
        raise ConfigError("fsdp_activation_checkpointing: use hicae's --gradient_checkpointing true instead "
                          "(it checkpoints the encoder's and the decoder's layers)")
    mesh = getattr(accelerator, "torch_device_mesh", None)
    shard_icae(model, **fsdp_kwargs(plugin, mesh))
    if accelerator.is_main_process:
        print(f"hicae: per-layer FSDP2 over {accelerator.num_processes} processes "
              f"({len(layer_pairs(model))} layer groups and a root group)", file=sys.stderr)
