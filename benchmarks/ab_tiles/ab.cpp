// A/B harness for the integer-activation tiles (not a test): two versions of kernels/csrc/qact.h compiled
// into one binary (namespaces A and B), their calls alternated on the same random weights and rounded
// activations, the best time of each kept. On a shared VM whose speed drifts by 20-50% between minutes
// this is the only comparison of kernel variants that repeats. Build and run with build.sh.
#include <ATen/Parallel.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#include <immintrin.h>
#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <new>
#include <random>
#include <type_traits>
#include <vector>
namespace A {
#include VA
}
#ifdef B_ZMM  // B built with the 512-bit group tiles (LMFORGE_ZMM), A without
#define LMFORGE_ZMM 1
#endif
namespace B {
#include VB
}
namespace A::lmforge_qact { using I4 = Int4Rows<at::Half>; using I8G = Int8Rows<at::Half, uint8_t>; using I8 = Int8Rows<at::Half>; }
namespace B::lmforge_qact { using I4 = Int4Rows<at::Half>; using I8G = Int8Rows<at::Half, uint8_t>; using I8 = Int8Rows<at::Half>; }
// ns per 32-weight block and activation row of one pass of `tile` over the N rows
template <int MR, bool TWO, typename Rows, typename F>
double time_tiles(const Rows& w, int64_t N, F tile) {
  auto t0 = std::chrono::steady_clock::now();
  tile();
  auto t1 = std::chrono::steady_clock::now();
  return std::chrono::duration<double, std::nano>(t1 - t0).count() / (N * (w.K / 32) * MR);
}
#define CASE(NAME, MR, TWO, RowsT, QPTR, GROUPED, NBITS)                                                                  \
  {                                                                                                              \
    A::lmforge_qact::RowsT wa{{QPTR, sc.data(), MINS K, G}};                                                       \
    B::lmforge_qact::RowsT wb{{QPTR, sc.data(), MINS K, G}};                                                       \
    A::lmforge_qact::RoundedRows ra; B::lmforge_qact::RoundedRows rb;                                            \
    ra.round(x.data(), 4, K, TWO, GROUPED ? wa.grouped() : 0); rb.round(x.data(), 4, K, TWO, GROUPED ? wb.grouped() : 0); \
    constexpr int RA = A::lmforge_qact::tile_rows<decltype(wa), MR, TWO>();                                      \
    constexpr int RB = B::lmforge_qact::tile_rows<decltype(wb), MR, TWO>();                                      \
    double ta = 1e30, tb = 1e30;                                                                                 \
    for (int rep = 0; rep < reps; ++rep) {                                                                       \
      ta = std::min(ta, time_tiles<MR, TWO>(wa, N, [&] { for (int64_t n0 = 0; n0 + RA <= N; n0 += RA) A::lmforge_qact::dot_tile<RA, MR, TWO>(wa, n0, ra.rows.data(), ya.data(), N); })); \
      tb = std::min(tb, time_tiles<MR, TWO>(wb, N, [&] { for (int64_t n0 = 0; n0 + RB <= N; n0 += RB) B::lmforge_qact::dot_tile<RB, MR, TWO>(wb, n0, rb.rows.data(), yb.data(), N); })); \
    }                                                                                                            \
    float err = 0; for (int64_t i = 0; i < MR * N; ++i) err = std::max(err, std::abs(ya[i] - yb[i]) / (1e-3f + std::abs(ya[i]))); \
    printf("%-18s A %.3f  B %.3f  B/A %.3f  (rel diff %.1e)\n", NAME, ta, tb, tb / ta, err);                    \
  }
int main(int argc, char** argv) {
  const int64_t K = atoi(argv[1]), N = argc > 2 ? atoi(argv[2]) : 512, G = K / 32;
  const int reps = N > 4096 ? 30 : 400;
  std::mt19937 rng(0);
  std::vector<uint8_t> qs(N * K / 2), q8(N * K);
  for (auto& v : qs) v = rng();
  for (auto& v : q8) v = rng();
  std::vector<at::Half> sc(N * G + 8), mn(N * G + 8);
  for (auto& v : sc) v = at::Half(0.01f * (1 + rng() % 100));
  for (auto& v : mn) v = at::Half(-0.01f * (rng() % 100));
  std::vector<float> x(4 * K), ya(4 * N), yb(4 * N);
  for (auto& v : x) v = (rng() % 2001 - 1000) / 1000.f;
  printf("K %ld N %ld, ns per block and row\n", K, N);
#define MINS mn.data(),
  CASE("int4 act16 M1", 1, true, I4, qs.data(), 1, 16)
  CASE("int4 act16 M4", 4, true, I4, qs.data(), 1, 16)
  CASE("int4 act8 M1", 1, false, I4, qs.data(), 1, 8)
  CASE("int4 act8 M4", 4, false, I4, qs.data(), 1, 8)
#undef MINS
#define MINS
  CASE("int8g act16 M1", 1, true, I8G, q8.data(), 1, 16)
  CASE("int8g act16 M4", 4, true, I8G, q8.data(), 1, 16)
  CASE("int8g act8 M1", 1, false, I8G, q8.data(), 1, 8)
  CASE("int8g act8 M4", 4, false, I8G, q8.data(), 1, 8)
  CASE("int8 act16 M1", 1, true, I8, reinterpret_cast<const int8_t*>(q8.data()), 0, 16)
  CASE("int8 act16 M4", 4, true, I8, reinterpret_cast<const int8_t*>(q8.data()), 0, 16)
}
