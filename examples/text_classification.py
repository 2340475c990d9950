"""Rotten Tomatoes sentiment with a bag-of-words classifier trained by TorchDistributor.

trustedml submit --keys K --kek models --kek data examples/text_classification.py
    [--file-path FILE] [--max-epoch 3] [--limit N] [--model-out PATH] [--evaluate-only MODEL.tml]
"""

import sys

from trustedml.ml.workloads.text_classification import main

if __name__ == "__main__":
    sys.exit(main())
