"""Command line: a thin shell over the Python API (``reswise.pipeline``). Every command: parse the
flags, call the API, print. One module per group of commands, each registering its sub-parsers.

    reswise sweep --model cifar_resnet56 --dataset imagefolder \
        --data-root ../shared/datasets/cifar10-jpeg/test --resolutions 32,28,24,20,16,12

Bad input raises ReswiseError, printed as one line with exit code 2.
"""

from .main import build_parser, main

__all__ = ["build_parser", "main"]
