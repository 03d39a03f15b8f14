"""Memory per GPU planned before launch: model states under ZeRO-2 and activations, per phase, against a
device's memory, and the largest micro batch that fits.

- Model states follow DeepSpeed's own arithmetic for ZeRO-2 (`estimate_zero2_model_states_mem_needs`),
  split by what each phase trains: every weight in the training dtype on every rank; gradients of the
  trainable weights (2 bytes each in bf16, 4 in fp32) whole during the backward; and the fp32 master
  weights, Adam's two moments and fp32 gradients of the trainable weights (16 bytes each) partitioned over
  the ranks, or on the CPU with ``offload_optimizer``. Plus the reduce and all-gather buckets of the
  DeepSpeed JSON.
- Activations are measured, not guessed: the model is built on PyTorch's meta device (no memory, no
  weights) in the run's dtype, one forward and the loss run on batches of one and two samples of the
  config's shapes, and every tensor autograd saves for the backward is counted (``saved_tensors_hooks``):
  the difference is the cost of a sample, the rest (weights the backward reuses: counted again, on the
  safe side) a fixed cost. That is exact for what the
  backward keeps; the allocator's fragmentation and temporaries of the backward are not in it, which is
  what `MARGIN` is for.
- A fixed `RUNTIME_BYTES` stands for the CUDA context, cuBLAS/NCCL workspaces and PyTorch's caches.

These are estimates until measured on the device (``scripts/bench_gpu.py`` reports real peaks).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch

from stage1_ds.config import Config, Phase
from stage1_ds.data.batch import Batch, TimeframeWindow
from stage1_ds.data.features import num_features
from stage1_ds.model.losses import stage1_loss
from stage1_ds.model.stage1 import Stage1Model
from stage1_ds.timeframes import sort_timeframes

GIB = 1024**3
#: The CUDA context, library workspaces and caches on each GPU (about 1-2 GiB on recent GPUs; taken high).
RUNTIME_BYTES = 2 * GIB
#: Headroom on top of the plan for fragmentation and the backward's temporaries: plan at most this share
#: of the device's memory.
MARGIN = 0.85
#: Adam under mixed precision keeps, per trainable weight, an fp32 master copy, two fp32 moments and an
#: fp32 gradient: 16 bytes, partitioned over the ranks by ZeRO-2 (DeepSpeed's estimator uses the same).
OPTIMIZER_BYTES_PER_WEIGHT = 16


@dataclass(frozen=True)
class PhasePlan:
    """One phase's memory per GPU, in bytes, at the config's micro batch."""

    phase: str
    weights: int
    trainable: int
    model_states: int
    activations_per_sample: int
    activations_fixed: int
    micro_batch: int

    @property
    def activations(self) -> int:
        return self.activations_fixed + self.activations_per_sample * self.micro_batch

    @property
    def total(self) -> int:
        return self.model_states + self.activations + RUNTIME_BYTES

    def largest_micro_batch(self, device_bytes: int) -> int:
        """The largest micro batch whose plan stays within `MARGIN` of ``device_bytes`` (0: none does)."""
        room = MARGIN * device_bytes - self.model_states - self.activations_fixed - RUNTIME_BYTES
        return max(0, int(room // max(self.activations_per_sample, 1)))


def meta_batch(config: Config, size: int) -> Batch:
    """A batch of the config's shapes on the meta device (no memory, no values): every timeframe's full
    window, every bar masked and valid."""
    meta = torch.device("meta")
    features = num_features(config.data.volume)
    names = [tf.value for tf in sort_timeframes(config.data.timeframes)]
    windows = {}
    for k, tf in enumerate(names):
        length = config.data.bars(tf)
        windows[tf] = TimeframeWindow(
            features=torch.empty((size, length, features), device=meta),
            valid=torch.empty((size, length), dtype=torch.bool, device=meta),
            start_time=torch.empty((size, length), dtype=torch.int64, device=meta),
            parent_index=None
            if k == len(names) - 1
            else torch.empty((size, length), dtype=torch.int64, device=meta),
            scale=torch.empty((size,), device=meta),
            mask=torch.empty((size, length), dtype=torch.bool, device=meta),
            volume_scale=torch.empty((size,), device=meta) if config.data.volume else None,
        )
    return Batch(
        windows=windows,
        reference_price=torch.empty((size,), dtype=torch.float64, device=meta),
        anchor_time=torch.empty((size,), dtype=torch.int64, device=meta),
        instrument=torch.empty((size,), dtype=torch.int64, device=meta),
        sample_id=torch.empty((size,), dtype=torch.int64, device=meta),
        mask_mode=torch.empty((size,), dtype=torch.int64, device=meta),
        future_size=(
            torch.empty((size, len(config.data.future_minutes)), device=meta)
            if config.data.future_minutes
            else None
        ),
    )


def saved_activation_bytes(model: Stage1Model, batch: Batch, config: Config) -> int:
    """Bytes of every tensor autograd saves for the backward in one forward and the loss."""
    total = 0

    def count(tensor: torch.Tensor) -> torch.Tensor:
        nonlocal total
        total += tensor.numel() * tensor.element_size()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(count, lambda tensor: tensor):
        output = model(batch)
        stage1_loss(output.reconstruction, batch, config.model.loss, output.future_size)
    return total


def meta_model(config: Config) -> Stage1Model:
    """The config's model on the meta device, random init (the layout of its preset; pretrained weights are
    not read: the plan needs shapes only)."""
    layout_only = copy.deepcopy(config)
    layout_only.model.encoder.pretrained = None
    with torch.device("meta"):
        return Stage1Model(layout_only.model, layout_only.data)


def plan_memory(config: Config, bf16: bool, world_size: int, offload: bool, buckets: int) -> list[PhasePlan]:
    """Per phase of ``config.train.phases``, the memory per GPU (see the module docstring).

    Args:
        bf16: the run's precision (weights, gradients and activations in bf16, else fp32).
        world_size: ranks over all nodes (ZeRO-2 partitions the optimizer over them).
        offload: the optimizer states live on the CPU.
        buckets: elements of the reduce and all-gather buckets together (the DeepSpeed JSON's).
    """
    dtype_bytes = 2 if bf16 else 4
    model = meta_model(config)
    one, two = meta_batch(config, 1), meta_batch(config, 2)
    plans = []
    for phase_config in config.train.phases:
        with torch.device("meta"):  # LoRA adapters added on the meta device too
            model.set_phase(phase_config.name, config.model.lora)
        model.to(torch.bfloat16 if bf16 else torch.float32)
        weights = sum(p.numel() for p in model.parameters())
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        optimizer = 0 if offload else OPTIMIZER_BYTES_PER_WEIGHT * trainable // world_size
        states = dtype_bytes * (weights + trainable) + optimizer + dtype_bytes * buckets
        # What autograd saves grows linearly with the batch; the part that does not (weights the
        # backward reuses, batch-free tables) is counted once.
        saved_one, saved_two = (saved_activation_bytes(model, b, config) for b in (one, two))
        plans.append(
            PhasePlan(
                phase=Phase(phase_config.name).value,
                weights=weights,
                trainable=trainable,
                model_states=states,
                activations_per_sample=saved_two - saved_one,
                activations_fixed=2 * saved_one - saved_two,
                micro_batch=config.train.micro_batch_size,
            )
        )
    return plans
