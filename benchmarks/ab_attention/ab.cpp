// A/B harness for attention.h's attend_part (not a test): two versions of attention.h compiled into one binary
// (namespaces A and B), their calls alternated on the same cache, the best time of each kept. Build and
// run with build.sh.
#include <ATen/Parallel.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <type_traits>
#include <utility>
#include <immintrin.h>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <vector>
namespace A {
#include VA
}
namespace B {
#include VB
}
int main(int argc, char** argv) {
  const int64_t L = argc > 1 ? atoi(argv[1]) : 544, layers = argc > 2 ? atoi(argv[2]) : 1, G = 3, hd = 64;
  std::mt19937 rng(0);
  std::normal_distribution<float> nd;
  std::vector<c10::Half> k(layers * L * hd), v(layers * L * hd);
  for (auto& x : k) x = c10::Half(nd(rng) * 0.5f);
  for (auto& x : v) x = c10::Half(nd(rng));
  std::vector<float> q(G * hd);
  for (auto& x : q) x = nd(rng);
  std::vector<char> maskc(L, 1);
  const bool* mask = reinterpret_cast<const bool*>(maskc.data());
  const int64_t C = (L + 31) / 32, step = C * (hd + 2);
  std::vector<float> pa(G * step), pb(G * step), scr(G * 32);
  auto run = [&](auto fn, std::vector<float>& parts) {
    auto t0 = std::chrono::steady_clock::now();
    for (int64_t y = 0; y < layers; ++y)
      for (int64_t c = 0; c < C; ++c)
        fn(q.data(), G, k.data() + y * L * hd, v.data() + y * L * hd, mask, 1, c * 32, std::min(L, (c + 1) * 32), hd, 0.125f,
           parts.data() + c * (hd + 2), step, scr.data());
    auto t1 = std::chrono::steady_clock::now();
    return std::chrono::duration<double, std::nano>(t1 - t0).count() / (layers * C);
  };
  double ta = 1e30, tb = 1e30;
  for (int rep = 0; rep < (layers > 1 ? 20 : 300); ++rep) {
    ta = std::min(ta, run(A::lmforge_attn::attend_part<c10::Half>, pa));
    tb = std::min(tb, run(B::lmforge_attn::attend_part<c10::Half>, pb));
  }
  float err = 0;
  for (size_t i = 0; i < pa.size(); ++i) err = std::max(err, std::abs(pa[i] - pb[i]) / (1e-3f + std::abs(pa[i])));
  printf("L %ld x %ld layers: ns per part of 32 slots x %ld heads: A %.0f  B %.0f  B/A %.3f (rel diff %.1e)\n", L, layers, G, ta, tb, tb / ta, err);
}
