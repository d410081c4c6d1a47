"""`convscope train`, `eval` and `predict`: the training engine (convscope.train) from the command line."""
from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from dataclasses import fields

from ..data.datasets import AUTO_CHECK_LIMIT, CHECKS
from ..heads import HEADS
from ..heads.sr import SR_MODELS, SR_SCALES
from ..train.config import TASKS, TRACKERS, TrainConfig
from . import options, values
from .config_file import apply_config


def _run_options(g: argparse._ArgumentGroup, d: TrainConfig) -> None:
    """The run options of `convscope train`."""
    g.add_argument("--task", choices=TASKS, default=d.task, help="classification; segmentation (--model is the "
                   "backbone, --head the decode head); sr (super-resolution of Fashion-MNIST, --scale the factor)")
    g.add_argument("--config", type=values.input_file, default=None, metavar="FILE.yaml|FILE.json",
                   help="options from a file (keys: the options' names, e.g. batch_size; a run's config.yaml "
                        "repeats it); flags given here override it")
    g.add_argument("--model", default=None, help="registered model name (convscope list); with --task sr: "
                   + ", ".join(SR_MODELS) + " (required, here or in --config)")
    g.add_argument("--head", choices=tuple(HEADS), default=d.head, help="segmentation decode head")
    g.add_argument("--data", default=d.data, help="fashion-mnist, synthetic, an image-folder directory "
                   "(root/<class>/*.jpg, or root/train and root/val) or a shard directory (convscope data pack); "
                   "segmentation: mosaics or a folder of "
                   "images/ + masks/ (or train/ and val/ that hold them)")
    g.add_argument("--out", type=values.output_dir, default=d.out,
                   help="run directory (checkpoints, metrics.jsonl, curves.png)")
    g.add_argument("--resume", nargs="?", const=True, default=False, choices=["auto"],
                   help="continue the run in --out from its latest checkpoint; --resume auto: when there is one "
                        "(start afresh otherwise), for torchrun --max-restarts")
    g.add_argument("--seed", type=int, default=d.seed)
    g.add_argument("--log", type=values.comma_list(TRACKERS), default=d.log, metavar="TRACKER[,...]",
                   help=f"experiment trackers fed from metrics.jsonl's records, among {', '.join(TRACKERS)} (csv: "
                        "summary.csv; tensorboard: pip install 'convscope[track]')")


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
    g.add_argument("--scale", type=_scale, default=None, help="random resized crop area range, e.g. 0.08,1 "
                   "(default: data-aware; 1,1 = whole images for images of 64 pixels or less); with --task sr: the "
                   f"upscaling factor, one of {', '.join(map(str, SR_SCALES))} (default 2)")
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
    g.add_argument("--check-images", choices=CHECKS, default=d.check_images, help="open every image file up "
                   "front (header: verify, decode: decode whole; a pool of threads), reporting unreadable ones; "
                   f"auto: header for up to {AUTO_CHECK_LIMIT:,} files, none above")
    g.add_argument("--synthetic-size", type=int, default=d.synthetic_size)
    g.add_argument("--synthetic-classes", type=int, default=d.synthetic_classes)
    g.add_argument("--synthetic-image-size", type=int, default=d.synthetic_image_size)


def _execution_options(g: argparse._ArgumentGroup, d: TrainConfig) -> None:
    """The execution options of `convscope train`."""
    g.add_argument("--device", default=d.device, choices=("auto", "cpu", "cuda"))
    g.add_argument("--amp", choices=("fp32", "bf16"), default=d.amp, help="autocast dtype")
    g.add_argument("--channels-last", action="store_true")
    g.add_argument("--compile", action="store_true", help="torch.compile the model")
    g.add_argument("--sync-bn", action="store_true", help="under torchrun: BatchNorm statistics over the whole "
                   "global batch (every rank's), on CPU (gloo) too; SparK's official recipe does this")
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
    """The `convscope train` options; every one but --config maps to the TrainConfig field of the same name."""
    d = TrainConfig(model="-")
    for title, add in TRAIN_GROUPS:
        add(p.add_argument_group(title), d)


def _train_file_arguments(p: argparse.ArgumentParser) -> None:
    """The `convscope train` options plus the TrainConfig fields without a flag, which a --config file may set
    (a run's config.yaml holds them)."""
    add_train_arguments(p)
    file_only_arguments(p)


