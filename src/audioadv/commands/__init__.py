"""Sub-commands of the `audioadv` CLI: one module per capability, each with `register(subparsers)`."""
