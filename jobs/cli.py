"""`kar`: one entry point for the weekly run, each stage, and factor discovery.

    kar run --conf conf/local.yaml [section.key=value ...]
    kar prepare|generate|encode|adapt --conf conf/local.yaml [section.key=value ...]
    kar evaluate --conf conf/local.yaml [section.key=value ...]   # quality report, no generation
    kar generate --kind users --ids-file ids.txt --since 2026-11-01   # backfill a slice
    kar factors discover --domain podcasts [--out factors-podcasts.yaml]
    kar vectors [--version N | --as-of 2026-11-15] [--entity user:196 ...]
    kar publish [--online]        # feature tables (+ Feast online store)
    kar report [--run-id ID]      # (re)build the run report; prints where it is
    kar forget --user ID | --item ID   # erase one entity from every table and the online store
    kar join --out train.parquet [--format delta] [--samples PATH] [--version N | --as-of ...]

Input errors (config, data, factor files, schemas) exit with status 2 and a
one-paragraph message naming the bad input, without a traceback.

This file is also the one entry file for launchers that take a script, with the same
arguments (stage files are libraries of the CLI, never run themselves):

    spark-submit --py-files dist/kar-job.zip jobs/cli.py run --conf conf/cluster.yaml
    ray job submit --working-dir . -- python jobs/cli.py generate --conf ... ray.address=auto
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sys
from pathlib import Path
from typing import TextIO

from factors.sets import FactorSetError
from jobs.plumbing import lock, logs
from jobs.plumbing.config import Config, load_config
from jobs.plumbing.errors import ClusterError, InputError

log = logging.getLogger("kar")

STAGES = ("prepare", "generate", "encode", "adapt")
# Commands that write to run.output_dir: one at a time per directory (jobs/plumbing/lock.py).
WRITERS = frozenset({"run", *STAGES, "evaluate", "publish", "forget", "maintain"})
# What the person running the job can fix: exit 2, the message, no traceback. Factor
# discovery (factors/, a library) raises its own. Anything else is a bug: its traceback shows.
INPUT_ERRORS = (InputError, FactorSetError)


def _add_conf_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--conf", type=Path, default=None, help="YAML config (default: built-ins)")
    p.add_argument("overrides", nargs="*", metavar="section.key=value", help="override one key")
    if p.prog.split()[-1] in WRITERS:
        p.add_argument(
            "--run-id",
            type=lock.run_id_arg,
            default=None,
            help="this run's id, shared by the stages of one run (an orchestrator passes its "
            "own; default: a new one)",
        )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kar", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    _add_conf_args(sub.add_parser("run", help="run every stage (the weekly job)"))
    for stage in STAGES:
        stage_parser = sub.add_parser(stage, help=f"run the {stage} stage alone")
        _add_conf_args(stage_parser)
        if stage == "generate":
            from jobs.generate import add_backfill_args

            add_backfill_args(stage_parser)
    _add_conf_args(
        sub.add_parser(
            "evaluate",
            help="AUC lifts: backbones x {no KAR, co-trained, frozen} x seeds (no generation)",
        )
    )
    factors = sub.add_parser("factors", help="scenario factor sets")
    fsub = factors.add_subparsers(dest="factors_command", required=True)
    disc = fsub.add_parser("discover", help="ask the configured LLM for a domain's factors")
    disc.add_argument("--domain", required=True, help='e.g. "podcasts"')
    disc.add_argument("--item-noun", default=None, help='singular item word, e.g. "podcast"')
    disc.add_argument("--out", type=Path, default=None, help="YAML to write for review")
    _add_conf_args(disc)

    from jobs import join_features
    from jobs.rules import vectors

    vec = sub.add_parser("vectors", help="show a vectors version (time travel)")
    vectors.add_selector_args(vec)
    vec.add_argument("--entity", action="append", metavar="KIND:ID", help="print this vector")
    _add_conf_args(vec)
    joiner = sub.add_parser("join", help="join a vectors version onto CTR samples (Spark)")
    vectors.add_selector_args(joiner)
    join_features.add_args(joiner)
    _add_conf_args(joiner)
    pub = sub.add_parser("publish", help="serve the live vectors version via Feast")
    pub.add_argument("--online", action="store_true", help="also materialize into the online store")
    _add_conf_args(pub)
    rep = sub.add_parser("report", help="build the run report (markdown + plots), print its path")
    rep.add_argument(
        "--run-id", type=lock.run_id_arg, default=None, help="a run in `runs` (default: latest)"
    )
    _add_conf_args(rep)
    _add_conf_args(
        sub.add_parser("maintain", help="compact the tables' small files and vacuum unused ones")
    )
    forget = sub.add_parser("forget", help="delete one user or item from every table and store")
    who = forget.add_mutually_exclusive_group(required=True)
    who.add_argument("--user", metavar="ID", help="the user's id as in the input")
    who.add_argument("--item", metavar="ID", help="the item's id as in the input")
    _add_conf_args(forget)
    return parser


def _stage(command: str, conf: Config, run_id: str, args: argparse.Namespace) -> dict:
    import importlib
    from dataclasses import asdict
    from datetime import UTC, datetime

    from jobs.plumbing import accounting

    # Only the stage that runs is imported: adapt's torch (~450 MB) stays out of the others.
    module = importlib.import_module(f"jobs.{command}")
    started_at = datetime.now(UTC)
    # The stage's row in `runs`: the report of a run whose stages ran apart shows each.
    if command == "generate":
        result = module.run(conf, run_id, module.selection_of(args))
        seconds, generated = accounting.generate_seconds(result), result
    else:
        result = module.run(conf, run_id)
        seconds, generated = {command: result.seconds}, None
    row = accounting.runs_row(conf, run_id, command, generated, seconds, started_at)
    return {**asdict(result), "accounting": accounting.record(conf, row)}


def _dispatch(args: argparse.Namespace, conf: Config, run_id: str, out: TextIO) -> None:
    from dataclasses import asdict

    if args.command == "run":
        from jobs.run import run

        out.write(json.dumps(run(conf, run_id)) + "\n")
    elif args.command == "evaluate":
        from jobs import evaluate

        result = evaluate.run(conf)
        out.write(result.pop("markdown") + json.dumps(result) + "\n")
    elif args.command in STAGES:
        result = _stage(args.command, conf, run_id, args)
        out.write(json.dumps(result, default=str) + "\n")
    elif args.command == "vectors":
        from jobs.rules import vectors

        snapshot = vectors.resolve(conf.table_path("vectors"), args.version, args.as_of)
        out.write(json.dumps(vectors.describe(snapshot, args.entity)) + "\n")
    elif args.command == "publish":
        from jobs import publish

        out.write(json.dumps(asdict(publish.run(conf, args.online))) + "\n")
    elif args.command == "report":
        from jobs import report

        path = report.write(conf, args.run_id)
        plots = [str(path.parent / f"{name}.png") for name in report.PLOTS]
        out.write(json.dumps({"report": str(path), "plots": plots}) + "\n")
    elif args.command == "maintain":
        from jobs import maintain

        out.write(json.dumps(asdict(maintain.run(conf))) + "\n")
    elif args.command == "forget":
        from jobs import forget

        kind, entity_id = ("user", args.user) if args.user is not None else ("item", args.item)
        result = forget.run(conf, kind, entity_id)
        sys.stderr.write(forget.report(result) + "\n")
        out.write(json.dumps(asdict(result)) + "\n")
    elif args.command == "join":
        from jobs import join_features

        result = join_features.run(
            conf,
            args.out,
            args.format,
            args.samples,
            args.version,
            args.as_of,
            args.user_col,
            args.item_col,
        )
        out.write(json.dumps(asdict(result)) + "\n")
    else:
        from jobs.discover import discover

        target = args.out or Path(f"factors-{args.domain.replace(' ', '-')}.yaml")
        path = discover(conf, args.domain, target, item_noun=args.item_noun)
        out.write(f"{path}\n")


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    try:
        conf = load_config(args.conf, args.overrides)
        logs.setup(conf.run.log_level)
        run_id = getattr(args, "run_id", None) or lock.new_run_id()
        # stdout carries the command's result only: whatever the engines print there (Ray's
        # driver echoes the raylet's notices to it) goes to stderr with the logs.
        out = sys.stdout
        with contextlib.redirect_stdout(sys.stderr):
            if args.command in WRITERS:
                with lock.hold(conf, args.command, run_id):
                    _dispatch(args, conf, run_id, out)
            else:
                _dispatch(args, conf, run_id, out)
    except INPUT_ERRORS as e:
        logs.setup()
        log.error("%s", e)
        sys.exit(2)
    except ClusterError as e:
        logs.setup()
        log.error("%s", e)
        sys.exit(1)


if __name__ == "__main__":
    main()
