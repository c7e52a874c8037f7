"""The `sigpipe` commands that change who the model knows without retraining: enrol and remove
(`tasks.enrolment`). `tasks.cli.app` adds them to the app after the model commands.

A refusal is one line per problem on stderr (each naming the file or the writer) and exit code 1,
with nothing written; the answer is one line saying which version was registered and why its alias.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Annotated, TypeVar

import typer

from tasks.workspace.paths import PARAMS_FILE_NAME, ProjectPaths

Result = TypeVar("Result")
ParamsOption = Annotated[Path, typer.Option("--params", "-p", help="Workspace parameter file.")]


def refusing(work: Callable[[], Result]) -> Result:
    """Run `work`; a refusal (EnrolmentError, ConfigError, a model file error) becomes its lines on
    stderr and exit code 1."""
    from tasks.workspace.errors import ConfigError, EnrolmentError, ModelFileError

    try:
        return work()
    except (EnrolmentError, ConfigError, ModelFileError) as error:
        for line in str(error).splitlines():
            typer.echo(f"error: {line}", err=True)
        raise typer.Exit(code=1) from error


def prepared(params: Path) -> ProjectPaths:
    """The workspace of `params`, with the libraries quiet (TensorFlow is imported by the caller, quietly
    too, with `tasks.cli.quiet.import_tensorflow`, when it needs it)."""
    from flows._stage import quiet_environment

    quiet_environment()
    return ProjectPaths.from_root(params.resolve().parent)


def enrol(
    writer: Annotated[
        str, typer.Argument(help="The new writer's id (numbers are zero-padded as the dataset's: 7 -> 007).")
    ],
    images: Annotated[list[Path], typer.Argument(help="Its reference images, or one folder of them.")],
    add_references: Annotated[
        bool,
        typer.Option("--add-references", help="Add the images to an existing writer instead of enrolling a new one."),
    ] = False,
    params: ParamsOption = Path(PARAMS_FILE_NAME),
) -> None:
    """Enrol WRITER from reference images without retraining: a new signed model version, champion only if the
    writers enrolled before keep their validation figures (enrol.tolerance). Refused, with nothing written, when
    any reference is unreadable, blank, too small, not a signature, given twice or another writer's."""
    from tasks.cli.quiet import import_tensorflow
    from tasks.enrolment.enrol import enrol_writer
    from tasks.enrolment.workspace_state import read_settings

    paths = prepared(params)  # TensorFlow after the references' checks: a refusal answers at once
    result = refusing(
        lambda: enrol_writer(paths, read_settings(paths), writer, images, add_references, import_tensorflow)
    )
    version = result.version
    typer.echo(
        f"enrolled writer {result.writer} ({result.references} references): {version.name} version {version.version} "
        f"is {version.alias} (parent version {version.parent or 'none'}, run {version.run_id}): {result.reason}"
    )


def remove(
    writer: Annotated[str, typer.Argument(help="The writer to remove.")],
    purge_versions: Annotated[
        bool, typer.Option("--purge-versions", help="Also delete the earlier registry versions that know the writer.")
    ] = False,
    params: ParamsOption = Path(PARAMS_FILE_NAME),
) -> None:
    """Remove WRITER: a new champion version without it; its references and embeddings deleted from the workspace
    (a dataset writer is recorded so the next `dvc repro` leaves it out); earlier versions listed (--purge-versions
    deletes them)."""
    from tasks.cli.quiet import import_tensorflow
    from tasks.enrolment.remove import remove_writer
    from tasks.enrolment.workspace_state import read_settings

    paths = prepared(params)
    import_tensorflow()
    result = refusing(lambda: remove_writer(paths, read_settings(paths), writer, purge_versions))
    version = result.version
    typer.echo(f"removed writer {result.writer}: {version.name} version {version.version} is {version.alias}")
    if result.deleted_enrolment:
        typer.echo(f"deleted its references and embeddings from {paths.enrolments_dir}")
    if result.recorded_removal:
        typer.echo(
            "recorded in data/enrolments/removed.json: the next `dvc repro` leaves it out (data/raw is unchanged)"
        )
    listed = ", ".join(result.earlier_versions) or "none"
    if result.purged:
        typer.echo(f"deleted the earlier versions that knew it: {listed}")
    else:
        typer.echo(f"earlier versions that know it (--purge-versions deletes them): {listed}")
