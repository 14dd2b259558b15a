"""Entry point of the ``attnviz`` command.

Each sub-command lives in its own module of this package and is imported only when it is
run, so ``attnviz --help`` stays fast. Errors that derive from :class:`AttnvizError` become
one line on stderr and a non-zero exit; ``--debug`` (before or after the command's name) shows the
full traceback instead, and the tracebacks of per-image failures (logged at DEBUG level by the
library) beside their one-line messages. So do the
faults of the machine rather than of attnviz (:func:`environment_error`): a full disk, an output
path below a regular file, no permission, a file nested too deeply to read. Warnings raised while a
command runs are one line too (``attnviz: warning: …``); Python's own warning display is back in
place when the command returns.
"""

from __future__ import annotations

import contextlib
import copy
import errno
import importlib
import importlib.util
import logging
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path

import click

from attnviz.runtime.errors import AttnvizError

# name -> (module, attribute, one-line help shown in `attnviz --help`)
COMMANDS: dict[str, tuple[str, str, str]] = {
    "maps": ("attnviz.cli.maps", "maps", "Capture every attention gate of a model on images and draw them."),
    "compare": ("attnviz.cli.compare", "compare", "Grad-CAM of a baseline against attention models, side by side."),
    "inspect": (
        "attnviz.cli.inspect",
        "inspect",
        "Architecture summary, attention modules and training record of a checkpoint.",
    ),
    "train": ("attnviz.cli.train", "train", "Train a course architecture with the course's recipe."),
    "report": ("attnviz.cli.report", "report", "Batch report over many images and several models (static HTML)."),
}


class LazyGroup(click.Group):
    """A click group whose sub-commands are imported on first use."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return [name for name in COMMANDS if _command_available(name)]

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in COMMANDS or not _command_available(name):
            return None
        module_name, attribute, _ = COMMANDS[name]
        return _with_debug_option(getattr(importlib.import_module(module_name), attribute))

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = [(name, COMMANDS[name][2]) for name in self.list_commands(ctx)]
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)

    def invoke(self, ctx: click.Context):
        with warnings.catch_warnings():  # restores showwarning and the filters when the command ends
            warnings.showwarning = _one_line_warning
            return self._invoke(ctx)

    def _invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except AttnvizError as error:
            if ctx.obj and ctx.obj.get("debug"):
                raise
            click.echo(f"attnviz: error: {error}", err=True)
            ctx.exit(error.exit_code)
        except KeyboardInterrupt:
            click.echo("attnviz: interrupted", err=True)
            ctx.exit(130)
        except (click.exceptions.Exit, click.ClickException, click.exceptions.Abort, SystemExit):
            raise
        except (OSError, RecursionError) as error:  # the machine's fault or a hostile file, not attnviz's
            if ctx.obj and ctx.obj.get("debug"):
                raise
            message, code = environment_error(error)
            click.echo(f"attnviz: error: {message}", err=True)
            ctx.exit(code)
        except Exception as error:  # a bug, not a user error: still one line unless --debug
            if ctx.obj and ctx.obj.get("debug"):
                raise
            click.echo(
                f"attnviz: internal error: {type(error).__name__}: {error} (run with --debug for the traceback)",
                err=True,
            )
            ctx.exit(1)


def environment_error(error: OSError | RecursionError) -> tuple[str, int]:
    """The one-line message and exit code of an error that is the machine's or a file's, not
    attnviz's: 2 when it stops a command before anything is done (a path below a regular file,
    no permission, a read-only disk), 1 when the command may have stopped midway (a full disk:
    what was finished is kept, and ``report`` resumes)."""
    if isinstance(error, RecursionError):
        return "a file or value is nested too deeply to process (RecursionError); attnviz writes none so deep", 1
    path = error.filename or "a file"
    if error.errno in (errno.ENOSPC, errno.EDQUOT):
        return f"disk full: could not write {path}; free some space and run the command again", 1
    if error.errno in (errno.ENOTDIR, errno.EEXIST) and error.filename:
        blocker = next((p for p in (Path(path), *Path(path).parents) if p.exists() and not p.is_dir()), None)
        where = f"{blocker} is a file, not a folder" if blocker else "a part of that path is a file, not a folder"
        return f"cannot create {path}: {where}", 2
    if error.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return f"cannot use {path}: {error.strerror}", 2
    return f"{error.strerror or type(error).__name__}: {path}", 1


DEBUG_HELP = "Show full tracebacks instead of one-line errors, also of images that were skipped."


def _with_debug_option(command: click.Command) -> click.Command:
    """A copy of ``command`` that also takes ``--debug`` (``attnviz maps --debug …``)."""
    if any(param.name == "debug" for param in command.params):
        return command
    option = click.Option(["--debug"], is_flag=True, expose_value=False, is_eager=True, help=DEBUG_HELP)
    option.callback = _debug_callback
    command = copy.copy(command)
    command.params = [*command.params, option]
    return command


def _debug_callback(ctx: click.Context, param: click.Parameter, value: bool) -> None:
    if value:
        turn_on_debug(ctx)


def turn_on_debug(ctx: click.Context) -> None:
    """Make this run show tracebacks: of errors (``ctx.obj["debug"]``) and of the per-image failures
    the library logs at DEBUG level, until the command ends."""
    root = ctx.find_root()
    settings = root.ensure_object(dict)
    if not settings.get("debug"):
        settings["debug"] = True
        root.with_resource(_debug_log())


@contextlib.contextmanager
def _debug_log() -> Iterator[None]:
    """Show attnviz's DEBUG records (with their tracebacks) on stderr; undone on the way out."""
    log = logging.getLogger("attnviz")
    handler, level = _EchoHandler(), log.level
    log.addHandler(handler)
    log.setLevel(logging.DEBUG)
    try:
        yield
    finally:
        log.removeHandler(handler)
        log.setLevel(level)


