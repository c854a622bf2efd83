// Baseline ISA: at::vec's portable Vectorized (the fallback on any CPU).
#include "kernels_isa_prelude.h"
#define CPU_CAPABILITY DEFAULT
#include "kernels_isa.h"
