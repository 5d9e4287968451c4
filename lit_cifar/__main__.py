"""``python -m lit_cifar {fit,validate,test,predict}``: see `lit_cifar.cli.LitCifarCLI`."""

import sys

from lit_cifar.cli import LitCifarCLI, main

__all__ = ["LitCifarCLI", "main"]  # LitCifarCLI once lived here: older imports keep working

if __name__ == "__main__":
    sys.exit(main())
