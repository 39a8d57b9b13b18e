"""`hfaug` on the command line: parse, configure logging, call the library. Nothing else.

    hfaug run RECIPE [--force STAGE] [--section.key VALUE ...]
    hfaug STAGE --config RECIPE [--force] [--section.key VALUE ...]
    hfaug serve --config RECIPE [--port N] [--share true|false]
    hfaug reproduce REPO [--revision v1] [--output-dir DIR]
    hfaug recipes

Heavy packages are imported inside the commands, so `hfaug --help` stays fast.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import warnings
from pathlib import Path

from .errors import HfaugError

logger = logging.getLogger("hfaug")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hfaug",
        description="LLM-based augmentations with data selection for zero-shot crosslingual transfer.",
        epilog="Recipe keys can be overridden on any command: --generate.temperature 1.2",
    )
    from . import __version__

    parser.add_argument("--version", action="version", version=f"hfaug {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("-q", "--quiet", action="store_true", help="warnings and errors only")
    # the same flags after the command (`hfaug run demo -q`); SUPPRESS keeps the defaults above
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS, help="debug logging")
    common.add_argument("-q", "--quiet", action="store_true", default=argparse.SUPPRESS,
                        help="warnings and errors only")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_StageParser)

    def command(name: str, **kwargs) -> argparse.ArgumentParser:
        return sub.add_parser(name, parents=[common], **kwargs)

    p = command("run", help="run every stage of a recipe, skipping unchanged ones")
    p.add_argument("recipe", help="recipe path or packaged name (demo, paper/xnli-hi, ...)")
    p.add_argument("--force", metavar="STAGE", help="rerun STAGE and everything after it")
    p.add_argument("--output-dir", help="folder for run directories (recipe: output_dir)")
    p.add_argument("--name", help="run name (recipe: name)")
    p.add_argument("--wait", action="store_true", help="if another run holds the run directory, wait for it")
    p.add_argument("--dry-run", action="store_true",
                   help="print the setting, the stage order, the resolved prompts, the experiment grid (students "
                        "to train) and its GPU-hour estimate; run nothing")

    from .pipeline import PIPELINE  # light: no torch, transformers or datasets

    for stage in PIPELINE:
        p = command(stage.name, help=stage.help)
        p.recipe_section = stage.section
        p.add_argument("--config", "-c", required=True, metavar="RECIPE", help="recipe path or packaged name")
        p.add_argument("--force", action="store_true", help="run even if unchanged")
        p.add_argument("--output-dir", help="folder for run directories (recipe: output_dir)")
        p.add_argument("--name", help="run name (recipe: name)")
        p.add_argument("--wait", action="store_true", help="if another run holds the run directory, wait for it")
        if stage.name == "generate":
            p.add_argument("--dry-run", action="store_true",
                           help="send a few real requests and estimate tokens and time for the run")
        if stage.name == "distill":
            p.add_argument("--shard", metavar="I/N",
                           help="train only the I-th of N shares of the grid's students (I from 0), e.g. one "
                                "process per GPU; then run distill once without --shard to collect them")
        if stage.name == "publish":
            p.add_argument("--local-dir",
                           help="write the repo layout to this folder only, push nothing (publish.local_dir)")
            p.add_argument("--tag", help="version tag; an existing one is never moved (publish.tag, default next vN)")
            p.add_argument("--repo-id", help="Hub dataset repo user/name (publish.repo_id)")

    p = command("serve", help="serve a run's exported students in the Gradio app (the Space's code)")
    p.recipe_section = "serve"
    p.add_argument("--config", "-c", required=True, metavar="RECIPE", help="recipe path or packaged name")
    p.add_argument("--port", type=int, help="port to listen on (recipe: serve.port, default 7860)")
    p.add_argument("--share", choices=["true", "false"], help="public gradio.live link (recipe: serve.share)")
    p.add_argument("--output-dir", help="folder for run directories (recipe: output_dir)")
    p.add_argument("--name", help="run name (recipe: name)")

    p = command("reproduce", help="download a published dataset's recipe and rerun it in a clean folder")
    p.add_argument("repo", help="dataset repo id (user/name) or a local published folder")
    p.add_argument("--revision", default="main", help="tag, branch or commit (default: main)")
    p.add_argument("--output-dir", help="clean folder for the rerun (default: reproduce/<repo>-<revision>)")

    p = command("recipes", help="list the packaged recipes")
    p.add_argument("--reference", action="store_true", help="print every recipe key with its type, default and help")
    return parser


class _StageParser(argparse.ArgumentParser):
    """A command's parser whose --help also lists its recipe section's keys with types and defaults.

    The keys come from the stage's config dataclass, imported only when help is asked for, so
    building the parser stays light."""

    recipe_section: str | None = None

    def format_help(self) -> str:
        text = super().format_help()
        if self.recipe_section:
            text += "\n" + section_keys_help(self.recipe_section)
        return text


def section_keys_help(section: str) -> str:
    """Plain-text list of a recipe section's keys: name, type, default and help."""
    import textwrap

    from .config import _own_fields, config_class, section_keys

    cls = config_class(section)
    own = _own_fields(cls)  # TrainingArguments subclasses: hfaug's own keys, then a pointer
    lines = [f"recipe keys (section '{section}'; override any with --{section}.KEY VALUE):"]
    for name, type_name, default, help_text in section_keys(cls):
        lines.append(f"  {name} ({type_name}, default {default})")
        if help_text:
            lines += textwrap.wrap(help_text, width=96, initial_indent="      ", subsequent_indent="      ")
    if own is not None:
        lines.append("  ... and every transformers.TrainingArguments option")
    lines.append("run-wide keys: name, task, setting, seed, output_dir, description, health (hfaug recipes --reference)")
    return "\n".join(lines) + "\n"


