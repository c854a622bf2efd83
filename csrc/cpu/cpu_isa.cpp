// Run-time choice of the CPU kernel variant. at::get_cpu_capability() alone is not enough: it
// echoes ATEN_CPU_CAPABILITY without checking the CPU, so ATEN_CPU_CAPABILITY=avx512 on an
// AVX2-only CPU would run AVX-512 instructions and die with SIGILL. The variable may only
// narrow what the CPU supports.
#include "cpu_isa.h"

#include <ATen/Version.h>  // at::get_cpu_capability

#include <algorithm>

namespace tdds {
namespace cpu {

Isa widest_supported_isa() {
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
  // The features each variant is compiled for (the #pragma GCC target lines of
  // kernels_avx2.cpp and kernels_avx512.cpp). GCC's runtime also checks that the OS saves the
  // YMM/ZMM state (xgetbv), so a hypervisor that hides AVX-512 state reports no AVX-512.
  __builtin_cpu_init();
  const bool avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
                    __builtin_cpu_supports("bmi") && __builtin_cpu_supports("bmi2") &&
                    __builtin_cpu_supports("popcnt") && __builtin_cpu_supports("f16c") &&
                    __builtin_cpu_supports("lzcnt");
  const bool avx512 = avx2 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                      __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq");
  if (avx512) return Isa::kAvx512;
  if (avx2) return Isa::kAvx2;
#endif
  return Isa::kDefault;
}

namespace {
// ATEN_CPU_CAPABILITY (as torch parsed it) as an upper bound; anything torch reports that is
// not AVX2 or AVX512 (DEFAULT, or another architecture's name) means the baseline variant.
Isa requested_cap() {
  const std::string cap = at::get_cpu_capability();
  if (cap == "AVX512") return Isa::kAvx512;
  if (cap == "AVX2") return Isa::kAvx2;
  return Isa::kDefault;
}
}  // namespace

Isa selected_isa() {
  static const Isa isa =
      static_cast<Isa>(std::min(static_cast<int>(widest_supported_isa()), static_cast<int>(requested_cap())));
  return isa;
}

const char* isa_name(Isa isa) {
  switch (isa) {
    case Isa::kAvx512:
      return "AVX512";
    case Isa::kAvx2:
      return "AVX2";
    default:
      return "DEFAULT";
  }
}

}  // namespace cpu
}  // namespace tdds
