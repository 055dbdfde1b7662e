"""`meter evaluate TASK ...`: score a predictions file like the official tool, or predict with a checkpoint.

meter evaluate vqa --questions Q --annotations A --predictions P      the official VQAv2 accuracy
meter evaluate nlvr2 --labels dev.json --predictions P.csv            the official NLVR2 accuracy, consistency
meter evaluate TASK --checkpoint C [--config X] [--out DIR] [key=value ...]
    C: a model folder, or a run folder (the weights its evaluation scored once it finished, else its newest step);
    predicts the config's evaluation split of TASK (vqa, nlvr2, snli_ve, retrieval, captioning; without --config
    the task's settings, and its data where that folder is here, are those the model was fine-tuned with, if it
    was on TASK), prints the metrics and
    writes the leaderboard files to --out (default RUN/eval/step_N for a run's checkpoint, else C/eval): VQA
    test-dev JSON, NLVR2 identifier,prediction CSV, SNLI-VE predictions, retrieval rankings; a VQA split without
    annotations (vqa.eval_split=test-dev2015) gets its submission file and no score
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from meter.cli.common import check_output_folder, override_keys, warn_unread_overrides
from meter.metrics.vqa import DEFAULT_VQA_METRIC, VQA_METRICS

if TYPE_CHECKING:
    from meter.config import Config

log = logging.getLogger(__name__)

CHECKPOINT_TASKS = {
    "vqa": "VQAv2 accuracy (official algorithm)",
    "nlvr2": "NLVR2 accuracy and consistency (official script)",
    "snli_ve": "SNLI-VE accuracy",
    "retrieval": "image-text retrieval R@1/5/10",
    "captioning": "captioning BLEU-1..4 and CIDEr (pycocoevalcap's scorers)",
}


def add_command(subparsers: argparse._SubParsersAction) -> Callable[[argparse.Namespace], int]:
    parser = subparsers.add_parser("evaluate", help="evaluate predictions or a checkpoint")
    tasks = parser.add_subparsers(dest="task", required=True, metavar="TASK")
    for name, help_text in CHECKPOINT_TASKS.items():
        sub = tasks.add_parser(name, help=help_text)
        sub.add_argument("--checkpoint", help="a model folder, or a run folder (its best/ or model/ once finished, "
                         "else its newest checkpoint): predict the config's evaluation split with it")  # fmt: skip
        sub.add_argument("--config", help="YAML recipe for data paths and evaluation settings (with --checkpoint; "
                         "default: the settings the model was fine-tuned with)")  # fmt: skip
        sub.add_argument(
            "--out", help="where to write predictions (with --checkpoint; default RUN/eval/step_N for a run's "
            "checkpoint, outside the checkpoint that keep_last may delete; else CHECKPOINT/eval)",
        )  # fmt: skip
        sub.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                         help="with --checkpoint: settings over the config's (data.root=..., the task's)")  # fmt: skip
        if name == "vqa":
            sub.add_argument("--annotations", help="VQAv2 annotation JSON (scores --predictions against it)")
            sub.add_argument("--questions", help="VQAv2 question JSON (checked against the predictions)")
            sub.add_argument("--predictions", help='[{"question_id": .., "answer": ..}] as the leaderboard takes')
            sub.add_argument("--metric", choices=VQA_METRICS.names(),
                             help=f"the official code's version (sets vqa.metric; default {DEFAULT_VQA_METRIC}: "
                                  "today's leaderboard; official-2017: papers before 2021)")  # fmt: skip
        if name == "nlvr2":
            sub.add_argument("--labels", help="an NLVR2 JSON-lines file with labels (scores --predictions)")
            sub.add_argument("--predictions", help="identifier,prediction lines as the leaderboard takes")
    return run


FILE_OPTIONS = ("annotations", "questions", "predictions", "labels")  # scoring a predictions file
CHECKPOINT_OPTIONS = ("config", "out", "overrides")  # predicting with a checkpoint


def check_options(args: argparse.Namespace) -> None:
    """The options of the other way of evaluating were accepted and ignored (a mistyped --checkpoint run scored
    nothing the user named; a --config next to --predictions read no file)."""
    from meter.errors import ConfigError

    given = [name for name in FILE_OPTIONS if getattr(args, name, None)]
    if args.checkpoint and given:
        raise ConfigError(f"--{given[0]} scores a predictions file; with --checkpoint the config's own files are "
                          "predicted and scored: give one or the other")  # fmt: skip
    if not args.checkpoint:
        extra = [name for name in CHECKPOINT_OPTIONS if getattr(args, name, None)]
        if extra:
            option = "settings (KEY=VALUE)" if extra[0] == "overrides" else f"--{extra[0]}"
            raise ConfigError(f"{option} go{'' if extra[0] == 'overrides' else 'es'} with --checkpoint (predicting "
                              "with a model); scoring a predictions file reads only its own options")  # fmt: skip


def run(args: argparse.Namespace) -> int:
    from meter.errors import ConfigError, MeterError

    check_options(args)
    if args.checkpoint:
        from meter.config import load_config
        from meter.models.folder import EXPORT
        from meter.output_folder import check_own_folder
        from meter.predictor import resolve_checkpoint
        from meter.runs import evaluate_run
        from meter.tasks.downstream import EVALUATION_MARKER, warn_other_evaluation
        from meter.train.run_folder import CHECKPOINTS, PLANNED_BY_OTHERS
        from meter.train.run_folder import RECORD as RUN_RECORD
        from meter.validate import validate_evaluation

        # a run folder: the weights its own evaluation scored (best/ or model/), or while it trains its newest step
        args.checkpoint = str(resolve_checkpoint(args.checkpoint))
        cfg = load_config(args.config, args.overrides, base=None if args.config else recorded_settings(args))
        cfg.task = args.task
        keep_blind(cfg, args)
        if getattr(args, "metric", None):
            if any(override.startswith("vqa.metric=") for override in args.overrides):
                raise MeterError("--metric and vqa.metric= both given; give one")
            cfg.vqa.metric = args.metric
        validate_evaluation(cfg)  # the model is the checkpoint's: of the config, its data and evaluation settings count
        warn_model_overrides(cfg, args.overrides, args.checkpoint)
        warn_unread_overrides(cfg, args.overrides)
        out = Path(args.out) if args.out else default_eval_folder(Path(args.checkpoint))
        option = "--out" if args.out else f"--out (default {out})"
        check_output_folder(out, option)
        if (out / CHECKPOINTS).is_dir() or (out / EXPORT).is_dir():  # its own final scores would be written over
            raise ConfigError(f"--out = {out} is a training run's folder: its own evaluation files would be written "
                              f"over; leave --out out (the default is {default_eval_folder(Path(args.checkpoint))}) "
                              "or give another folder")  # fmt: skip
        if out.absolute() != default_eval_folder(Path(args.checkpoint)).absolute():  # RUN/eval/step_N is meter's
            # a study's zero-shot run evaluates into the folder the study planned it in (its record there)
            check_own_folder(out, (EVALUATION_MARKER, RUN_RECORD, *PLANNED_BY_OTHERS), "meter evaluate", option)
        warn_other_evaluation(out, args.checkpoint, cfg.task)
        created = not out.exists()
        try:
            result = evaluate_run(cfg, args.checkpoint, out)
            if result:  # under a launcher the other processes get {}: the one JSON on stdout is the first's
                print(json.dumps(result, indent=1))
        except BaseException:  # refused (a model without the task's head) or stopped: no empty folder left behind
            if created and out.is_dir() and not any(out.iterdir()):
                out.rmdir()
            raise
    elif args.task == "vqa":
        if not (args.annotations and args.predictions):
            raise MeterError("evaluate vqa needs --annotations and --predictions, or --checkpoint")
        from meter.metrics.vqa_files import score_files

        accuracy = score_files(args.questions, args.annotations, args.predictions, args.metric or DEFAULT_VQA_METRIC)
        print(json.dumps(accuracy.to_dict(), indent=1))
    elif args.task == "nlvr2":
        if not (args.labels and args.predictions):
            raise MeterError("evaluate nlvr2 needs --labels and --predictions, or --checkpoint")
        from meter.metrics.nlvr2 import score_nlvr2_files

        print(json.dumps(score_nlvr2_files(args.labels, args.predictions).to_dict(), indent=1))
    else:
        raise MeterError(f"evaluate {args.task} needs --checkpoint")
    return 0


def warn_model_overrides(cfg: Config, overrides: list[str], checkpoint: str) -> None:
    """model.* settings given on the command line that differ from the checkpoint's are not applied (the model is the
    checkpoint's as it was trained): said, not dropped without a word (model.vision.image_size=576 on a 288 px model
    was evaluated at 288)."""
    from meter.config import to_dict
    from meter.models.folder import read_model_folder
    from meter.train.run_folder import flat_settings

    given = override_keys(overrides)
    asked = flat_settings({"model": to_dict(cfg.model)})
    kept = flat_settings({"model": to_dict(read_model_folder(checkpoint).config.model)})
    for key in sorted(k for k in asked if any(k == g or k.startswith(g + ".") for g in given)):
        if key in kept and asked[key] != kept[key]:
            log.warning("%s = %r is not applied: the model evaluated is the checkpoint's as it was trained (%r); "
                        "fine-tune it (train.init_from) to change it", key, asked[key], kept[key])  # fmt: skip


def keep_blind(cfg: Config, args: argparse.Namespace) -> None:
    """A blind baseline evaluated with a recipe (--config) was scored with the images it never saw in training: it
    stays blind unless data.blind is given on the command line."""
    from meter.models.folder import read_model_folder

    given = "data.blind" in override_keys(args.overrides)
    if not given and not cfg.data.blind and read_model_folder(args.checkpoint).config.data.blind:
        cfg.data.blind = True
        log.warning("evaluate: %s is a blind baseline (trained with data.blind=true): evaluated blind (give "
                    "data.blind=false to score it with the images)", args.checkpoint)  # fmt: skip


def recorded_settings(args: argparse.Namespace) -> Config | None:
    """Without --config: the defaults with the task's own section as the model folder recorded it, when it was
    fine-tuned on that task (its beam size, VQA metric, retrieval shortlist, ...): evaluated again, it gives the
    numbers its run reported (the defaults' beam of 1 gave another CIDEr)."""
    from meter.config import Config
    from meter.models.folder import read_model_folder

    recorded = read_model_folder(args.checkpoint).config
    if recorded.task != args.task:
        return None
    base = Config()
    setattr(base, args.task, copy.deepcopy(getattr(recorded, args.task)))
    # the precision and batch its run scored in (auto is bf16 on a GPU: an fp32 run's numbers; a batch that fit)
    base.train.precision, base.train.eval_batch_size = recorded.train.precision, recorded.train.eval_batch_size
    taken = f"the {args.task} settings, train.precision, train.eval_batch_size"
    if Path(recorded.data.root).is_dir():  # its data too, where it is there to be read
        base.data = copy.deepcopy(recorded.data)
        taken += f" and the data ({recorded.data.root})"
    else:  # what changes the numbers wherever the data is: a blind baseline stays blind
        base.data.blind, base.data.max_image_pixels = recorded.data.blind, recorded.data.max_image_pixels
        if "data.root" not in override_keys(args.overrides):
            log.warning("evaluate: the data %s was fine-tuned on (%s) is not here; reading data.root = %s (give "
                        "data.root=... for its data)", args.checkpoint, recorded.data.root, base.data.root)  # fmt: skip
    log.info("evaluate: %s %s was fine-tuned with (--config or KEY=VALUE change them)", taken, args.checkpoint)
    return base


def default_eval_folder(checkpoint: Path) -> Path:
    """Beside a run's checkpoints, not in one (`train.keep_last` deletes a checkpoint's whole folder): RUN/eval/step_N,
    RUN/eval/best for its train.best_on choice; a model folder's or a run folder's own eval/ otherwise."""
    if checkpoint.parent.name == "checkpoints" and checkpoint.name.startswith("step_"):
        return checkpoint.parent.parent / "eval" / checkpoint.name
    if checkpoint.name == "best" and (checkpoint.parent / "best.json").is_file():  # replaced while its run trains
        return checkpoint.parent / "eval" / "best"
    return checkpoint / "eval"
