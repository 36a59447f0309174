"""Training on several processes: one process group over GPUs (NCCL) or CPU cores (gloo), through accelerate.

``torchrun --nproc_per_node N -m streamgen.cli train ...`` (or ``accelerate launch``) starts N copies of the trainer.
What makes N processes train the same model as one (docs/distributed.md):

- ``batch_size`` in the config is the batch of one optimizer step over all processes; rank r of N takes rows
  ``[r * B/N, (r + 1) * B/N)`` of it (:meth:`streamgen.train.data.ClipSource.batch`): the ranks' shares, in rank
  order, are exactly the batch one process would take at that step.
- Every random draw of a step is made at the size of the whole batch from one generator that every process holds
  in the same state, and each rank keeps its rows (:func:`rows`). The noise, noise levels and caption dropout of a
  clip are therefore the ones one process would draw for it, and the generator state a checkpoint saves is every
  rank's: a run resumes on any number of processes.
- The loss of a rank is normalised by the weight of the whole batch (all-reduced) times N, so that DDP's gradient
  average is the gradient of one process's loss over the whole batch.
- The main process alone writes: log, evals, checkpoints, exports.

The process group itself: :mod:`streamgen.process_group`.
"""

from __future__ import annotations


def rows(batch: int, rank: int, world: int) -> tuple[int, slice]:
    """(the whole batch's size, this rank's rows of it) for a rank holding ``batch`` of the ``world`` processes'
    equal shares: draw at the whole size, keep the slice."""
    return batch * world, slice(rank * batch, (rank + 1) * batch)
