// AMX probe for decode batches (not a test): 4 activation rows x a weight in the grouped layouts, on the
// tiles without reordering the weight's codes. The grouped layouts keep, per row and group of 8 blocks, 4
// pieces; decoded, piece t is 64 bytes whose 4-byte lane l holds 4 columns of block l % 8. So A = R weight
// rows' piece t, and B routes x by lane: column n = (row r of a pair of x rows, block), zeros elsewhere. Each
// C tile (one per pair and plane: S = 4 for act-bits 16's two planes, 2 for act-bits 8) then holds a whole
// group's per-block sums, stored once per group, and an fp32 epilogue scales them. Compare the vector tiles
// with `benchmarks/int_tiles.py --threads 1` on the same shape. Needs AMX-INT8; one thread.
//   gcc -O2 -march=native amx_routed.c -o amx_routed && ./amx_routed R S N K [MODE]   (e.g. 16 4 3072 1536)
// MODE 0: all of it (int4 codes); 1: no epilogue; 2: no decoding of the codes; 3: no B loads or products;
// 4: int8 codes read straight from the weight as A (grouped int8: no decoding at all).
// Prints ns per block-row and x-row (best of 30 passes).
#include <immintrin.h>
#include <stdio.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <sys/syscall.h>
#include <unistd.h>
typedef struct { uint8_t palette, start; uint8_t res[14]; uint16_t colsb[16]; uint8_t rows[16]; } cfg_t;
static double now(){ struct timespec t; clock_gettime(CLOCK_MONOTONIC,&t); return t.tv_sec+1e-9*t.tv_nsec; }
int main(int argc, char**argv){
  if (syscall(SYS_arch_prctl, 0x1023, 18)) { puts("no AMX"); return 1; }
  int R = atoi(argv[1]), S = atoi(argv[2]), N = atoi(argv[3]), K = atoi(argv[4]), mode = argc>5?atoi(argv[5]):0;
  int G = K/256;
  uint8_t *W = aligned_alloc(64, (size_t)N*K); for (size_t i=0;i<(size_t)N*K;i++) W[i]=rand();
  int8_t *Bt = aligned_alloc(64, (size_t)G*4*S*1024); for (size_t i=0;i<(size_t)G*4*S*1024;i++) Bt[i]=(i%7==0)?rand():0;
  uint16_t *sc = aligned_alloc(64, (size_t)N*K/32*2); for (size_t i=0;i<(size_t)N*K/32;i++) sc[i]=0x2000+(rand()&0xff);
  float *out = aligned_alloc(64, (size_t)N*4*4);
  cfg_t c; memset(&c,0,sizeof c); c.palette=1;
  c.rows[0]=c.rows[1]=R; c.colsb[0]=c.colsb[1]=64;          // A double buffer
  c.rows[2]=c.rows[3]=16; c.colsb[2]=c.colsb[3]=64;         // B
  for (int t=4;t<8;t++){ c.rows[t]=R; c.colsb[t]=64; }      // C per set
  _tile_loadconfig(&c);
  static uint8_t abuf[2][16*64] __attribute__((aligned(64)));
  static int32_t cbuf[4][16*16] __attribute__((aligned(64)));
  const __m512i lomask = _mm512_set1_epi8(0x0f);
  const __m512i shifts = _mm512_inserti64x4(_mm512_setzero_si512(), _mm256_set1_epi16(4), 1);
  double best=1e9;
  for (int rep=0; rep<30; rep++){
    double t0=now();
    for (int n0=0; n0<N; n0+=R){
      __m512 acc[16][2];
      for (int m=0;m<R;m++){ acc[m][0]=_mm512_setzero_ps(); acc[m][1]=_mm512_setzero_ps(); }
      for (int g=0; g<G; g++){
        for (int t=0;t<4;t++){
          uint8_t *ab = abuf[t&1];
          if (mode==4) ab = W + (size_t)n0*K + g*256 + t*64;
          long ast = mode==4 ? K : 64;
          if (mode!=2 && mode!=4) for (int m=0;m<R;m++){
            __m512i raw = _mm512_broadcast_i64x4(_mm256_loadu_si256((const __m256i*)(W + (size_t)(n0+m)*(K/2) + g*128 + t*32)));
            _mm512_store_si512(ab + m*64, _mm512_and_si512(_mm512_srlv_epi16(raw, shifts), lomask));
          }
          if (mode==3) continue;
          const int8_t *bb = Bt + (size_t)(g*4+t)*S*1024;
          if (t&1) { _tile_loadd(1, ab, ast);
            _tile_loadd(2, bb, 64); _tile_dpbusd(4,1,2); _tile_loadd(3, bb+1024, 64); _tile_dpbusd(5,1,3);
            if (S==4){ _tile_loadd(2, bb+2048, 64); _tile_dpbusd(6,1,2); _tile_loadd(3, bb+3072, 64); _tile_dpbusd(7,1,3);} }
          else { _tile_loadd(0, ab, ast);
            _tile_loadd(2, bb, 64); _tile_dpbusd(4,0,2); _tile_loadd(3, bb+1024, 64); _tile_dpbusd(5,0,3);
            if (S==4){ _tile_loadd(2, bb+2048, 64); _tile_dpbusd(6,0,2); _tile_loadd(3, bb+3072, 64); _tile_dpbusd(7,0,3);} }
        }
        _tile_stored(4, cbuf[0], 64); _tile_zero(4); _tile_stored(5, cbuf[1], 64); _tile_zero(5);
        if (S==4){ _tile_stored(6, cbuf[2], 64); _tile_zero(6); _tile_stored(7, cbuf[3], 64); _tile_zero(7); }
        if (mode!=1) for (int m=0;m<R;m++){
          const uint16_t *sp = sc + (size_t)(n0+m)*(K/32) + g*8;
          __m512 s = _mm512_cvtph_ps(_mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i*)sp)));
          __m512 s16 = _mm512_mul_ps(s, _mm512_set1_ps(256.f));
          for (int q=0;q<2;q++){
            acc[m][q] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_load_si512(cbuf[q] + m*16)), S==4?s16:s, acc[m][q]);
            if (S==4) acc[m][q] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_load_si512(cbuf[2+q] + m*16)), s, acc[m][q]);
          }
        }
      }
      for (int m=0;m<R;m++) for (int q=0;q<2;q++){
        out[(n0+m)*4+2*q] = _mm512_reduce_add_ps(_mm512_maskz_mov_ps(0xff, acc[m][q]));
        out[(n0+m)*4+2*q+1] = _mm512_reduce_add_ps(_mm512_maskz_mov_ps(0xff00, acc[m][q]));
      }
    }
    double dt=now()-t0; if (dt<best) best=dt;
  }
  printf("R %d S %d N %d K %d mode %d: %.1f us, %.3f ns per block-row and x-row [%g]\n", R, S, N, K, mode, best*1e6, best*1e9/((double)N*K/32*4), out[5]);
}
