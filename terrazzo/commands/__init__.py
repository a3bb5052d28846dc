"""Subcommands of the ``terrazzo`` CLI, one module each (see ``terrazzo.cli``)."""
