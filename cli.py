"""Run the vitshrink command line from a checkout: `python cli.py compress ...` (same as `vitshrink ...`).

The group is vitshrink/cli.py, the commands are each package's command.py; this file only starts them, so torchrun can launch it too.
"""

from vitshrink.cli import main

if __name__ == "__main__":
    main()
