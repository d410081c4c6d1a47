"""`convscope train`, `eval` and `predict`: the training engine (convscope.train) from the command line."""
from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from dataclasses import fields

from ..train.config import TrainConfig
from . import options, values


def _run_options(g: argparse._ArgumentGroup, d: TrainConfig) -> None:
    """The run options of `convscope train`."""
    g.add_argument("--model", required=True, help="registered model name (convscope list)")
    g.add_argument("--data", default=d.data, help="fashion-mnist, synthetic, or an image-folder directory "
                   "(root/<class>/*.jpg, or root/train and root/val)")
    g.add_argument("--out", type=values.output_dir, default=d.out,
                   help="run directory (checkpoints, metrics.jsonl, curves.png)")
    g.add_argument("--resume", action="store_true", help="continue the run in --out from its latest checkpoint")
    g.add_argument("--seed", type=int, default=d.seed)


def _optimisation_options(g: argparse._ArgumentGroup, d: TrainConfig) -> None:
    """The optimisation options of `convscope train`."""
    g.add_argument("--epochs", type=int, default=d.epochs)
    g.add_argument("--batch-size", type=int, default=None, help="per process and micro-step (default: 128, or 64 "
                   "for fewer than 20,000 training images)")
    g.add_argument("--lr", type=float, default=None, help="peak learning rate (AdamW; default: 1e-3 x batch "
                   "size / 128, x4 below 20,000 training images)")
    g.add_argument("--min-lr", type=float, default=d.min_lr, help="cosine schedule floor")
    g.add_argument("--warmup-epochs", type=float, default=None, help="default: 1, or 0.5 for small data sets")
    g.add_argument("--weight-decay", type=float, default=d.weight_decay, help="not applied to 1-D parameters "
                   "(norms, biases, layer scales)")
    g.add_argument("--clip-grad", type=float, default=None, help="max gradient norm")
    g.add_argument("--accum-steps", type=int, default=d.accum_steps, help="gradient accumulation micro-steps")
    g.add_argument("--ema-decay", type=float, default=d.ema_decay, help="EMA of weights (0: off)")
    g.add_argument("--label-smoothing", type=float, default=d.label_smoothing)
    g.add_argument("--layer-decay", type=float, default=None, help="layer-wise lr decay in (0, 1]: layer i of n "
                   "(the model's group_matcher) trains at lr x decay^(n - 1 - i); e.g. 0.8 for fine-tuning")
    g.add_argument("--head-lr-scale", type=float, default=d.head_lr_scale, help="lr multiplier of the classifier "
                   "head (e.g. 10 with --pretrained)")


def _model_options(g: argparse._ArgumentGroup, d: TrainConfig) -> None:
    """The model options of `convscope train`."""
    g.add_argument("--model-kwargs", type=values.json_object, default={}, help='JSON constructor overrides, e.g. '
                   '\'{"depths": [1, 1, 1, 1]}\'')
    g.add_argument("--drop-path", type=float, default=None, help="stochastic depth (default: the ModelCard's)")
    g.add_argument("--drop-rate", type=float, default=None, help="head dropout")
    g.add_argument("--msd-samples", type=int, default=d.msd_samples, help="multi-sample dropout head: samples "
                   "(0: off)")
    g.add_argument("--msd-drop", type=float, default=d.msd_drop)
    g.add_argument("--input-size", type=int, default=None, help="model input side (default: the data's size, "
                   "raised to the model's minimum and, for an image folder, to twice its last stage's stride; at "
                   "most the model card's)")
    g.add_argument("--in-chans", type=int, default=None, help="1 (grayscale) or 3; default: the data's")
    g.add_argument("--init-from", default=None, metavar="WEIGHTS.safetensors",
                   help="start from these weights instead of a random init: a pruned model written by "
                        "convscope.deploy.prune.save_pruned (the model takes its pruned widths: fine-tuning after "
                        "pruning) or a weights file written by convscope train for the same model and classes")
    g.add_argument("--pretrained", default=None, metavar="NAME[.TAG]|hf-hub:ORG/REPO|URL|FILE",
                   help="fine-tune released weights (convscope weights list): the classifier is re-initialised for "
                        "the data's classes and the input convolution adapted to its channels")


