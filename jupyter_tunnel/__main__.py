"""``python -m jupyter_tunnel`` is ``jupyter tunnel``."""

from .cli import main

if __name__ == "__main__":
    main()
