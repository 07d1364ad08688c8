// DIFFUSE_TARGET_CLONES: a hot loop compiled three times, for AVX-512, x86-64-v3 (AVX2 with FMA)
// and baseline x86-64, the loader picking the best this CPU runs (GCC function multi-versioning),
// so that the project still builds for any x86-64 while its loops use the widest vectors the
// machine has. "arch=x86-64-v3" is a feature level (GCC checks it by the CPU's flags, not its
// model) and brings FMA, which a clone for "avx2" alone would leave out. Elsewhere (clang, other
// architectures) the loop is compiled once, for the build's target.
#pragma once

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && __GNUC__ >= 12
#define DIFFUSE_TARGET_CLONES __attribute__((target_clones("avx512f", "arch=x86-64-v3", "default")))
#elif defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)  // no x86-64-v3 dispatch before GCC 12
#define DIFFUSE_TARGET_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define DIFFUSE_TARGET_CLONES
#endif
