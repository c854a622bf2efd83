// Included right after a `#pragma GCC target` that enables AVX2 + FMA + F16C: g++ does not
// update the ISA macros on a target pragma, and sleef.h (through at::vec) needs them.
#pragma once
#ifndef __AVX__
#define __AVX__ 1
#endif
#ifndef __AVX2__
#define __AVX2__ 1
#endif
#ifndef __FMA__
#define __FMA__ 1
#endif
#ifndef __F16C__
#define __F16C__ 1
#endif
