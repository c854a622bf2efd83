"""Release-format dumps ({t}_Output.npy, {t}_Index.npy, {t}_Loss.npy per epoch) written from batches."""

import numpy as np


def write_dump(folder, epochs, loss=True):
    folder.mkdir(parents=True, exist_ok=True)
    for t, batches in enumerate(epochs):
        np.save(folder / f"{t}_Output.npy", np.concatenate([l for l, _ in batches]).astype(np.float32))
        np.save(folder / f"{t}_Index.npy", np.concatenate([i for _, i in batches]).astype(np.int64))
        if loss:
            np.save(folder / f"{t}_Loss.npy", np.zeros(sum(len(i) for _, i in batches), np.float32))
    return folder