def _data_options(g: argparse._ArgumentGroup, d: TrainConfig) -> None:
    """The data and augmentation options of `convscope train`."""
    g.add_argument("--data-limit", type=int, default=None, help="use only the first N training images")
    g.add_argument("--eval-limit", type=int, default=None, help="evaluate on only the first N images")
    g.add_argument("--val-fraction", type=float, default=d.val_fraction, help="held out of a single image folder")
    g.add_argument("--crop-pct", type=float, default=None)
    g.add_argument("--scale", type=values.numbers(2), default=None, help="random resized crop area range, e.g. 0.08,1 "
                   "(default: data-aware; 1,1 = whole images for images of 64 pixels or less)")
    g.add_argument("--ratio", type=values.numbers(2), default=None, help="random resized crop aspect range (default: "
                   "1,1 with whole images, else 0.75,1.333)")
    g.add_argument("--hflip", type=float, default=d.hflip)
    g.add_argument("--randaug-ops", type=int, default=d.randaug_ops, help="RandAugment-lite ops per image (0: off)")
    g.add_argument("--randaug-magnitude", type=float, default=d.randaug_magnitude)
    g.add_argument("--mixup", type=float, default=d.mixup, help="Mixup alpha (0: off)")
    g.add_argument("--cutmix", type=float, default=d.cutmix, help="CutMix alpha (0: off)")
    g.add_argument("--mix-prob", type=float, default=d.mix_prob)
    g.add_argument("--mix-switch-prob", type=float, default=d.mix_switch_prob)
    g.add_argument("--on-error", choices=("skip", "raise"), default=d.on_error, help="unreadable images")
    g.add_argument("--check-images", choices=("none", "header", "decode"), default=d.check_images)
    g.add_argument("--synthetic-size", type=int, default=d.synthetic_size)
    g.add_argument("--synthetic-classes", type=int, default=d.synthetic_classes)
    g.add_argument("--synthetic-image-size", type=int, default=d.synthetic_image_size)


def _execution_options(g: argparse._ArgumentGroup, d: TrainConfig) -> None:
    """The execution options of `convscope train`."""
    g.add_argument("--device", default=d.device, choices=("auto", "cpu", "cuda"))
    g.add_argument("--amp", choices=("fp32", "bf16"), default=d.amp, help="autocast dtype")
    g.add_argument("--channels-last", action="store_true")
    g.add_argument("--compile", action="store_true", help="torch.compile the model")
    g.add_argument("--workers", type=int, default=d.workers, help="data loader worker processes")
    options.add_threads(g, help="torch intra-op threads")
    g.add_argument("--eval-batch-size", type=int, default=None)
    g.add_argument("--eval-every", type=int, default=d.eval_every, help="evaluate every N epochs (and at the end)")
    g.add_argument("--checkpoint-every", type=int, default=d.checkpoint_every,
                   help="also checkpoint every N optimizer steps (0: only at epoch ends)")
    g.add_argument("--time-budget", type=values.duration, default=None, metavar="DURATION",
                   help="finish the whole run within this time (e.g. 9m, 540s, 1h): the epochs (at most --epochs) "
                        "are fitted to the speed measured in the first steps")
    g.add_argument("--keep-last", type=int, default=d.keep_last, help="checkpoints to keep")
    g.add_argument("--quiet", action="store_true", help="print only the final summary")
    g.add_argument("--progress", choices=("auto", "bar", "plain", "none"), default=d.progress,
                   help="auto: progress bars on a terminal, one line per epoch otherwise")
    g.add_argument("--dist-timeout", type=float, default=d.dist_timeout, help="seconds a collective may wait")


TRAIN_GROUPS = (("run", _run_options), ("optimisation", _optimisation_options), ("model", _model_options),
                ("data and augmentation", _data_options), ("execution", _execution_options))


