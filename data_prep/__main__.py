import sys

from .cli import main

if __name__ == "__main__":  # a spawned pool worker imports this module again: it must not run main
    sys.exit(main())
