"""The ``seedstory`` command (``main``) and its subcommands, one module each."""
