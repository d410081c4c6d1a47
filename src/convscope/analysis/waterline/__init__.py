"""Per-layer waterline analysis: measured time of every module joined with its exact counts.

Lavin et al. ("On the Efficiency of Convolutional Neural Networks", 2024) write latency = operations /
(efficiency x peak) and bound a sequence of kernels by its waterline: each kernel needs at least
max(FLOPs / peak compute, bytes / peak bandwidth). Here every aten operator `count()` records is one kernel;
a layer's bound is the sum of its kernels' bounds, and its efficiency is bound / measured time (1 = running at
the machine's ceiling; a layer that takes 10x its bound has efficiency 0.1).

Timing: a `torch.profiler` scope (`record_function`) wraps the forward of every module, entered by a forward
pre-hook and closed by a forward hook. A module's time is its scope's time minus its child modules' scopes
(self time), so in every profiled pass the rows add up exactly to the whole forward: leaf modules are the
layers, and a container's self time is its glue (residual adds, permutes, layer scale in the container's own
`forward`). Each row's time is its median over the profiled passes. The whole model is also timed without hooks
or profiler, and `totals` accounts for it: forward = leaf layers + container glue + unattributed, where
`unattributed_s` is negative when hooks and profiler inflate the layers, and `gap_s` = forward - leaf layers is
the time no layer accounts for.

The package: `kinds` (what a module computes), `bounds` (the waterline bound; `form_roof`: a deploy form's
whole-model bound, each layer priced at its dtype's peak), `results` (LayerProfile and its
rows), `profiler` (timing every module: `profile_layers`), `compare` (whole models: `compare_models`).
"""
from .bounds import FORM_WIDTHS, form_roof, kernel_bound, waterline_bound
from .compare import Comparison, ModelRow, compare_models
from .kinds import layer_kind
from .profiler import profile_layers
from .results import GroupRow, LayerProfile, LayerRow

__all__ = ["FORM_WIDTHS", "Comparison", "GroupRow", "LayerProfile", "LayerRow", "ModelRow", "compare_models",
           "form_roof", "kernel_bound", "layer_kind", "profile_layers", "waterline_bound"]
