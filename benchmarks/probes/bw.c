// Read bandwidth probe (not a test): two OpenMP threads xor a buffer of MB megabytes with 512-bit loads,
// 20 passes, three rounds. 76 MB stays in a large L3; 1024 MB streams from DRAM (RESULTS.md, eighteenth round).
//   gcc -O2 -mavx512f -fopenmp bw.c -o bw && OMP_NUM_THREADS=2 ./bw 76
#include <immintrin.h>
#include <stdio.h>
#include <stdlib.h>
#include <omp.h>
int main(int argc,char**argv){ size_t mb=atoi(argv[1]); size_t n=mb<<20; char*b=aligned_alloc(64,n); for(size_t i=0;i<n;i++)b[i]=i;
 for(int rep=0;rep<3;rep++){ double t=omp_get_wtime(); int iters=20; long long tot=0;
 for(int it=0;it<iters;it++){
 #pragma omp parallel reduction(+:tot)
 { int T=omp_get_num_threads(), id=omp_get_thread_num(); size_t lo=n/T*id, hi=n/T*(id+1); __m512i a=_mm512_setzero_si512(),c=a;
   for(size_t i=lo;i<hi;i+=128){ a=_mm512_xor_si512(a,_mm512_load_si512(b+i)); c=_mm512_xor_si512(c,_mm512_load_si512(b+i+64)); }
   tot+=_mm512_reduce_add_epi64(_mm512_xor_si512(a,c)); }
 }
 t=omp_get_wtime()-t; printf("%zu MB: %.1f GB/s (%lld)\n", mb, n*(double)iters/t*1e-9, tot); }
}
