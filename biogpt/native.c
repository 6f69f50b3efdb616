/* Matrix-vector kernels for decoding on a CPU: y = x W^T + bias for a few rows of x.

   Compiled on the user's machine by biogpt/native.py (gcc -O3 -march=native -fopenmp) and called through ctypes.
   A decode step reads every weight once for one row of x, so its speed is how fast the weights stream from
   memory: these kernels read each weight once per call whatever the number of rows (up to a few), turn it into
   float32 in registers and accumulate in float32. Weights: bfloat16; int8 with one scale per output row
   (biogpt.kernels' Int8Linear); int4 in PyTorch's packed layout with a scale and a zero per group (Int4Linear).
   x, scales, bias and y are all float32 or all bfloat16 (`bf16` argument).
   OpenMP splits the output rows over the threads of the runtime torch itself uses (the same libgomp).
*/
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#if defined(__AVX512F__)
#include <immintrin.h>
#define LANES 16
typedef __m512 vec;
static inline vec vzero(void) { return _mm512_setzero_ps(); }
static inline vec vload(const float *p) { return _mm512_loadu_ps(p); }
static inline vec vload_i8(const int8_t *p) {
    return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)p)));
}
static inline vec vload_bf16(const uint16_t *p) {
    __m512i wide = _mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)p));
    return _mm512_castsi512_ps(_mm512_slli_epi32(wide, 16));
}
static inline vec vfma(vec a, vec b, vec c) { return _mm512_fmadd_ps(a, b, c); }
static inline vec vadd(vec a, vec b) { return _mm512_add_ps(a, b); }
static inline float vsum(vec a) { return _mm512_reduce_add_ps(a); }
static inline vec vset(float v) { return _mm512_set1_ps(v); }
static inline void vstore(float *p, vec a) { _mm512_storeu_ps(p, a); }
/* LANES packed bytes at p: their low (high) nibbles minus 8 as floats. The table lookup reads only the low four
   bits of each lane, so the low nibbles need no mask. */
static inline __m512i vbytes(const uint8_t *p) { return _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)p)); }
static inline vec vnib(__m512i lanes) {
    return _mm512_permutexvar_ps(lanes, _mm512_setr_ps(-8, -7, -6, -5, -4, -3, -2, -1, 0, 1, 2, 3, 4, 5, 6, 7));
}
static inline vec vnib_lo(const uint8_t *p) { return vnib(vbytes(p)); }
static inline vec vnib_hi(const uint8_t *p) { return vnib(_mm512_srli_epi32(vbytes(p), 4)); }
#elif defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#define LANES 8
typedef __m256 vec;
static inline vec vzero(void) { return _mm256_setzero_ps(); }
static inline vec vload(const float *p) { return _mm256_loadu_ps(p); }
static inline vec vload_i8(const int8_t *p) {
    return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)p)));
}
static inline vec vload_bf16(const uint16_t *p) {
    __m256i wide = _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)p));
    return _mm256_castsi256_ps(_mm256_slli_epi32(wide, 16));
}
static inline vec vfma(vec a, vec b, vec c) { return _mm256_fmadd_ps(a, b, c); }
static inline vec vadd(vec a, vec b) { return _mm256_add_ps(a, b); }
static inline float vsum(vec a) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    return _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)));
}
static inline vec vset(float v) { return _mm256_set1_ps(v); }
static inline void vstore(float *p, vec a) { _mm256_storeu_ps(p, a); }
static inline __m256i vbytes(const uint8_t *p) { return _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)p)); }
static inline vec vnib(__m256i lanes) { /* the low four bits of each lane, minus 8, as floats */
    return _mm256_sub_ps(_mm256_cvtepi32_ps(_mm256_and_si256(lanes, _mm256_set1_epi32(15))), _mm256_set1_ps(8));
}
static inline vec vnib_lo(const uint8_t *p) { return vnib(vbytes(p)); }
static inline vec vnib_hi(const uint8_t *p) { return vnib(_mm256_srli_epi32(vbytes(p), 4)); }
#else /* any other CPU: the compiler's own vectorization of the scalar code */
#define LANES 1
typedef float vec;
static inline vec vzero(void) { return 0.f; }
static inline vec vload(const float *p) { return *p; }
static inline vec vload_i8(const int8_t *p) { return (float)*p; }
static inline float bf16_scalar(uint16_t v);
static inline vec vload_bf16(const uint16_t *p) { return bf16_scalar(*p); }
static inline vec vfma(vec a, vec b, vec c) { return a * b + c; }
static inline vec vadd(vec a, vec b) { return a + b; }
static inline float vsum(vec a) { return a; }
static inline vec vset(float v) { return v; }
static inline void vstore(float *p, vec a) { *p = a; }
static inline vec vnib_lo(const uint8_t *p) { return (float)(*p & 15) - 8.f; }
static inline vec vnib_hi(const uint8_t *p) { return (float)(*p >> 4) - 8.f; }
#endif

