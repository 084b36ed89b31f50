"""How every vitshrink command reports a failure the user can fix: one clean line and exit code 1.

Library code raises a `VitShrinkError` (or a subclass) whose message says what came in and what to do;
a command declared with `cls=VitShrinkCommand` prints it as `Error: <message>`, without a traceback.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import click

from vitshrink.compressor.core.errors import VitShrinkError

T = TypeVar("T")


class VitShrinkCommand(click.Command):
    """A click command that turns every VitShrinkError into one clean line and exit code 1."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except VitShrinkError as e:
            raise click.ClickException(str(e)) from e


def parsed_by(parse: Callable[[str], T]) -> Callable[[click.Context, click.Parameter, str | None], T | None]:
    """A click callback that reads an option with the library's own parser, at parse time: its VitShrinkError
    becomes click's one-line `Invalid value for '--option': <message>`; an option not given stays None."""

    def callback(ctx: click.Context, param: click.Parameter, value: str | None) -> T | None:
        if value is None:
            return None
        try:
            return parse(value)
        except VitShrinkError as e:
            raise click.BadParameter(str(e), ctx=ctx, param=param) from e

    return callback