def add_train_arguments(p: argparse.ArgumentParser) -> None:
    """The `convscope train` options; every one maps to the TrainConfig field of the same name."""
    d = TrainConfig(model="-")
    for title, add in TRAIN_GROUPS:
        add(p.add_argument_group(title), d)


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """The TrainConfig of parsed `convscope train` arguments."""
    names = {f.name for f in fields(TrainConfig)}
    kwargs = {k: v for k, v in vars(args).items() if k in names}
    kwargs["out"] = str(args.out)
    return TrainConfig(**kwargs)


def _cmd_train(args: argparse.Namespace) -> int:
    from ..train import summarize, train

    values.check_distinct({"--out": [args.out]}, {"--data": args.data, "--init-from": args.init_from,
                                                  "--pretrained": args.pretrained})
    result = train(config_from_args(args))
    if result.rank == 0:
        print(summarize(result))
    return 0


def _cmd_eval(args: argparse.Namespace) -> int:
    from ..train import evaluate_checkpoint, evaluate_foreign
    from ..train.summary import dumps_confusion

    if args.model is None:
        if args.model_kwargs:
            raise ValueError("--model-kwargs goes with --model (a checkpoint from elsewhere)")
        r = evaluate_checkpoint(args.checkpoint, args.data, args.split, args.batch_size, args.limit, args.device,
                                args.workers)
    else:
        r = evaluate_foreign(args.model, args.checkpoint, args.data, args.split, args.batch_size, args.limit,
                             args.device, args.workers, args.model_kwargs)
    if r["skipped"]:
        print(f"convscope: warning: {len(r['skipped'])} of {r['images']} images could not be read and are not "
              f"counted: " + "; ".join(r["skipped"][:5]) + (" ..." if len(r["skipped"]) > 5 else ""),
              file=sys.stderr)
    if args.json:
        print(json.dumps(r))
        return 0
    keys = f" ({r['keys']} keys)" if "keys" in r else ""
    print(f"{r['model']}{keys} on {args.data} ({args.split}, {r['n']} images): top-1 {r['top1']:.2f}%  "
          f"top-5 {r['top5']:.2f}%  loss {r['loss']:.4f}")
    print("confusion matrix (rows: true class, columns: predicted):")
    print(dumps_confusion(r["confusion"], r["class_names"]))
    return 0


def _cmd_predict(args: argparse.Namespace) -> int:
    from ..train import predict_images

    results = predict_images(args.checkpoint, args.images, args.topk, args.device)
    if args.json:
        print(json.dumps(results, indent=1))
        return 0
    for r in results:
        print(f"{r['image']}: " + ", ".join(f"{t['label']} ({t['prob']:.3f})" for t in r["top"]))
    return 0


def add_commands(add: Callable[..., argparse.ArgumentParser]) -> None:
    """train, eval, predict."""
    sp = add("train", _cmd_train, "train a model (single process, or DDP under torchrun)")
    add_train_arguments(sp)

    sp = add("eval", _cmd_eval, "evaluate a trained model: top-1, top-5, loss, confusion matrix")
    options.add_checkpoint_device_json(sp)
    sp.add_argument("--model", default=None, metavar="NAME", help="evaluate a checkpoint from elsewhere (timm, the "
                    "official repository, transformers) as this variant, preprocessed as its card says; the data's "
                    "classes, sorted, are the checkpoint's outputs")
    sp.add_argument("--model-kwargs", type=values.json_object, default={}, help="with --model: JSON constructor "
                    "options the checkpoint's code differs in, e.g. '{\"mlp_act\": \"gelu\"}' for transformers' CvT")
    sp.add_argument("--data", default="fashion-mnist", help="fashion-mnist, an idx directory or an image folder")
    sp.add_argument("--split", default="test", help="train/test for Fashion-MNIST; a subdirectory of a folder")
    sp.add_argument("--batch-size", type=values.positive_int, default=256)
    sp.add_argument("--limit", type=values.positive_int, default=None, help="only the first N images")
    sp.add_argument("--workers", type=values.non_negative_int, default=0)

    sp = add("predict", _cmd_predict, "classify image files with a trained model")
    options.add_checkpoint_device_json(sp)
    sp.add_argument("images", nargs="+", metavar="IMAGE")
    sp.add_argument("--topk", type=values.positive_int, default=3)
