"""The `genq` command line: client, embedded system (`genq up`), demo and admin commands."""
