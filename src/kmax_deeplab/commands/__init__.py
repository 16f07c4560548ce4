"""Sub-commands of the ``kmax`` command line.

Each module defines ``register(subparsers)``, which adds its parser and sets
``func`` to a function taking the parsed ``argparse.Namespace`` and returning an exit
code. Each is a thin layer over a library function.
"""

COMMANDS = ("predict", "train", "evaluate", "prepare", "convert", "demo", "info", "export", "app")
