"""One module per group of `airlock` subcommands."""
