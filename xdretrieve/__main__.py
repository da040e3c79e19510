"""``python -m xdretrieve ...``: the CLI, where the ``xdretrieve`` script is not on PATH."""

from xdretrieve.cli import main

main(prog_name="xdretrieve")
