"""What every ``tsched`` command shares: failures on one line, and JSON on stdout.

Errors are one line on stderr starting with ``error:``, never a traceback: exit status 2 for a
command line that does not parse (:class:`OneLineGroup` shortens click's usage errors), 1 for
everything else (:class:`CliError`; :func:`reported_client_errors` turns the client's
exceptions into one).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from typing import IO, TYPE_CHECKING, Any, Protocol

import click

from .errors import CertificateVerifyFailed, ClientError, ConnectionFailed

if TYPE_CHECKING:
    from .client import Client

SERVER_HINT = "is the server running? try 'tsched up'"


class CliError(click.ClickException):
    """A failure the user can act on: printed as ``error: <message>``, exit status 1."""

    def show(self, file: IO[Any] | None = None) -> None:
        click.echo(f"error: {self.format_message()}", file=file, err=file is None)


class OneLineUsageError(click.UsageError):
    """A usage error on one line, with where to look for help instead of the whole usage."""

    def show(self, file: IO[Any] | None = None) -> None:
        hint = f" (see '{self.ctx.command_path} --help')" if self.ctx is not None else ""
        click.echo(f"error: {self.format_message()}{hint}", file=file, err=file is None)


def one_line(error: click.UsageError) -> click.UsageError:
    """``error`` as a :class:`OneLineUsageError` (the bare ``tsched`` help stays the help)."""
    if isinstance(error, click.exceptions.NoArgsIsHelpError | OneLineUsageError):
        return error
    return OneLineUsageError(error.format_message(), error.ctx)


class OneLineGroup(click.Group):
    """Click's group, with its usage errors (and its commands') shortened to one line."""

    def make_context(
        self,
        info_name: str | None,
        args: list[str],
        parent: click.Context | None = None,
        **extra: Any,
    ) -> click.Context:
        try:
            return super().make_context(info_name, args, parent, **extra)
        except click.UsageError as error:
            raise one_line(error) from None

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except click.UsageError as error:
            raise one_line(error) from None


@contextmanager
def reported_client_errors() -> Iterator[None]:
    """Turn the client's exceptions raised in the block into one-line :class:`CliError`\\ s."""
    try:
        yield
    except CertificateVerifyFailed as error:
        raise CliError(str(error)) from None
    except ConnectionFailed as error:
        raise CliError(f"{error} ({SERVER_HINT})") from None
    except ClientError as error:
        raise CliError(str(error)) from None


class Session(Protocol):
    """``ctx.obj`` as the commands that talk to a server see it."""

    @property
    def client(self) -> Client: ...


def echo_json(data: object, *, compact: bool = False) -> None:
    """``data`` as JSON on stdout: indented, or on one line (one object per line, for streams)."""
    if compact:
        click.echo(json.dumps(data, ensure_ascii=False, separators=(",", ":")))
    else:
        click.echo(json.dumps(data, indent=2, ensure_ascii=False))
