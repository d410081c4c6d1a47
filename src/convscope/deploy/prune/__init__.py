"""Structured pruning with physical removal: the pruned model really is smaller.

Three scopes, each a pool of prunable units ranked globally on its own:

* ``"mlp"``: hidden channels. A *hidden group* is producer -> per-channel followers -> consumer: an MLP's fc1
  (Linear or 1x1 conv), the layers that act on its hidden channels one by one, and fc2. Followers may be
  activations, dropout, BatchNorm, GRN, a squeeze-excite over the hidden channels, and depthwise or grouped
  convs (an inverted separable conv / MBConv: 1x1 expand -> norm/act -> depthwise kxk -> norm/act [-> SE] -> 1x1
  project). A depthwise conv loses the channel; a grouped conv with m > 1 channels per group loses whole groups,
  so such a group's unit is m channels. Groups are found through the shared layers (`Mlp`, `ConvMlp`,
  `GlobalResponseNormMlp`, `SepConv`) and through a declared hook: a block that writes its MLP inline sets
  ``prune_hidden = (producer, (followers...), consumer)`` with (dotted) attribute names (UniRepLKNet, MaxViT's and
  MOAT's MBConv). A norm over the hidden channels together (an MLP head's LayerNorm) makes a group unprunable.
* ``"heads"``: whole heads of multi-head attention whose q, k, v come from one Linear laid out (3, heads,
  head_dim) and whose output goes through one Linear `proj`: the shared `Attention` (CAFormer, ConViT, CrossViT)
  and modules declaring ``prune_heads = (qkv, proj, (per-head parameters or Linear layers...))``
  (`RelPosWindowAttention`'s bias table, `LengthScaledAttention`'s temperature, query embedding and the last layer
  of its position-bias MLP). A head loses its rows in q, k and v and its columns in proj; head_dim is unchanged,
  so the softmax scale (1 / sqrt(head_dim), or the module's own) is unchanged too.
* ``"stage"``: the residual-stream channels of each stage, for models laid out stem -> stages (downsample,
  blocks) -> head whose blocks declare ``prune_stream = ((attribute, role), ...)`` (ConvNeXt, InceptionNeXt,
  UniRepLKNet). One group per stage spans the stem's / downsampling conv's rows and the norms after it, per block
  the depthwise conv (every branch of a Dilated Reparam Block), norms, SE, fc1's columns, fc2's rows and the layer
  scale, and the next downsampling norm and conv columns (the head's norm and first Linear for the last stage).
  InceptionNeXt's mixer splits the channels into identity / square / w-band / h-band parts: a channel stays in
  its part, the slimmed mixer gets explicit `split_sizes`, and each conv part keeps at least one channel.

Masking (the "masked model", `mask_`) zeroes every parametric slice that writes a removed unit: the producer's
row and bias, a follower conv's filters and bias, BatchNorm's and GRN's weight and bias; for a head, its rows of
q, k and v (its values are then 0, so the head adds nothing to proj's input). What reaches the consumer from a
removed channel is then a constant (act(0), StarReLU's bias), which slimming folds into the consumer's bias; a
channel-coupled follower (GRN, squeeze-excite) must see an exact 0 there, which the discovery checks (a group
whose activation may be non-zero at 0 before such a follower is skipped). GRN divides by the mean over channels,
so slimming keeps its arithmetic with gamma and eps scaled by C / C'. A masked model and its slimmed form give
equal outputs (tests: 1e-5). A removed stage channel is exactly 0 everywhere in the masked model (its writers,
depthwise filters and BatchNorm affine are zeroed), but a LayerNorm over the channels would still count it in
its mean and variance: the masked model's LayerNorms over a pruned stage are `KeptChannelNorm`s, which take the
statistics over the kept channels only, as the slimmed model's LayerNorms do.

Importance: "magnitude" (per hidden channel, the L2 norm of the producer row times the consumer column; per head,
the norm of its q, k, v rows times that of its proj columns; per stage channel, the norm of all its writers' rows
times that of all its readers' columns) or "taylor" (|activation x gradient| at the readers' inputs, summed over a
few batches, and over a head's head_dim channels). `plan_pruning(model, ratio, scopes=...)` normalises each
group's scores by their mean and, per scope, removes the lowest `ratio` (`head_ratio` for heads, `stage_ratio` for
stage channels, both default `ratio`) of all that scope's units in the model: hidden and stage channels counted one
by one (a grouped conv's units as m channels), heads one by one. It keeps at least `min_keep` of each group (and
one head per attention), and rounds hidden and stage widths to `quantum` (to a common multiple of quantum and m
for grouped convs).

The pruned model is saved as safetensors whose metadata holds the spec (model name and constructor arguments,
classes, input channels, per hidden group its width, consumer bias and GRN eps, per attention its head count, per
stage its width and Inception part sizes); `load_pruned` rebuilds it with `create_model` and the spec (the model
is built, then shrunk to the spec's shapes) and loads the weights strictly.

The package: the groups, the surgery and the spec live below train/ and deploy/ in `convscope.models.pruning`
(rebuilding a pruned model needs them); here are scoring (scoring.py), the plan, masking and slimming (plan.py)
and writing the file (files.py); reading it is `convscope.models.source`.
"""
from ...models.pruning import (
    SCOPES,
    Group,
    HeadGroup,
    HiddenGroup,
    KeptChannelNorm,
    StageGroup,
    apply_spec_,
    check_pruning_spec,
    head_groups,
    hidden_groups,
    prunable_groups,
    pruning_spec,
    stage_groups,
)
from ...models.source import is_pruned, load_pruned
from .files import save_pruned
from .plan import PrunePlan, mask_, plan_pruning, prune, slim_
from .scoring import magnitude_scores, taylor_scores

__all__ = ["SCOPES", "Group", "HeadGroup", "HiddenGroup", "KeptChannelNorm", "PrunePlan", "StageGroup", "apply_spec_",
           "check_pruning_spec", "head_groups", "hidden_groups", "is_pruned", "load_pruned", "magnitude_scores",
           "mask_", "plan_pruning", "prunable_groups", "prune", "pruning_spec", "save_pruned", "slim_",
           "stage_groups", "taylor_scores"]
