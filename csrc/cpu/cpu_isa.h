// Which compiled variant of the CPU kernels (kernels_<isa>.cpp) runs on this machine.
#pragma once
#include <string>

namespace tdds {
namespace cpu {

enum class Isa { kDefault = 0, kAvx2 = 1, kAvx512 = 2 };

// The widest variant this CPU and its OS can execute (cpuid and xgetbv, through the compiler's
// __builtin_cpu_supports), whatever ATEN_CPU_CAPABILITY says.
Isa widest_supported_isa();

// The variant the kernels use: the widest supported one, narrowed (never widened) by
// ATEN_CPU_CAPABILITY as torch reads it. Decided once per process.
Isa selected_isa();

const char* isa_name(Isa isa);  // "DEFAULT", "AVX2", "AVX512"

}  // namespace cpu
}  // namespace tdds
