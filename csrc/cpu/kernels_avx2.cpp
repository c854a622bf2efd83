// AVX2 + FMA variant (see kernels_isa.h); empty where the compiler cannot target it.
#include "kernels_isa_prelude.h"
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#pragma GCC target("avx2,fma,f16c,bmi,bmi2,lzcnt,popcnt")
#include "isa_avx2_macros.h"
#define CPU_CAPABILITY AVX2
#define CPU_CAPABILITY_AVX2
#pragma GCC diagnostic ignored "-Wpsabi"  // vector ABI notes: all callers are in this TU
#include "kernels_isa.h"
#endif
