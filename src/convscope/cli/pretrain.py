"""`convscope pretrain --method rotnet|spark|pixpro`: self-supervised pre-training (convscope.train.pretraining) on the
training engine, with the options of `convscope train` that apply to it, declared once in `cli.train`."""
from __future__ import annotations

import argparse
from collections.abc import Callable

from ..train.config import PRETRAIN_TASKS, TrainConfig
from . import options, values
from .config_file import apply_config
from .train import TRAIN_GROUPS, config_from_args, file_only_arguments

#: The `convscope train` options `convscope pretrain` takes (the others are classification's or a dense task's).
SHARED = frozenset({
    "--config", "--model", "--data", "--out", "--resume", "--seed", "--log",
    "--epochs", "--batch-size", "--lr", "--min-lr", "--warmup-epochs", "--weight-decay", "--clip-grad",
    "--accum-steps", "--ema-decay", "--label-smoothing",
    "--model-kwargs", "--drop-path", "--input-size", "--in-chans",
    "--data-limit", "--eval-limit", "--val-fraction", "--crop-pct", "--hflip", "--on-error", "--check-images",
    "--synthetic-size", "--synthetic-classes", "--synthetic-image-size",
    "--device", "--amp", "--channels-last", "--compile", "--workers", "--threads", "--eval-batch-size",
    "--eval-every", "--checkpoint-every", "--time-budget", "--keep-last", "--quiet", "--progress", "--dist-timeout",
})


def _own_options(p: argparse._ActionsContainer, d: TrainConfig) -> None:
    """The options only `convscope pretrain` has."""
    p.add_argument("--method", dest="task", choices=PRETRAIN_TASKS, default=None,
                   help="rotnet: predict which of 4 rotations each image was turned by; spark: reconstruct masked "
                        "regions (SparK); pixpro: make the features of the same pixel in two crops agree (PixPro) "
                        "(required, here or in --config as task)")
    p.add_argument("--mask-ratio", type=float, default=d.mask_ratio, help="spark: the share of the deepest feature "
                   "map's cells masked")
    p.add_argument("--ignore-labels", action="store_true", help="read the data without labels: a folder is one "
                   "set of images whatever its subfolders (a flat folder works); without it the data is opened as "
                   "convscope train opens it and the labels are unused")


def add_pretrain_arguments(p: argparse.ArgumentParser) -> None:
    """The `convscope pretrain` options: its own and the shared `convscope train` ones."""
    d = TrainConfig(model="-")
    _own_options(p.add_argument_group("pre-training"), d)
    for title, add in TRAIN_GROUPS:
        add(options.Only(p.add_argument_group(title), SHARED), d)


def _file_arguments(p: argparse.ArgumentParser) -> None:
    """What a --config file may set: every TrainConfig field (a pre-training run's config.yaml holds them all; the
    classification-only ones must keep their defaults), the task among the pre-training methods."""
    add_pretrain_arguments(p)
    d = TrainConfig(model="-")
    for _, add in TRAIN_GROUPS:
        add(options.Only(p, SHARED | {"--task"}, keep=False), d)
    file_only_arguments(options.Only(p, {"--mask-ratio", "--ignore-labels"}, keep=False))


def _cmd_pretrain(args: argparse.Namespace) -> int:
    from ..train import summarize, train

    args = apply_config(args, _file_arguments, required=("model",))
    if args.task not in PRETRAIN_TASKS:
        raise ValueError(f"--method is required: one of {', '.join(PRETRAIN_TASKS)} (here or in --config as task)")
    values.check_distinct({"--out": [args.out]}, {"--data": args.data})
    result = train(config_from_args(args))
    if result.rank == 0:
        print(summarize(result))
        print(f"encoder: {result.out / 'encoder.safetensors'} (convscope train --init-from it to fine-tune)")
    return 0


def add_commands(add: Callable[..., argparse.ArgumentParser]) -> None:
    """pretrain."""
    sp = add("pretrain", _cmd_pretrain, "self-supervised pre-training (RotNet, SparK or PixPro) of a zoo model's "
             "encoder; writes encoder.safetensors for convscope train --init-from")
    add_pretrain_arguments(sp)
