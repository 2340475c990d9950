"""Train LeNet-5 on MNIST with TorchDistributor (the `lenet` example workload).

trustedml submit --keys K --kek models --kek data examples/lenet_mnist.py [--data-path DIR]
    [--max-epoch 2] [--batch-size 128] [--model-out PATH] [--evaluate-only MODEL.tml]
"""

import sys

from trustedml.ml.workloads.lenet import main

if __name__ == "__main__":
    sys.exit(main())