def file_only_arguments(p: argparse._ActionsContainer) -> None:
    """The TrainConfig fields `convscope train` has no flag for (some are `convscope pretrain`'s flags)."""
    d = TrainConfig(model="-")
    p.add_argument("--betas", type=values.numbers(2), default=d.betas)
    p.add_argument("--ema-warmup", type=_boolean, default=d.ema_warmup)
    p.add_argument("--prefetch", type=values.positive_int, default=d.prefetch)
    p.add_argument("--sr-scale", type=int, choices=SR_SCALES, default=d.sr_scale)
    p.add_argument("--mask-ratio", type=float, default=d.mask_ratio)
    p.add_argument("--ignore-labels", type=_boolean, default=d.ignore_labels)


def _boolean(s: str) -> bool:
    """true or false."""
    if s not in ("true", "false"):
        raise argparse.ArgumentTypeError(f"expected true or false; got {s!r}")
    return s == "true"


def _scale(s: str) -> tuple[float, ...]:
    """--scale: one number (--task sr's factor) or two (the crop area range); which one the task says."""
    try:
        vals = tuple(float(v) for v in s.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected MIN,MAX or (with --task sr) a factor; got {s!r}") from None
    if len(vals) not in (1, 2):
        raise argparse.ArgumentTypeError(f"expected MIN,MAX or (with --task sr) a factor; got {s!r}")
    return vals


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """The TrainConfig of parsed `convscope train` arguments (--scale is the SR factor with --task sr)."""
    names = {f.name for f in fields(TrainConfig)}
    kwargs = {k: v for k, v in vars(args).items() if k in names}
    kwargs["out"] = str(args.out)
    scale = kwargs.get("scale")
    if args.task == "sr":
        kwargs["scale"] = None
        if scale is not None:
            if len(scale) != 1 or scale[0] not in SR_SCALES:
                raise ValueError(f"--scale with --task sr is the upscaling factor, one of "
                                 f"{', '.join(map(str, SR_SCALES))}; got {','.join(f'{v:g}' for v in scale)}")
            kwargs["sr_scale"] = int(scale[0])
    elif scale is not None and len(scale) != 2:
        raise ValueError(f"--scale is the crop area range MIN,MAX (a single factor only with --task sr); got "
                         f"{scale[0]:g}")
    return TrainConfig(**kwargs)


def _cmd_train(args: argparse.Namespace) -> int:
    from ..train import summarize, train

    args = apply_config(args, _train_file_arguments, required=("model",))
    values.check_distinct({"--out": [args.out]}, {"--data": args.data, "--init-from": args.init_from,
                                                  "--pretrained": args.pretrained})
    result = train(config_from_args(args))
    if result.rank == 0:
        print(summarize(result))
    return 0


def _eval_segmentation(args: argparse.Namespace) -> int:
    from ..train.segmentation import evaluate_segmentation

    r = evaluate_segmentation(args.checkpoint, args.data, args.split, args.batch_size, args.limit, args.device,
                              args.window, args.stride)
    if args.json:
        print(json.dumps(r))
        return 0
    how = "whole images" if r["window"] is None else f"windows {r['window']} every {r['stride']}"
    print(f"{r['model']} on {r['data']} ({r['n']} images, {how}): mIoU {r['miou']:.4f}  pixel acc "
          f"{r['pixel_acc']:.4f}  loss {r['loss']:.4f}")
    print("IoU per class: " + ", ".join(f"{c} {'-' if v is None else format(v, '.4f')}"
                                        for c, v in zip(r["class_names"], r["iou_per_class"], strict=True)))
    return 0


def _eval_sr(args: argparse.Namespace) -> int:
    from ..train.superres import evaluate_sr

    r = evaluate_sr(args.checkpoint, args.data, args.split, args.batch_size, args.limit, args.device)
    if args.json:
        print(json.dumps(r))
        return 0
    print(f"{r['model']} x{r['scale']} on {r['data']} ({r['n']} images): PSNR {r['psnr']:.2f} dB  SSIM "
          f"{r['ssim']:.4f}  (bicubic: {r['bicubic_psnr']:.2f} dB, {r['bicubic_ssim']:.4f})")
    return 0


def _cmd_eval(args: argparse.Namespace) -> int:
    from ..train import evaluate_checkpoint, evaluate_foreign
    from ..train.parts import checkpoint_task
    from ..train.summary import dumps_confusion

    args = apply_config(args, add_eval_arguments, required=("checkpoint",))
    if args.model is not None:   # a classifier's checkpoint from elsewhere, read as this variant
        if args.window or args.stride:
            raise ValueError("--window and --stride apply to segmentation models, not to --model checkpoints")
        r = evaluate_foreign(args.model, args.checkpoint, args.data, args.split, args.batch_size, args.limit,
                             args.device, args.workers, args.model_kwargs)
    else:
        if args.model_kwargs:
            raise ValueError("--model-kwargs goes with --model (a checkpoint from elsewhere)")
        task = checkpoint_task(args.checkpoint)
        if task != "segmentation" and (args.window or args.stride):
            raise ValueError(f"--window and --stride apply to segmentation models; {args.checkpoint} is {task}")
        if task == "segmentation":
            return _eval_segmentation(args)
        if task == "sr":
            return _eval_sr(args)
        r = evaluate_checkpoint(args.checkpoint, args.data, args.split, args.batch_size, args.limit, args.device,
                                args.workers)
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
    from ..train.parts import checkpoint_task

    task = checkpoint_task(args.checkpoint)
    if task == "segmentation":
        if args.out is None:
            raise ValueError("predict with a segmentation model needs --out DIR for the overlay and mask PNGs")
        from ..train.segmentation import predict_overlays

        results = predict_overlays(args.checkpoint, args.images, args.out, args.device)
        print(json.dumps(results, indent=1) if args.json else "\n".join(
            f"{r['image']}: {r['overlay']} (" + ", ".join(f"{c} {v:.1%}" for c, v in r["classes"].items()) + ")"
            for r in results))
        return 0
    if task != "classification" or args.out is not None:
        raise ValueError(f"predict takes classification models (and segmentation ones with --out); "
                         f"{args.checkpoint} is {task}" + (" and --out is for segmentation" if task ==
                                                          "classification" else ""))
    results = predict_images(args.checkpoint, args.images, args.topk, args.device)
    if args.json:
        print(json.dumps(results, indent=1))
        return 0
    for r in results:
        print(f"{r['image']}: " + ", ".join(f"{t['label']} ({t['prob']:.3f})" for t in r["top"]))
    return 0


def add_eval_arguments(sp: argparse.ArgumentParser) -> None:
    """The `convscope eval` options (--checkpoint is required, here or in --config)."""
    options.add_checkpoint_device_json(sp, required=False)
    sp.add_argument("--config", type=values.input_file, default=None, metavar="FILE.yaml|FILE.json",
                    help="options from a file (keys: the options' names, e.g. batch_size); flags given here "
                         "override it")
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
    sp.add_argument("--window", type=values.input_size, default=None, metavar="HxW",
                    help="segmentation: average the logits of sliding windows of this size (default: whole images)")
    sp.add_argument("--stride", type=values.input_size, default=None, metavar="HxW",
                    help="segmentation: the windows' step (default: the window, no overlap)")


def add_commands(add: Callable[..., argparse.ArgumentParser]) -> None:
    """train, eval, predict."""
    sp = add("train", _cmd_train, "train a model (single process, or DDP under torchrun)")
    add_train_arguments(sp)

    sp = add("eval", _cmd_eval, "evaluate a trained model: top-1, top-5, loss, confusion matrix; a segmentation "
             "model: mIoU, per-class IoU, pixel accuracy; a super-resolution model: PSNR, SSIM against bicubic")
    add_eval_arguments(sp)

    sp = add("predict", _cmd_predict, "classify image files with a trained model (segment them with a "
             "segmentation model, writing colour overlays)")
    options.add_checkpoint_device_json(sp)
    sp.add_argument("images", nargs="+", metavar="IMAGE")
    sp.add_argument("--topk", type=values.positive_int, default=3)
    sp.add_argument("--out", type=values.output_dir, default=None, metavar="DIR",
                    help="segmentation models: where to write <image>_overlay.png and <image>_mask.png")
