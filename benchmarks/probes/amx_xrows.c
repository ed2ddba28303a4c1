// AMX probe, x rows as A (not a test): A = M rows of x (K = 32 bytes: one block; M = 4, or 8 for
// act-bits 16's two planes of 4 rows), B = one block of 16 weight rows' codes in VNNI order (8 x 64 bytes),
// C = M x 16 int32, stored per block (the weight's scales change per block). Prints TSC cycles per block of
// 16 weight rows: MODE 0 the tile instructions (loads, zero, tdpbusd, C store), 1 also the fp32 epilogue
// (each C row to fp32 times the block's scales). Decoding the codes into VNNI order, a transpose across 16
// weight rows of the grouped layouts, is not in it. Needs AMX-INT8; one thread.
//   gcc -O2 -march=native amx_xrows.c -o amx_xrows && ./amx_xrows M MODE   (e.g. 8 1)
#include <immintrin.h>
#include <stdio.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>
#include <x86intrin.h>
typedef struct { uint8_t palette, start; uint8_t res[14]; uint16_t colsb[16]; uint8_t rows[16]; } cfg_t;
static int8_t A[64*16*32] __attribute__((aligned(64)));
static int8_t B[64*512] __attribute__((aligned(64)));
static int32_t C[8*16*16] __attribute__((aligned(64)));
static float S[64*16] __attribute__((aligned(64)));
int main(int argc, char**argv){ syscall(SYS_arch_prctl, 0x1023, 18);
  int M = atoi(argv[1]); int mode = atoi(argv[2]);
  cfg_t c; memset(&c,0,sizeof c); c.palette=1;
  for (int t=0;t<8;t++){ c.rows[t]=M; c.colsb[t]=64; }
  c.rows[0]=c.rows[4]=M; c.colsb[0]=c.colsb[4]=32;    // A
  c.rows[1]=c.rows[5]=8; c.colsb[1]=c.colsb[5]=64;    // B
  _tile_loadconfig(&c);
  memset(A,1,sizeof A); memset(B,1,sizeof B); for (int i=0;i<64*16;i++) S[i]=1e-3f;
  __m512 acc[8]; for (int i=0;i<8;i++) acc[i]=_mm512_setzero_ps();
  int reps=20000; uint64_t t0=__rdtsc();
  for (int r=0;r<reps;r++){
    for (int sb=0; sb<64; sb+=2){
      int ring = (sb>>1)&3;
      int32_t *c0 = C + ring*2*M*16, *c1 = c0 + M*16;
      _tile_loadd(0, A + sb*M*32, 32); _tile_loadd(1, B + sb*512, 64);
      _tile_loadd(4, A + (sb+1)*M*32, 32); _tile_loadd(5, B + (sb+1)*512, 64);
      _tile_zero(2); _tile_zero(3); _tile_dpbusd(2,0,1); _tile_dpbusd(3,4,5);
      _tile_stored(2, c0, 64); _tile_stored(3, c1, 64);
      if (mode==1) {
        int32_t *p0 = C + ((ring+3)&3)*2*M*16, *p1 = p0 + M*16;   // the previous pair, overlapped
        __m512 s0 = _mm512_load_ps(S + sb*16), s1 = _mm512_load_ps(S + (sb+1)*16);
        for (int m=0;m<M;m++){
          acc[m&7] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_load_si512(p0+m*16)), s0, acc[m&7]);
          acc[m&7] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_load_si512(p1+m*16)), s1, acc[m&7]);
        }
      }
    }
  }
  double cyc = (double)(__rdtsc()-t0)/reps/64;
  float x=0; for (int i=0;i<8;i++) x+=_mm512_reduce_add_ps(acc[i]);
  printf("M %d mode %d: %.1f TSC cycles per block of 16 weight rows (%.3f per block-row and x-row) [%g]\n", M, mode, cyc, cyc/16/(M>4?M/2:M), x);
}
