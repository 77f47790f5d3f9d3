"""Click callbacks shared by annot's command modules: an -o path checked before any work."""

from __future__ import annotations

import os
from pathlib import Path

import click


def out_path(folder: bool):
    """A click callback checking an -o path before any work: no existing file where a folder must be."""

    def check(ctx, param, value):
        if value is None:
            return value
        p = Path(value)
        if p.exists() and folder != p.is_dir():
            raise click.BadParameter(f"{value} is {'a file' if folder else 'a folder'}; give a "
                                     f"{'folder' if folder else 'file'} path", ctx, param)
        for parent in p.parents:
            if parent.exists():
                if not parent.is_dir():
                    raise click.BadParameter(f"{value}: {parent} is a file, not a folder; choose another path",
                                             ctx, param)
                if not os.access(parent, os.W_OK | os.X_OK):
                    raise click.BadParameter(f"{value}: {parent} is not writable; choose another path", ctx, param)
                break
        return value

    return check


OUT_FILE, OUT_DIR = out_path(False), out_path(True)
