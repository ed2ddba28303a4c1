// Integer product throughput probe (not a test): 12 independent accumulators of one instruction in an
// unrolled loop, so latency hides and only issue rate counts; prints TSC cycles and ns per instruction.
// Modes: 0 zmm vpdpwssd, 1 zmm vpdpbusd, 2 ymm vpdpwssd, 3 ymm vpdpbusd, 4 zmm fma (fp32).
// It bounds the decode tiles from below: a step's products divided by this rate (and the cores).
// Needs AVX-512 VNNI.
//   gcc -O2 -march=native vnni.c -o vnni && ./vnni MODE   (e.g. ./vnni 0)
#include <immintrin.h>
#include <stdio.h>
#include <stdint.h>
#include <stdlib.h>
#include <time.h>
#include <x86intrin.h>

#define N_ACC 12
#define REPS 20000000L

static double now(void) { struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t); return t.tv_sec + 1e-9 * t.tv_nsec; }

// One loop per instruction, its 12 accumulators named so that they stay in registers (an array of them
// went to memory at -O2, and the probe measured the stores).
#define TWELVE(OP) OP(0) OP(1) OP(2) OP(3) OP(4) OP(5) OP(6) OP(7) OP(8) OP(9) OP(10) OP(11)
#define PROBE(NAME, T, INIT, STEP, SUM)                                        \
  static long NAME(int seed) {                                                 \
    _Pragma("GCC diagnostic ignored \"-Wunused-variable\"")                    \
    TWELVE(INIT)                                                               \
    for (long r = 0; r < REPS; ++r) { TWELVE(STEP) __asm__ volatile(""); }    \
    long sink = 0;                                                             \
    TWELVE(SUM)                                                                \
    return sink;                                                               \
  }

#define ZI(i) __m512i z##i = _mm512_set1_epi32(seed + i); const __m512i a##i = _mm512_set1_epi16((short)seed), b##i = _mm512_set1_epi16((short)(seed + 1));
#define ZS(i) (void)a##i; (void)b##i; sink += _mm512_reduce_add_epi32(z##i);
#define YI(i) __m256i z##i = _mm256_set1_epi32(seed + i); const __m256i a##i = _mm256_set1_epi16((short)seed), b##i = _mm256_set1_epi16((short)(seed + 1));
#define YS(i) sink += _mm256_extract_epi32(z##i, 0);
#define FI(i) __m512 z##i = _mm512_set1_ps((float)(seed + i)); const __m512 a##i = _mm512_set1_ps(1.0f), b##i = _mm512_set1_ps(1e-9f * seed);
#define FS(i) sink += (long)_mm512_reduce_add_ps(z##i);
#define ZW(i) z##i = _mm512_dpwssd_epi32(z##i, a0, b0);
#define ZB(i) z##i = _mm512_dpbusd_epi32(z##i, a0, b0);
#define YW(i) z##i = _mm256_dpwssd_epi32(z##i, a0, b0);
#define YB(i) z##i = _mm256_dpbusd_epi32(z##i, a0, b0);
#define FF(i) z##i = _mm512_fmadd_ps(z##i, a0, b0);
PROBE(zmm_dpwssd, __m512i, ZI, ZW, ZS)
PROBE(zmm_dpbusd, __m512i, ZI, ZB, ZS)
PROBE(ymm_dpwssd, __m256i, YI, YW, YS)
PROBE(ymm_dpbusd, __m256i, YI, YB, YS)
PROBE(zmm_fma, __m512, FI, FF, FS)

int main(int argc, char** argv) {
  const int mode = argc > 1 ? atoi(argv[1]) : 0;
  long (*const probes[])(int) = {zmm_dpwssd, zmm_dpbusd, ymm_dpwssd, ymm_dpbusd, zmm_fma};
  const char* names[] = {"zmm vpdpwssd", "zmm vpdpbusd", "ymm vpdpwssd", "ymm vpdpbusd", "zmm vfmadd"};
  if (mode < 0 || mode > 4) { fprintf(stderr, "mode is 0-4\n"); return 1; }
  const double t0 = now(); const uint64_t c0 = __rdtsc();
  const long sink = probes[mode](argc);  // the operands come from argc, so nothing folds away
  const uint64_t c1 = __rdtsc(); const double t1 = now();
  const double n = (double)REPS * N_ACC;
  printf("%s: %.3f TSC cycles, %.3f ns per instruction (sink %ld)\n", names[mode], (c1 - c0) / n, 1e9 * (t1 - t0) / n, sink & 1);
  return 0;
}