class _EchoHandler(logging.Handler):
    """``attnviz: debug: …`` on click's stderr, for DEBUG records only (INFO and above have their
    own display)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.addFilter(lambda record: record.levelno < logging.INFO)

    def emit(self, record: logging.LogRecord) -> None:
        click.echo(f"attnviz: debug: {self.format(record)}", err=True)


def _one_line_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """Show a warning as ``attnviz: warning: …`` on one line (``--debug``: with where it came from)."""
    text = " ".join(str(message).split())
    context = click.get_current_context(silent=True)
    if context is not None and context.find_root().obj and context.find_root().obj.get("debug"):
        text += f" [{category.__name__} at {filename}:{lineno}]"
    import attnviz  # a warning raised outside attnviz's own code (the user's model, a library) is not attnviz's

    where = Path(str(filename)).resolve()
    if any(where.is_relative_to(Path(own).resolve().parent) for own in (str(attnviz.__file__), __file__)):
        click.echo(f"attnviz: warning: {text}", err=True)
    else:
        click.echo(f"warning (from {filename}:{lineno}): {text}", err=True)


def _command_available(name: str) -> bool:
    return importlib.util.find_spec(COMMANDS[name][0]) is not None


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option("--debug", is_flag=True, help=DEBUG_HELP)
@click.version_option(package_name="attnviz")
@click.pass_context
def cli(ctx: click.Context, debug: bool) -> None:
    """attnviz: see what the SE and CBAM attention in your CNN learned.

    \b
    Examples:
      attnviz maps --model samples/models/cbam_cnn.pth samples/images/*.png --out runs/maps
      attnviz compare --baseline cnn.pth --model se.pth --model cbam.pth img1.png img2.png
      attnviz inspect --model ckpt.pth
    """
    ctx.ensure_object(dict).setdefault("debug", False)
    if debug:
        turn_on_debug(ctx)


def main(argv: list[str] | None = None) -> None:
    """Run the CLI (the ``attnviz`` console script)."""
    cli.main(args=argv, prog_name="attnviz")


if __name__ == "__main__":  # pragma: no cover
    main(sys.argv[1:])