def parse_overrides(extra: list[str]) -> dict:
    """``--a.b value`` / ``--a.b=value`` pairs into {"a.b": value}."""
    from .config import parse_value

    out = {}
    i = 0
    while i < len(extra):
        arg = extra[i]
        if not arg.startswith("--") or len(arg) == 2:
            raise HfaugError(f"unexpected argument '{arg}'; recipe overrides look like --section.key value")
        key = arg[2:]
        if "=" in key:
            key, value = key.split("=", 1)
            i += 1
        else:
            if i + 1 >= len(extra):
                raise HfaugError(f"override '{arg}' needs a value")
            value = extra[i + 1]
            i += 2
        out[key.replace("-", "_") if "." not in key else key] = parse_value(value)
    return out


def configure_logging(verbose: bool, quiet: bool) -> None:
    level = logging.DEBUG if verbose else logging.WARNING if quiet else logging.INFO
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    # third-party libraries stay quiet unless asked
    for noisy in ("httpx", "urllib3", "filelock", "datasets", "huggingface_hub", "transformers"):
        logging.getLogger(noisy).setLevel(logging.DEBUG if verbose else logging.WARNING)
    root = logging.getLogger()
    for old in [f for f in root.filters if isinstance(f, RootChatter)]:
        root.removeFilter(old)
    if not verbose:
        root.addFilter(RootChatter())


