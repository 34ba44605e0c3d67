"""``python -m dva`` (also what ``torchrun ... -m dva`` runs)."""

from dva.cli import main

if __name__ == "__main__":
    main()
