"""Entry stores behind the `Store` port: in-process memory and Redis."""
