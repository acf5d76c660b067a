/* Float32 FMA peak of this CPU: each thread runs 12 independent chains of 512-bit (or 256-bit)
 * fused multiply-adds, enough to hide the FMA latency on both FMA pipes. Prints GFLOP/s over
 * all threads. Built and run by benchmarks/edge_export.py:
 *     gcc -O2 -march=native -pthread fma_peak.c -o fma_peak && ./fma_peak THREADS SECONDS */
#include <immintrin.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#ifdef __AVX512F__
typedef __m512 vec;
#define LANES 16
#define FMA(a, b, c) _mm512_fmadd_ps(a, b, c)
#define SET1 _mm512_set1_ps
#define SUM(v) _mm512_reduce_add_ps(v)
#else
typedef __m256 vec;
#define LANES 8
#define FMA(a, b, c) _mm256_fmadd_ps(a, b, c)
#define SET1 _mm256_set1_ps
static float SUM(__m256 v) { float f[8]; _mm256_storeu_ps(f, v); return f[0] + f[7]; }
#endif

#define CHAINS 12  /* independent accumulators, see CHAIN below */
static long iterations;
static float sink[64];

#define CHAIN(X) X(0) X(1) X(2) X(3) X(4) X(5) X(6) X(7) X(8) X(9) X(10) X(11)
#define DECLARE(i) vec acc##i = SET1(0.001f * (i + 1));
#define STEP(i) acc##i = FMA(acc##i, a, b);
/* An empty asm that "may change" each accumulator in its register: every FMA must be done. */
#define KEEP(i) __asm__ volatile("" : "+v"(acc##i));
#define ADD(i) total += SUM(acc##i);

static void *work(void *arg) {
    long id = (long)arg;
    CHAIN(DECLARE)
    vec a = SET1(0.999999f), b = SET1(1e-7f);
    for (long n = 0; n < iterations; n++) {
        CHAIN(STEP)
        CHAIN(KEEP)
    }
    float total = 0;
    CHAIN(ADD)
    sink[id] = total;
    return NULL;
}

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + 1e-9 * t.tv_nsec;
}

int main(int argc, char **argv) {
    int threads = argc > 1 ? atoi(argv[1]) : 1;
    double seconds = argc > 2 ? atof(argv[2]) : 1.0;
    pthread_t pool[64];
    iterations = 1000000;
    double best = 0;
    for (int round = 0; round < 3; round++) {
        double start = now();
        for (long t = 0; t < threads; t++) pthread_create(&pool[t], NULL, work, (void *)t);
        for (int t = 0; t < threads; t++) pthread_join(pool[t], NULL);
        double elapsed = now() - start;
        double gflops = 2.0 * LANES * CHAINS * (double)iterations * threads / elapsed / 1e9;
        if (gflops > best) best = gflops;
        iterations = (long)(iterations * seconds / elapsed) + 1;  /* later rounds last ~`seconds` */
    }
    printf("%.1f %d\n", best, LANES);
    return 0;
}
