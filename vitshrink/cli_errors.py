"""How every vitshrink command reports a failure the user can fix: one clean line and exit code 1.

Library code raises a `VitShrinkError` (or a subclass) whose message says what came in and what to do;
a command declared with `cls=VitShrinkCommand` prints it as `Error: <message>`, without a traceback.
"""

from __future__ import annotations

import click

from vitshrink.compressor.errors import VitShrinkError


class VitShrinkCommand(click.Command):
    """A click command that turns every VitShrinkError into one clean line and exit code 1."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except VitShrinkError as e:
            raise click.ClickException(str(e)) from e
