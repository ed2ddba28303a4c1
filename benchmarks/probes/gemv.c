// fp32 GEMV streaming probe (not a test): 8 matrices of 5,632 x 2,048 fp32 rows (369 MB) times one row of x,
// each thread a contiguous range of rows, best of 6. mode 0: 256-bit loads, 4 accumulators; 1: 512-bit loads
// (prefetch PF floats ahead if given); 2: 256-bit loads with prefetch. (RESULTS.md, eighteenth round)
//   gcc -O2 -march=native -fopenmp gemv.c -o gemv && OMP_NUM_THREADS=2 ./gemv MODE [PF]
#include <immintrin.h>
#include <stdio.h>
#include <stdlib.h>
#include <omp.h>
#define K 2048
static float hsum256(__m256 v){ __m128 s=_mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v,1)); s=_mm_hadd_ps(s,s); s=_mm_hadd_ps(s,s); return _mm_cvtss_f32(s);}
static inline float row256(const float* w, const float* x){ __m256 a0=_mm256_setzero_ps(),a1=a0,a2=a0,a3=a0;
  for(int k=0;k<K;k+=32){ a0=_mm256_fmadd_ps(_mm256_loadu_ps(w+k),_mm256_loadu_ps(x+k),a0); a1=_mm256_fmadd_ps(_mm256_loadu_ps(w+k+8),_mm256_loadu_ps(x+k+8),a1);
    a2=_mm256_fmadd_ps(_mm256_loadu_ps(w+k+16),_mm256_loadu_ps(x+k+16),a2); a3=_mm256_fmadd_ps(_mm256_loadu_ps(w+k+24),_mm256_loadu_ps(x+k+24),a3);}
  return hsum256(_mm256_add_ps(_mm256_add_ps(a0,a1),_mm256_add_ps(a2,a3))); }
static inline float row512(const float* w, const float* x, int pf){ __m512 a0=_mm512_setzero_ps(),a1=a0,a2=a0,a3=a0;
  for(int k=0;k<K;k+=64){ if(pf) { _mm_prefetch((const char*)(w+k+pf),_MM_HINT_T0); _mm_prefetch((const char*)(w+k+pf+16),_MM_HINT_T0); _mm_prefetch((const char*)(w+k+pf+32),_MM_HINT_T0); _mm_prefetch((const char*)(w+k+pf+48),_MM_HINT_T0);}
    a0=_mm512_fmadd_ps(_mm512_loadu_ps(w+k),_mm512_loadu_ps(x+k),a0); a1=_mm512_fmadd_ps(_mm512_loadu_ps(w+k+16),_mm512_loadu_ps(x+k+16),a1);
    a2=_mm512_fmadd_ps(_mm512_loadu_ps(w+k+32),_mm512_loadu_ps(x+k+32),a2); a3=_mm512_fmadd_ps(_mm512_loadu_ps(w+k+48),_mm512_loadu_ps(x+k+48),a3);}
  return _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(a0,a1),_mm512_add_ps(a2,a3))); }
static inline float row256pf(const float* w, const float* x, int pf){ __m256 a0=_mm256_setzero_ps(),a1=a0,a2=a0,a3=a0;
  for(int k=0;k<K;k+=32){ _mm_prefetch((const char*)(w+k+pf),_MM_HINT_T0); _mm_prefetch((const char*)(w+k+pf+16),_MM_HINT_T0);
    a0=_mm256_fmadd_ps(_mm256_loadu_ps(w+k),_mm256_loadu_ps(x+k),a0); a1=_mm256_fmadd_ps(_mm256_loadu_ps(w+k+8),_mm256_loadu_ps(x+k+8),a1);
    a2=_mm256_fmadd_ps(_mm256_loadu_ps(w+k+16),_mm256_loadu_ps(x+k+16),a2); a3=_mm256_fmadd_ps(_mm256_loadu_ps(w+k+24),_mm256_loadu_ps(x+k+24),a3);}
  return hsum256(_mm256_add_ps(_mm256_add_ps(a0,a1),_mm256_add_ps(a2,a3))); }
int main(int argc, char** argv){
  int mode=atoi(argv[1]); int pf=argc>2?atoi(argv[2]):0;
  long N=5632, mats=8; float* W=aligned_alloc(64, N*K*4*mats); float x[K] __attribute__((aligned(64))); float* y=malloc(N*mats*4);
  #pragma omp parallel for
  for(long i=0;i<N*K*mats;i++) W[i]=(i%7)*0.1f;
  for(int i=0;i<K;i++) x[i]=i*0.001f;
  double best=0;
  for(int rep=0;rep<6;rep++){
    double t=omp_get_wtime();
    for(int it=0;it<2;it++) for(long m=0;m<mats;m++){ const float* Wm=W+m*N*K;
      #pragma omp parallel
      { int T=omp_get_num_threads(), id=omp_get_thread_num(); long lo=N*id/T, hi=N*(id+1)/T;
        for(long n=lo;n<hi;n++) y[m*N+n] = mode==0? row256(Wm+n*K,x) : mode==1? row512(Wm+n*K,x,pf) : row256pf(Wm+n*K,x,pf); }
    }
    t=omp_get_wtime()-t; double gbs=2.0*mats*N*K*4/t/1e9; if(gbs>best)best=gbs;
  }
  printf("mode %d pf %d: %.1f GB/s\n", mode, pf, best);
}
