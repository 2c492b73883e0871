"""The `plangate` command line."""
