"""`python -m plangate`: the same as the `plangate` command."""

from plangate.cli.main import app

if __name__ == "__main__":
    app(prog_name="plangate")
