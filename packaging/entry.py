"""Entry point of the one-file build (``make dist``): the ``playerpulse`` command line."""

from app.cli import main

main(prog_name="playerpulse")
