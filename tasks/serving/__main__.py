"""``python -m tasks.serving``: serve the champion on its own (the same as ``python -m tasks.serving.api``)."""

from tasks.serving.api import main

if __name__ == "__main__":
    main(prog="python -m tasks.serving")