class RootChatter(logging.Filter):
    """Drops info and debug records logged on the root logger itself (``logging.info(...)``).

    hfaug logs only through named loggers, so these come from libraries: ONNX Runtime's quantiser
    writes one "Quantization parameters for tensor ... not specified" line per tensor (dozens per
    export). A logger's own filters see only the records created on it, so named loggers' records
    pass untouched. ``-v`` shows them again.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.WARNING


def quiet_libraries(verbose: bool) -> None:
    """Library chatter (dataset save bars, weight-init notices) hides the stage bars and the summary."""
    if verbose:
        return
    import datasets
    import transformers

    datasets.disable_progress_bars()
    transformers.utils.logging.set_verbosity_error()
    # notices every CPU training run or ONNX export repeats, which say nothing about this run (the
    # export's parity gate is what checks the traced graph)
    for message in ("'pin_memory' argument is set as true but no accelerator", "mtime may not be reliable",
                    ".*might cause the trace to be incorrect", ".*registered as constants in the trace",
                    # setuptools' notices, raised when the export's dependencies import pkg_resources
                    # or distutils: about the environment, not the run
                    "pkg_resources is deprecated", "Setuptools is replacing distutils", ".*declare_namespace"):
        warnings.filterwarnings("ignore", message=message)
    warnings.filterwarnings("ignore", module=r"(setuptools|pkg_resources|_distutils_hack)(\..*)?$")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    configure_logging(args.verbose, args.quiet)
    try:
        return _dispatch(args, extra)
    except HfaugError as e:
        print(f"hfaug: error: {e}", file=sys.stderr)
        return e.exit_code
    except Exception as e:  # a full disk or a read-only folder: one line too; anything else is a bug
        from .errors import storage_problem

        message = storage_problem(e, getattr(args, "run_root", None))
        if message is None:
            raise
        print(f"hfaug: error: {message}", file=sys.stderr)
        return HfaugError.exit_code
    except KeyboardInterrupt:
        print("hfaug: interrupted; finished work is kept, rerun the same command to resume", file=sys.stderr)
        return 130


def _dispatch(args, extra: list[str]) -> int:
    if args.command == "recipes":
        from .config import packaged_recipes, reference_markdown

        print(reference_markdown() if args.reference else "\n".join(packaged_recipes()))
        return 0

    if args.command == "reproduce":
        from .pipeline import reproduce, summary

        if extra:
            raise HfaugError(f"reproduce takes no recipe overrides, got {' '.join(extra)}")
        print(summary(reproduce(args.repo, args.revision, args.output_dir)))
        return 0

    from .config import load_recipe

    overrides = parse_overrides(extra)
    for flag in ("local_dir", "tag", "repo_id"):  # hfaug publish --local-dir/--tag/--repo-id
        if getattr(args, flag, None) is not None:
            overrides[f"publish.{flag}"] = getattr(args, flag)
    if args.output_dir:
        overrides["output_dir"] = args.output_dir
    if args.name:
        overrides["name"] = args.name
    if args.command == "serve":
        if args.port is not None:
            overrides["serve.port"] = args.port
        if args.share is not None:
            overrides["serve.share"] = args.share == "true"
    recipe = load_recipe(args.recipe if args.command == "run" else args.config, overrides)
    args.run_root = Path(recipe.run.output_dir) / recipe.run.name  # named by a full-disk message

    from .runs import Run

    if args.command == "serve":
        from .serve import ServeConfig, describe, serve

        demo = serve(Run(recipe), recipe.sections.get("serve") or ServeConfig(), block=False)
        print(describe(demo), flush=True)
        demo.block_thread()  # until Ctrl+C, which closes the server
        return 0

    from . import pipeline

    quiet_libraries(args.verbose)
    if args.command == "run" and args.dry_run:
        from .grid import dry_run
        from .plan import plan

        print(plan(recipe))  # the setting, the stage order and the prompts
        print(dry_run(recipe))
        return 0
    if args.command == "run":
        run = pipeline.run_pipeline(recipe, force=args.force, wait=args.wait)
        print(pipeline.summary(run))
        return 0

    run = Run(recipe)
    if getattr(args, "dry_run", False):
        from .generate import dry_run

        print(dry_run(run))  # a few real requests and an estimate; no stage output is written
        return 0
    if getattr(args, "shard", None) is not None:
        from .distill import train_shard
        from .grid import parse_shard

        print(train_shard(run, *parse_shard(args.shard)))  # the cache only; a plain distill collects
        return 0
    manifest, skipped = pipeline.run_stage(run, args.command, force=args.force, wait=args.wait)
    if int(os.environ.get("RANK", "0")) == 0:  # under `accelerate launch`, one summary
        print(pipeline.summary(run, [(args.command, "skipped" if skipped else "ran", manifest, 0.0)]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
