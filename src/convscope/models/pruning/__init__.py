"""What a pruned model is, below train/ and deploy/: its prunable groups (groups.py), the surgery that removes
units (surgery.py), and its spec: written down, validated, applied to a fresh build (spec.py). The pruner itself
(scoring, planning, masking, files) is `convscope.deploy.prune`."""
from .groups import (
    SCOPES,
    Group,
    HeadGroup,
    HiddenGroup,
    StageGroup,
    head_groups,
    hidden_groups,
    prunable_groups,
    stage_groups,
)
from .spec import PRUNING_KEY, apply_spec_, check_pruning_spec, pruning_spec
from .surgery import KeptChannelNorm, slim_heads_, slim_hidden_, slim_stage_

__all__ = ["PRUNING_KEY", "SCOPES", "Group", "HeadGroup", "HiddenGroup", "KeptChannelNorm", "StageGroup",
           "apply_spec_", "check_pruning_spec", "head_groups", "hidden_groups", "prunable_groups", "pruning_spec",
           "slim_heads_", "slim_hidden_", "slim_stage_", "stage_groups"]
