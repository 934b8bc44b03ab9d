import sys

from search.cli import main

# Guarded: vLLM starts its engine processes with spawn, which imports this module again.
if __name__ == "__main__":
    sys.exit(main())
