"""``python -m lit_cifar {fit,validate,test,predict}``: see `lit_cifar.cli.LitCifarCLI`."""

import sys

from lit_cifar.cli import main

if __name__ == "__main__":
    sys.exit(main())
