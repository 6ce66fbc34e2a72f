"""Keras Masking, anywhere in a sequence, exactly as Keras computes it.

Keras skips every step whose features all equal `mask_value`: a masked step leaves the state
unchanged. So each row's unmasked steps are moved to the front and run with their count as the
length (the LSTM's `sequence_lens`), which gives Keras's states and last output exactly, and the
per-step outputs are put back where Keras puts them: a forward LSTM repeats its previous output
at a masked step (zeros before the first unmasked one), a Bidirectional one answers zeros there,
and a per-step Dense head answers for what it reads there (its activation of its bias on zeros).
`keras.utils.pad_sequences` pads before the sequence by default, so leading masked steps are
the common case.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from lstm_serving.contract import PREDICTION, SEQUENCE, Architecture
from lstm_serving.core.merge import Arrays
from lstm_serving.errors import InvalidArgument


@dataclass(frozen=True)
class Compaction:
    """Where each row's unmasked steps were, to put the per-step outputs back."""

    kept: np.ndarray  # [batch, time] bool: unmasked, within the row's length
    lengths: np.ndarray  # [batch] the caller's lengths (steps past them are padding)


def masked_steps(inputs: np.ndarray, arch: Architecture) -> np.ndarray:
    """[batch, time] True where Keras skips the step: every feature equal to the Masking
    value, or token id 0 under mask_zero."""
    if arch.mask_value is not None:
        return np.asarray((inputs == np.float32(arch.mask_value)).all(axis=2))
    return np.asarray(inputs == 0)


def compact(
    inputs: np.ndarray, lengths: np.ndarray, masked: np.ndarray
) -> tuple[np.ndarray, np.ndarray, Compaction]:
    """The inputs with each row's unmasked steps first, their counts as lengths, and how to
    put the outputs back. A row masked at every step is refused: Keras would answer zeros."""
    steps = np.arange(inputs.shape[1])
    within = steps[None, :] < lengths[:, None]
    kept = ~masked & within
    counts = kept.sum(axis=1).astype(np.int32)
    if (counts == 0).any():
        row = int(np.flatnonzero(counts == 0)[0])
        raise InvalidArgument(
            f"input[{row}] is masked at every step (the model's Masking value, or token id 0 "
            "under mask_zero): nothing to compute"
        )
    compaction = Compaction(kept, lengths)
    if (kept == (steps[None, :] < counts[:, None])).all():  # unmasked steps already first
        return inputs, counts, compaction
    order = np.argsort(~kept, axis=1, kind="stable")  # kept steps first, in their order
    index = order if inputs.ndim == 2 else order[:, :, None]
    moved = np.take_along_axis(inputs, index, axis=1)
    moved[~(steps[None, :] < counts[:, None])] = 0
    return moved, counts, compaction


def restore(arrays: Arrays, compaction: Compaction, arch: Architecture) -> Arrays:
    """The per-step outputs (`sequence`, a per-step `prediction`) back at the steps Keras
    answers them, from a run of the compacted inputs; the rest as they are."""
    last = arch.layers[-1].direction
    for name in (SEQUENCE, PREDICTION):
        if name not in arrays or arrays[name].ndim != 3:
            continue
        if last == "reverse":
            raise InvalidArgument(
                f"{name} of a Masking model whose last layer runs go_backwards is not "
                "reproduced here: ask for last_hidden or the states"
            )
        fill = None
        if name == PREDICTION and arch.head is not None:
            fill = np.asarray(arch.head.at_zero, np.float32)
        arrays[name] = _put_back(arrays[name], compaction, carry=last == "forward", fill=fill)
    return arrays


def _put_back(
    run: np.ndarray, compaction: Compaction, carry: bool, fill: np.ndarray | None
) -> np.ndarray:
    """`run`'s first count steps of each row back at their kept steps; a masked step gets the
    last kept step's value (`carry`) or `fill` (zeros when None), as do steps before the first
    kept one; steps past the caller's lengths are zeros."""
    kept, time = compaction.kept, run.shape[1]
    source = np.cumsum(kept, axis=1) - 1  # [batch, time]: the last kept step's rank so far
    restored = np.take_along_axis(run, np.maximum(source, 0)[:, :, None], axis=1)
    empty = (source < 0) if carry else ~kept
    restored[empty] = 0.0 if fill is None else fill
    past = np.arange(time)[None, :] >= compaction.lengths[:, None]
    restored[past] = 0.0
    return restored