static inline float bf16_scalar(uint16_t v) {
    uint32_t bits = (uint32_t)v << 16;
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

static inline uint16_t bf16_round(float f) { /* round to nearest even, as torch's .to(torch.bfloat16) */
    uint32_t bits;
    memcpy(&bits, &f, 4);
    if ((bits & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((bits >> 16) | 64); /* NaN stays NaN */
    bits += 0x7fffu + ((bits >> 16) & 1u);
    return (uint16_t)(bits >> 16);
}

#define ROWS 4   /* output rows per block: four independent accumulators hide the FMA latency, x is loaded once */
#define MCHUNK 4 /* input rows per pass over a block (4 x 4 accumulators + 4 weights fit the vector registers) */

/* Dot products of ROWS weight rows (w, row stride K) with MC rows of xf (row stride K) into out[m * ROWS + r]: each
   weight is loaded once for all MC rows. Inlined with a constant MC so the accumulators stay in registers. */
#define DEFINE_BLOCK(NAME, WT, LOADW)                                                                          \
    static inline __attribute__((always_inline)) void NAME(const WT *w, const float *xf, int64_t K, int MC,     \
                                                           float *out) {                                        \
        vec acc[MCHUNK][ROWS];                                                                                 \
        _Pragma("GCC unroll 4") for (int m = 0; m < MC; ++m)                                                   \
            _Pragma("GCC unroll 4") for (int r = 0; r < ROWS; ++r) acc[m][r] = vzero();                        \
        int64_t k = 0;                                                                                         \
        for (; k + LANES <= K; k += LANES) {                                                                   \
            vec wv[ROWS];                                                                                      \
            _Pragma("GCC unroll 4") for (int r = 0; r < ROWS; ++r) wv[r] = LOADW(w + r * K + k);               \
            _Pragma("GCC unroll 4") for (int m = 0; m < MC; ++m) {                                             \
                vec xv = vload(xf + m * K + k);                                                                \
                _Pragma("GCC unroll 4") for (int r = 0; r < ROWS; ++r) acc[m][r] = vfma(wv[r], xv, acc[m][r]); \
            }                                                                                                  \
        }                                                                                                      \
        _Pragma("GCC unroll 4") for (int m = 0; m < MC; ++m)                                                   \
            _Pragma("GCC unroll 4") for (int r = 0; r < ROWS; ++r) {                                           \
                float s = vsum(acc[m][r]);                                                                     \
                for (int64_t t = k; t < K; ++t) s += LOADW##_scalar(w[r * K + t]) * xf[m * K + t];             \
                out[m * ROWS + r] = s;                                                                         \
            }                                                                                                  \
    }

static inline float vload_i8_scalar(int8_t v) { return (float)v; }
static inline float vload_bf16_scalar(uint16_t v) { return bf16_scalar(v); }
DEFINE_BLOCK(block_i8, int8_t, vload_i8)
DEFINE_BLOCK(block_bf16, uint16_t, vload_bf16)

/* One weight row against one row of x: a single sequential stream through memory (what the hardware prefetchers
   follow best: measured 30% faster than four rows at once for one row of x), four accumulators along k. */
#define DEFINE_ROW1(NAME, WT, LOADW)                                                                           \
    static inline float NAME(const WT *w, const float *xf, int64_t K) {                                        \
        vec a0 = vzero(), a1 = vzero(), a2 = vzero(), a3 = vzero();                                            \
        int64_t k = 0;                                                                                         \
        for (; k + 4 * LANES <= K; k += 4 * LANES) {                                                           \
            a0 = vfma(LOADW(w + k), vload(xf + k), a0);                                                        \
            a1 = vfma(LOADW(w + k + LANES), vload(xf + k + LANES), a1);                                        \
            a2 = vfma(LOADW(w + k + 2 * LANES), vload(xf + k + 2 * LANES), a2);                                \
            a3 = vfma(LOADW(w + k + 3 * LANES), vload(xf + k + 3 * LANES), a3);                                \
        }                                                                                                      \
        for (; k + LANES <= K; k += LANES) a0 = vfma(LOADW(w + k), vload(xf + k), a0);                         \
        float s = vsum(vadd(vadd(a0, a1), vadd(a2, a3)));                                                      \
        for (; k < K; ++k) s += LOADW##_scalar(w[k]) * xf[k];                                                  \
        return s;                                                                                              \
    }

DEFINE_ROW1(row1_i8, int8_t, vload_i8)
DEFINE_ROW1(row1_bf16, uint16_t, vload_bf16)

/* A float32 or bfloat16 (`bf16`) value of an array of either. */
static inline float value_at(const void *values, int bf16, int64_t index) {
    return bf16 ? bf16_scalar(((const uint16_t *)values)[index]) : ((const float *)values)[index];
}

/* One block of NR output rows starting at n, for every row of xf; results through scale and bias into y. */
#define DEFINE_ROWS(NAME, WT, BLOCK, ROW1)                                                                     \
    static void NAME(const WT *w, const float *xf, const void *scales, const void *bias, void *y, int bf16,   \
                     int64_t M, int64_t N, int64_t K, int64_t n, int NR) {                                     \
        float out[MCHUNK * ROWS];                                                                              \
        const WT *wn = w + n * K;                                                                              \
        for (int64_t m0 = 0; m0 < M; m0 += MCHUNK) {                                                           \
            int MC = M - m0 < MCHUNK ? (int)(M - m0) : MCHUNK;                                                \
            const float *xm = xf + m0 * K;                                                                     \
            if (M == 1 || NR < ROWS) {                                                                         \
                for (int m = 0; m < MC; ++m)                                                                   \
                    for (int r = 0; r < NR; ++r) out[m * ROWS + r] = ROW1(wn + r * K, xm + m * K, K);          \
            } else {                                                                                           \
                switch (MC) {                                                                                  \
                    case 1: BLOCK(wn, xm, K, 1, out); break;                                               \
                    case 2: BLOCK(wn, xm, K, 2, out); break;                                               \
                    case 3: BLOCK(wn, xm, K, 3, out); break;                                               \
                    default: BLOCK(wn, xm, K, MCHUNK, out);                                                    \
                }                                                                                              \
            }                                                                                                  \
            for (int m = 0; m < MC; ++m)                                                                       \
                for (int r = 0; r < NR; ++r) {                                                                 \
                    float v = out[m * ROWS + r] * (scales ? value_at(scales, bf16, n + r) : 1.f)               \
                              + (bias ? value_at(bias, bf16, n + r) : 0.f);                                    \
                    int64_t at = (m0 + m) * N + n + r;                                                         \
                    if (bf16) ((uint16_t *)y)[at] = bf16_round(v);                                             \
                    else ((float *)y)[at] = v;                                                                 \
                }                                                                                              \
        }                                                                                                      \
    }

DEFINE_ROWS(rows_i8, int8_t, block_i8, row1_i8)
DEFINE_ROWS(rows_bf16, uint16_t, block_bf16, row1_bf16)

/* x as float32: a copy when it is bfloat16 (M * K values, small next to the weights). NULL when out of memory. */
static const float *as_float(const void *x, int bf16, int64_t count, float **owned) {
    *owned = NULL;
    if (!bf16) return (const float *)x;
    float *xf = (float *)malloc((size_t)(count > 0 ? count : 1) * sizeof(float)); /* malloc(0) may be NULL */
    if (!xf) return NULL;
    for (int64_t i = 0; i < count; ++i) xf[i] = bf16_scalar(((const uint16_t *)x)[i]);
    *owned = xf;
    return xf;
}

/* int4 weights in PyTorch's packed layout for _weight_int4pack_mm_for_cpu (biogpt.kernels' Int4Linear; the layouts
   are those kernels.INT4_LAYOUTS names, of which this reads the "split" ones): blocks of B = 64 (AVX-512 torch) or
   32 (AVX2 torch) output rows, where input column k of a block is B/2 bytes whose byte j holds row j (low nibble)
   and row B/2 + j (high nibble); the last N % B rows form one block in which byte j of a column holds rows 2j (low)
   and 2j + 1 (high). W[n, k] = (q - 8) * scale[g, n] + zero[g, n] for the group g = k / group, scales_zeros laid out
   (K / group, N, 2). So y[n] = sum over groups of scale * sum_k (q - 8) x[k] + zero * sum_k x[k]. */
/* Rows n0 .. n0 + B - 1 of one block (`wb`: its K * B/2 bytes) for one row of x, into out[B]. */
#define DEFINE_INT4_BLOCK(NAME, B)                                                                             \
    static void NAME(const uint8_t *wb, const float *xf, const void *sz, int bf16, int64_t N, int64_t n0,      \
                     int64_t K, int64_t group, float *out) {                                                   \
        enum { VECS = (B) / LANES };                                                                           \
        vec total[VECS];                                                                                       \
        _Pragma("GCC unroll 8") for (int v = 0; v < VECS; ++v) total[v] = vzero();                             \
        float scale[B], zero[B];                                                                               \
        for (int64_t k0 = 0; k0 < K; k0 += group) {                                                            \
            vec acc[VECS];                                                                                     \
            _Pragma("GCC unroll 8") for (int v = 0; v < VECS; ++v) acc[v] = vzero();                           \
            float sum_x = 0.f;                                                                                 \
            for (int64_t k = k0; k < k0 + group; ++k) {                                                        \
                const uint8_t *p = wb + k * ((B) / 2);                                                         \
                vec xk = vset(xf[k]);                                                                          \
                sum_x += xf[k];                                                                                \
                _Pragma("GCC unroll 8") for (int v = 0; v < VECS / 2; ++v) {                                   \
                    acc[v] = vfma(vnib_lo(p + v * LANES), xk, acc[v]);                                         \
                    acc[v + VECS / 2] = vfma(vnib_hi(p + v * LANES), xk, acc[v + VECS / 2]);                   \
                }                                                                                              \
            }                                                                                                  \
            int64_t g = k0 / group;                                                                            \
            for (int r = 0; r < (B); ++r) {                                                                    \
                scale[r] = value_at(sz, bf16, (g * N + n0 + r) * 2);                                           \
                zero[r] = value_at(sz, bf16, (g * N + n0 + r) * 2 + 1) * sum_x;                                \
            }                                                                                                  \
            _Pragma("GCC unroll 8") for (int v = 0; v < VECS; ++v)                                             \
                total[v] = vadd(vfma(acc[v], vload(scale + v * LANES), total[v]), vload(zero + v * LANES));    \
        }                                                                                                      \
        _Pragma("GCC unroll 8") for (int v = 0; v < VECS; ++v) vstore(out + v * LANES, total[v]);              \
    }

DEFINE_INT4_BLOCK(int4_block64, 64)
DEFINE_INT4_BLOCK(int4_block32, 32)

/* The last N % B rows (pairs of rows per byte): plain scalar code, a small part of any matrix. */
static void int4_tail(const uint8_t *tail, const float *xf, const void *sz, int bf16, int64_t N, int64_t n0,
                      int64_t rows, int64_t K, int64_t group, float *out) {
    for (int64_t r = 0; r < rows; ++r) {
        float total = 0.f;
        for (int64_t k0 = 0; k0 < K; k0 += group) {
            float acc = 0.f, sum_x = 0.f;
            for (int64_t k = k0; k < k0 + group; ++k) {
                uint8_t byte = tail[k * (rows / 2) + r / 2];
                acc += (float)(((r & 1) ? byte >> 4 : byte & 15) - 8) * xf[k];
                sum_x += xf[k];
            }
            int64_t at = ((k0 / group) * N + n0 + r) * 2;
            total += acc * value_at(sz, bf16, at) + value_at(sz, bf16, at + 1) * sum_x;
        }
        out[r] = total;
    }
}

/* y (M, N) = x (M, K) @ W^T + bias, W int4 as above with `block` (64 or 32) rows per block; x, scales_zeros, bias
   and y float32 or bfloat16 (`bf16`). Returns 0, 1 when out of memory, 2 for another block size. */
int biogpt_int4_linear(const void *x, const uint8_t *w, const void *scales_zeros, const void *bias, void *y,
                       int bf16, int64_t M, int64_t N, int64_t K, int64_t group, int64_t block) {
    if (block != 64 && block != 32) return 2;
    float *owned;
    const float *xf = as_float(x, bf16, M * K, &owned);
    if (!xf) return 1;
    int64_t whole = N - N % block, blocks = whole / block + (N > whole ? 1 : 0);
#pragma omp parallel for schedule(static)
    for (int64_t b = 0; b < blocks; ++b) {
        int64_t n0 = b * block, rows = n0 < whole ? block : N - whole;
        float out[64];
        for (int64_t m = 0; m < M; ++m) {
            if (n0 >= whole) int4_tail(w + whole * K / 2, xf + m * K, scales_zeros, bf16, N, n0, rows, K, group, out);
            else if (block == 64) int4_block64(w + n0 * K / 2, xf + m * K, scales_zeros, bf16, N, n0, K, group, out);
            else int4_block32(w + n0 * K / 2, xf + m * K, scales_zeros, bf16, N, n0, K, group, out);
            for (int64_t r = 0; r < rows; ++r) {
                float v = out[r] + (bias ? value_at(bias, bf16, n0 + r) : 0.f);
                if (bf16) ((uint16_t *)y)[m * N + n0 + r] = bf16_round(v);
                else ((float *)y)[m * N + n0 + r] = v;
            }
        }
    }
    free(owned);
    return 0;
}

/* y (M, N) = x (M, K) @ (w (N, K) int8 * scales (N,))^T + bias (N,) or no bias when NULL. Returns 0, or 1 when
   out of memory. */
int biogpt_int8_linear(const void *x, const int8_t *w, const void *scales, const void *bias, void *y, int bf16,
                       int64_t M, int64_t N, int64_t K) {
    float *owned;
    const float *xf = as_float(x, bf16, M * K, &owned);
    if (!xf) return 1;
    int64_t blocks = (N + ROWS - 1) / ROWS;
#pragma omp parallel for schedule(static)
    for (int64_t b = 0; b < blocks; ++b) {
        int64_t n = b * ROWS;
        rows_i8(w, xf, scales, bias, y, bf16, M, N, K, n, N - n < ROWS ? (int)(N - n) : ROWS);
    }
    free(owned);
    return 0;
}

/* y (M, N) = x (M, K) @ w (N, K)^T + bias (N,) or no bias when NULL, all bfloat16. Returns 0, or 1 when out of
   memory. */
int biogpt_bf16_linear(const uint16_t *x, const uint16_t *w, const uint16_t *bias, uint16_t *y, int64_t M,
                       int64_t N, int64_t K) {
    float *owned;
    const float *xf = as_float(x, 1, M * K, &owned);
    if (!xf) return 1;
    int64_t blocks = (N + ROWS - 1) / ROWS;
#pragma omp parallel for schedule(static)
    for (int64_t b = 0; b < blocks; ++b) {
        int64_t n = b * ROWS;
        rows_bf16(w, xf, NULL, bias, y, 1, M, N, K, n, N - n < ROWS ? (int)(N - n) : ROWS);
    }
    free(owned);
    return 0;
}
