"""What the authors' release does, for comparison: every epoch in RAM, every window recomputed.

Loads all T epochs' logits, scatters them to dataset order (index_add, as the release does),
keeps all T softmax matrices, and for each window recomputes its W−1 contributions from them.
Usage: python benchmarks/release_style.py DUMP_DIR T W BETA OUT.npy
"""

import sys

import numpy as np
import torch


def main(dump_dir, t_len, window, beta, out):
    t_len, window, beta = int(t_len), int(window), float(beta)
    probs = []
    for t in range(t_len):
        logits = torch.from_numpy(np.load(f"{dump_dir}/{t}_Output.npy"))
        index = torch.from_numpy(np.load(f"{dump_dir}/{t}_Index.npy")).long()
        full = torch.zeros(int(index.max()) + 1, logits.shape[1]).index_add_(0, index, logits)
        probs.append(torch.softmax(full, dim=1))
    score = torch.zeros(probs[0].shape[0])
    for k in range(t_len - window + 1):
        d = torch.stack(
            [
                (probs[j + 1] * (torch.log(probs[j + 1] + 1e-8) - torch.log(probs[j] + 1e-8))).abs().sum(dim=1)
                for j in range(k, k + window - 1)
            ],
            dim=1,
        )
        r = (d - d.mean(dim=1, keepdim=True)).square().sum(dim=1).sqrt()
        score = (1 - beta) * score + beta * r
    np.save(out, score.numpy())


if __name__ == "__main__":
    main(*sys.argv[1:])
