"""The op contract and its implementations; knows nothing of trackers.

schema      the op schemas (one text for every backend), counter slots, epsilon; implement()
            registers a backend's kernel
checks      the op contract's argument checks, called first by every Python kernel
reference   the pure-PyTorch ops tdds::update / tdds::epoch_step: the formula's statement
reference_topk  tdds::update_topk: the same with a compressed previous row (prev_topk=K)
triton      tdds::update_triton / tdds::epoch_step_triton (imported on demand)
extension   loads the compiled C++/CUDA module tdds_kernels._C (tdds::update_ext / ..._ext)
registry    the table of backends; which op pair a name means on a device ("auto": the fastest)
"""

from . import reference, reference_topk  # noqa: F401  (define the schemas, register the reference kernels)
