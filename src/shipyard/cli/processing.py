"""`shipyard pack` flags that declare processing, and the plan they make (parsing only)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from shipyard.errors import UsageError

if TYPE_CHECKING:
    from shipyard.processing.build import ProcessingPlan


def add_pack_arguments(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group(
        "processing (docs/processing.md)",
        "declare text/image inputs and label outputs: the server then takes raw text or "
        "images and answers with labels, no user code at serve time",
    )
    g.add_argument(
        "--tokenizer",
        type=Path,
        metavar="PATH",
        help="tokenizer.json (or its folder): clients may send text",
    )
    g.add_argument(
        "--max-length",
        type=int,
        metavar="N",
        help="tokens per text (default: the tokenizer folder's setting)",
    )
    g.add_argument(
        "--no-truncation",
        action="store_true",
        help="refuse (400) texts over --max-length instead of cutting them",
    )
    g.add_argument(
        "--pooling",
        choices=["mean", "cls"],
        help="append sentence pooling to the graph (output sentence_embedding)",
    )
    g.add_argument(
        "--normalize", action="store_true", help="append L2 normalisation of the embedding"
    )
    g.add_argument(
        "--token-output", metavar="NAME", help="the graph output pooling reads (default: the first)"
    )
    g.add_argument(
        "--image",
        metavar="SPEC",
        help='clients may send encoded images: "size=224x224,mode=RGB,scale=1/255,'
        'mean=0.485/0.456/0.406,std=0.229/0.224/0.225,layout=NCHW"',
    )
    g.add_argument(
        "--labels",
        metavar="A,B,…|@FILE|metadata",
        help="class names of the scores output: answers carry a `label` output",
    )
    g.add_argument(
        "--top-k", type=int, default=1, metavar="K", help="also answer top_labels/top_scores [N, K]"
    )
    g.add_argument("--scores-output", metavar="NAME",
                   help="the output --labels names (default: the [N, classes] float output)")  # fmt: skip


def plan_from_args(args: argparse.Namespace) -> ProcessingPlan | None:
    """The plan the flags ask for, or None when none was given."""
    from shipyard.processing.build import (
        ProcessingPlan,
        combine,
        image_plan,
        parse_labels,
        text_plan,
    )

    text = image = labels = None
    if args.tokenizer is not None:
        text = text_plan(
            args.tokenizer,
            max_length=args.max_length,
            truncation=not args.no_truncation,
            pooling=args.pooling,
            normalize=args.normalize,
            token_output=args.token_output,
        )
    elif args.pooling or args.normalize or args.max_length or args.no_truncation:
        raise UsageError("--pooling/--normalize/--max-length/--no-truncation need --tokenizer")
    if args.image is not None:
        image = image_plan(args.image)
    if args.labels is not None:
        labels = ProcessingPlan(
            labels=parse_labels(args.labels), top_k=args.top_k, scores_output=args.scores_output
        )
    elif args.top_k != 1 or args.scores_output:
        raise UsageError("--top-k/--scores-output need --labels")
    return combine(text, image, labels)
