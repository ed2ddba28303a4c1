// AMX tile instruction probe (not a test): 64 blocks of 32 columns x 16 weight rows, per block the tile loads,
// zero, tdpbssd and C store the prompt products issue (mode 0), or parts of them (1: no zero/store, 2: no loads,
// 3: tdpbssd alone, 4: loads alone, 5: contiguous weight rows); prints TSC cycles per block. Needs AMX-INT8.
//   gcc -O2 -march=native seq.c -o seq && ./seq COLS MODE STRIDE   (e.g. ./seq 16 0 2048)
#include <immintrin.h>
#include <stdio.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <sys/syscall.h>
#include <unistd.h>
#include <x86intrin.h>
typedef struct { uint8_t palette, start; uint8_t res[14]; uint16_t colsb[16]; uint8_t rows[16]; } cfg_t;
static int8_t A[16*2048] __attribute__((aligned(64)));
static int8_t B[64*8*64] __attribute__((aligned(64)));
static int32_t C[64*16*16] __attribute__((aligned(64)));
int main(int argc, char**argv){ syscall(SYS_arch_prctl, 0x1023, 18);
  int cols = atoi(argv[1]); int mode = atoi(argv[2]); long strideA = atol(argv[3]);
  cfg_t c; memset(&c,0,sizeof c); c.palette=1;
  for (int t=0;t<8;t++){ c.rows[t]=16; c.colsb[t]=4*cols; }
  c.rows[0]=c.rows[4]=16; c.colsb[0]=c.colsb[4]=32;
  c.rows[1]=c.rows[5]=8; c.colsb[1]=c.colsb[5]=4*cols;
  c.rows[6]=16; c.colsb[6]=32; c.rows[7]=8; c.colsb[7]=4*cols;
  _tile_loadconfig(&c);
  memset(A,1,sizeof A); memset(B,1,sizeof B);
  int reps=20000; uint64_t t0=__rdtsc();
  for (int r=0;r<reps;r++){
    if (mode==0) for (int sb=0; sb<64; sb+=2){
      _tile_loadd(0, A + sb*32, strideA); _tile_loadd(1, B + sb*512, 64);
      _tile_loadd(4, A + (sb+1)*32, strideA); _tile_loadd(5, B + (sb+1)*512, 64);
      _tile_zero(2); _tile_zero(3); _tile_dpbssd(2,0,1); _tile_dpbssd(3,4,5);
      _tile_stored(2, C + sb*16*cols, 4*cols); _tile_stored(3, C + (sb+1)*16*cols, 4*cols);
    }
    if (mode==1) for (int sb=0; sb<64; sb+=2){  // no stores
      _tile_loadd(0, A + sb*32, strideA); _tile_loadd(1, B + sb*512, 64);
      _tile_loadd(4, A + (sb+1)*32, strideA); _tile_loadd(5, B + (sb+1)*512, 64);
      _tile_dpbssd(2,0,1); _tile_dpbssd(3,4,5);
    }
    if (mode==2) for (int sb=0; sb<64; sb+=2){  // no loads
      _tile_zero(2); _tile_zero(3); _tile_dpbssd(2,0,1); _tile_dpbssd(3,4,5);
      _tile_stored(2, C + sb*16*cols, 4*cols); _tile_stored(3, C + (sb+1)*16*cols, 4*cols);
    }
    if (mode==3) for (int sb=0; sb<64; sb+=2){  // only dp
      _tile_dpbssd(2,0,1); _tile_dpbssd(3,4,5);
    }
    if (mode==4) for (int sb=0; sb<64; sb+=2){  // loads only
      _tile_loadd(0, A + sb*32, strideA); _tile_loadd(1, B + sb*512, 64);
      _tile_loadd(4, A + (sb+1)*32, strideA); _tile_loadd(5, B + (sb+1)*512, 64);
    }
    if (mode==5) for (int sb=0; sb<64; sb+=2){  // A stride 32 contiguous
      _tile_loadd(0, A + sb*512, 32); _tile_loadd(1, B + sb*512, 64);
      _tile_loadd(4, A + (sb+1)*512, 32); _tile_loadd(5, B + (sb+1)*512, 64);
      _tile_zero(2); _tile_zero(3); _tile_dpbssd(2,0,1); _tile_dpbssd(3,4,5);
      _tile_stored(2, C + sb*16*cols, 4*cols); _tile_stored(3, C + (sb+1)*16*cols, 4*cols);
    }
  }
  printf("cols %d mode %d strideA %ld: %.1f cycles per block\n", cols, mode, strideA, (double)(__rdtsc()-t0)/reps/64);
}
