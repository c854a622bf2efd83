// Baseline ISA: at::vec's portable Vectorized (the fallback on any CPU).
#include "update_isa_prelude.h"
#define CPU_CAPABILITY DEFAULT
#include "update_isa.h"
