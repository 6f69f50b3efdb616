/* The decode step of BioGPT on a CPU: matrix-vector products, and whole decoder layers for one new token.

   Compiled on the user's machine by biogpt/native.py (gcc -O3 -march=native -fopenmp) and called through ctypes.
   A decode step reads every weight once for one row of x, so its speed is how fast the weights stream from
   memory: the products read each weight once per call whatever the number of rows (up to a few), turn it into
   float32 in registers and accumulate in float32. Weights (`Linear`): float32, bfloat16, int8 with one scale per
   output row (biogpt.kernels' Int8Linear), int4 in PyTorch's packed layout with a scale and a zero per group
   (Int4Linear). Everything else (x, scales, bias, LayerNorms, the key/value cache, y) is in the compute dtype:
   all float32 or all bfloat16 (`bf16` argument).

   `biogpt_decode_layers` runs every decoder layer of a decode step (one new token per sequence) in one call, its
   threads meeting at spinning barriers: in PyTorch the same step is ~400 operator calls and ~150 thread wake-ups,
   5-10 ms per token on two cores next to ~25 ms of weight streaming. It keeps activations in float32 and rounds
   them to bfloat16 wherever PyTorch's bfloat16 modules round their outputs, so it computes what the module code
   computes (up to the order of float32 sums). It runs on the OpenMP threads torch uses, as many as the caller says (see run_parallel).
*/
#include <math.h>
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
static inline vec vsub(vec a, vec b) { return _mm512_sub_ps(a, b); }
static inline vec vmul(vec a, vec b) { return _mm512_mul_ps(a, b); }
static inline vec vdiv(vec a, vec b) { return _mm512_div_ps(a, b); }
static inline vec vmax(vec a, vec b) { return _mm512_max_ps(a, b); }
static inline vec vmin(vec a, vec b) { return _mm512_min_ps(a, b); }
static inline vec vabs(vec a) { return _mm512_abs_ps(a); }
static inline vec vround(vec a) { return _mm512_roundscale_ps(a, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC); }
static inline vec vldexp(vec a, vec n) { return _mm512_scalef_ps(a, n); } /* a * 2^n, n integral */
static inline vec vzero_below(vec x, vec limit, vec a) { /* a, or 0 where x < limit */
    return _mm512_maskz_mov_ps(_mm512_cmp_ps_mask(x, limit, _CMP_NLT_UQ), a);
}
static inline vec vcopysign(vec magnitude, vec sign) {
    const __m512i mask = _mm512_set1_epi32(0x7fffffff);
    return _mm512_castsi512_ps(_mm512_ternarylogic_epi32(mask, _mm512_castps_si512(magnitude),
                                                         _mm512_castps_si512(sign), 0xca)); /* mask ? m : s */
}
static inline __m512i vbf16_bits(vec a) { /* bf16_round's bits in each lane's high half */
    const __m512i bits = _mm512_castps_si512(a);
    __m512i rounded = _mm512_add_epi32(bits, _mm512_add_epi32(_mm512_set1_epi32(0x7fff),
                                       _mm512_and_si512(_mm512_srli_epi32(bits, 16), _mm512_set1_epi32(1))));
    return _mm512_mask_mov_epi32(rounded, _mm512_cmp_ps_mask(a, a, _CMP_UNORD_Q), _mm512_set1_epi32(0x7fc00000));
}
static inline vec vbf16_rounded(vec a) { /* bf16_rounded, LANES at a time */
    return _mm512_castsi512_ps(_mm512_and_si512(vbf16_bits(a), _mm512_set1_epi32((int)0xffff0000u)));
}
/* LANES floats as bfloat16 at p, rounded to nearest even like bf16_round (a NaN stays a NaN). */
static inline void vstore_bf16(uint16_t *p, vec a) {
    _mm256_storeu_si256((__m256i *)p, _mm512_cvtepi32_epi16(_mm512_srli_epi32(vbf16_bits(a), 16)));
}
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
static inline vec vsub(vec a, vec b) { return _mm256_sub_ps(a, b); }
static inline vec vmul(vec a, vec b) { return _mm256_mul_ps(a, b); }
static inline vec vdiv(vec a, vec b) { return _mm256_div_ps(a, b); }
static inline vec vmax(vec a, vec b) { return _mm256_max_ps(a, b); }
static inline vec vmin(vec a, vec b) { return _mm256_min_ps(a, b); }
static inline vec vabs(vec a) { return _mm256_andnot_ps(_mm256_set1_ps(-0.f), a); }
static inline vec vround(vec a) { return _mm256_round_ps(a, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC); }
static inline vec vldexp(vec a, vec n) { /* a * 2^n, n integral in [-126, 127] */
    return _mm256_mul_ps(a, _mm256_castsi256_ps(_mm256_slli_epi32(
                                _mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23)));
}
static inline vec vzero_below(vec x, vec limit, vec a) { return _mm256_and_ps(a, _mm256_cmp_ps(x, limit, _CMP_NLT_UQ)); }
static inline vec vcopysign(vec magnitude, vec sign) {
    const vec bit = _mm256_set1_ps(-0.f);
    return _mm256_or_ps(_mm256_andnot_ps(bit, magnitude), _mm256_and_ps(bit, sign));
}
static inline __m256i vbf16_bits(vec a) {
    const __m256i bits = _mm256_castps_si256(a);
    __m256i rounded = _mm256_add_epi32(bits, _mm256_add_epi32(_mm256_set1_epi32(0x7fff),
                                       _mm256_and_si256(_mm256_srli_epi32(bits, 16), _mm256_set1_epi32(1))));
    return _mm256_blendv_epi8(rounded, _mm256_set1_epi32(0x7fc00000),
                              _mm256_castps_si256(_mm256_cmp_ps(a, a, _CMP_UNORD_Q)));
}
static inline vec vbf16_rounded(vec a) {
    return _mm256_castsi256_ps(_mm256_and_si256(vbf16_bits(a), _mm256_set1_epi32((int)0xffff0000u)));
}
static inline void vstore_bf16(uint16_t *p, vec a) {
    const __m256i high = _mm256_srli_epi32(vbf16_bits(a), 16);
    _mm_storeu_si128((__m128i *)p, _mm_packus_epi32(_mm256_castsi256_si128(high), _mm256_extracti128_si256(high, 1)));
}
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
static inline vec vsub(vec a, vec b) { return a - b; }
static inline vec vmul(vec a, vec b) { return a * b; }
static inline vec vdiv(vec a, vec b) { return a / b; }
static inline vec vmax(vec a, vec b) { return a > b ? a : b; }
static inline vec vmin(vec a, vec b) { return a < b ? a : b; }
static inline vec vabs(vec a) { return fabsf(a); }
static inline vec vround(vec a) { return nearbyintf(a); }
static inline vec vldexp(vec a, vec n) { return ldexpf(a, (int)n); }
static inline vec vzero_below(vec x, vec limit, vec a) { return x < limit ? 0.f : a; }
static inline vec vcopysign(vec magnitude, vec sign) { return copysignf(magnitude, sign); }
static inline uint16_t bf16_round(float f);
static inline float bf16_rounded(float f);
static inline vec vbf16_rounded(vec a) { return bf16_rounded(a); }
static inline void vstore_bf16(uint16_t *p, vec a) { *p = bf16_round(a); }
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

static inline float bf16_rounded(float f) { return bf16_scalar(bf16_round(f)); }

/* A float32 or bfloat16 (`bf16`) value of an array of either. */
static inline float value_at(const void *values, int bf16, int64_t index) {
    return bf16 ? bf16_scalar(((const uint16_t *)values)[index]) : ((const float *)values)[index];
}

static inline void store_at(void *values, int bf16, int64_t index, float v) {
    if (bf16) ((uint16_t *)values)[index] = bf16_round(v);
    else ((float *)values)[index] = v;
}

/* LANES values of a float32 or bfloat16 array from `index`. */
static inline vec vload_at(const void *values, int bf16, int64_t index) {
    return bf16 ? vload_bf16((const uint16_t *)values + index) : vload((const float *)values + index);
}

/* e^x, LANES at a time, within 1 ulp of expf (Cephes' range reduction by ln 2 in two parts, then the Taylor series
   of e^r, |r| <= ln 2 / 2, to r^7); 0 below -87.3 (e^-87.3 ~ 1e-38: a masked attention score, erf's far tails). */
static inline vec vexp(vec x) {
    const vec low = vset(-87.33654f);
    const vec c = vmin(vmax(x, low), vset(88.37626f));
    const vec n = vround(vmul(c, vset(1.44269504088896341f)));
    vec r = vfma(n, vset(-0.693359375f), c);
    r = vfma(n, vset(2.12194440e-4f), r);
    vec e = vset(1.f / 5040.f);
    e = vfma(e, r, vset(1.f / 720.f));
    e = vfma(e, r, vset(1.f / 120.f));
    e = vfma(e, r, vset(1.f / 24.f));
    e = vfma(e, r, vset(1.f / 6.f));
    e = vfma(e, r, vset(0.5f));
    e = vfma(e, r, vset(1.f));
    e = vfma(e, r, vset(1.f));
    return vzero_below(x, low, vldexp(e, n));
}

/* GELU(x) = x/2 (1 + erf(x / sqrt 2)), the exact (erf) form BioGPT was trained with, LANES at a time: erf by
   Abramowitz and Stegun 7.1.26 (absolute error below 1.5e-7; this GELU measured within 5e-7 of float64's over
   [-10, 10], half a float32 step at 10). The scalar finish below uses the C library's erff for the few outputs past
   the last whole vector. */
static inline vec vgelu(vec x) {
    const vec z = vmul(x, vset(0.70710678118654752f)), a = vabs(z);
    const vec t = vdiv(vset(1.f), vfma(vset(0.3275911f), a, vset(1.f)));
    vec poly = vfma(vset(1.061405429f), t, vset(-1.453152027f));
    poly = vfma(poly, t, vset(1.421413741f));
    poly = vfma(poly, t, vset(-0.284496736f));
    poly = vfma(poly, t, vset(0.254829592f));
    const vec erf = vcopysign(vsub(vset(1.f), vmul(vmul(poly, t), vexp(vmul(vsub(vzero(), a), a)))), z);
    return vmul(vmul(vset(0.5f), x), vadd(vset(1.f), erf));
}

enum { KIND_F32 = 0, KIND_BF16 = 1, KIND_I8 = 2, KIND_I4 = 3 };
enum { ACT_NONE = 0, ACT_GELU = 1 };

/* One linear layer y = x W^T + bias (native.py's `_Linear`). */
typedef struct {
    int64_t kind;        /* KIND_* */
    const void *weight;  /* (N, K) float32 / bfloat16 / int8, or int4 packed (see int4 below) */
    const void *scales;  /* int8: (N,); int4: scales and zeros (K / group, N, 2); else NULL */
    const void *bias;    /* (N,) or NULL */
    int64_t N, K;
    int64_t group, block; /* int4 only: input columns per scale, output rows per packed block */
} Linear;

#define ROWS 4   /* output rows per block: four independent accumulators hide the FMA latency, x is loaded once */
#define MCHUNK 4 /* input rows per pass over a block (4 x 4 accumulators + 4 weights fit the vector registers) */
/* With AVX-512, for a multiple of 8 rows of x (a full batch of the batching engine's decode steps): blocks of 3
   weight rows, 8 rows of x per pass (3 x 8 accumulators + 3 weights fit the 32 vector registers), so each weight is
   loaded, and an int8 one converted, once for 8 rows instead of twice. 8 rows: float32 products 25% faster, int8
   20%, bf16 even; 4 rows: slower than 4 x 4. Other row counts keep 4 x 4 (a shape per remainder would triple the
   compile time), and so does AVX2 (16 registers: the same blocks spilled, 8-row float32 products 1.8x slower). */
#define WIDE_ROWS 3
#define WIDE_MCHUNK 8

/* Output rows per block for M rows of x. */
#if defined(__AVX512F__)
static inline int block_rows(int64_t M) { return M % WIDE_MCHUNK == 0 ? WIDE_ROWS : ROWS; }
#else
static inline int block_rows(int64_t M) { (void)M; return ROWS; }
#endif

/* The products come in two flavours from the same macros: float32 x (weights widened to float32, one FMA per
   weight and row), and, on CPUs with AVX-512 BF16 and for bfloat16 activations, bfloat16 x (weights as bfloat16
   pairs, one VDPBF16PS per 32 weights and row: exact products, float32 sums; bfloat16 weights need no conversion and
   int8 ones convert exactly). STEP weights per step, LOADW / LOADX the weight / x vectors, MAC the accumulation. */
static inline vec vmac(vec acc, vec w, vec x) { return vfma(w, x, acc); }
static inline float vload_scalar(float v) { return v; }
static inline float vload_i8_scalar(int8_t v) { return (float)v; }
static inline float vload_bf16_scalar(uint16_t v) { return bf16_scalar(v); }
#if defined(__AVX512BF16__) && defined(__AVX512F__)
#define HAVE_PAIRS 1
static inline __m512bh pload_bf16(const uint16_t *p) { return (__m512bh)_mm512_loadu_si512((const void *)p); }
static inline __m512bh pload_i8(const int8_t *p) {
    __m512 lo = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)p)));
    __m512 hi = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)(p + 16))));
    return _mm512_cvtne2ps_pbh(hi, lo); /* integers up to 127 are exact in bfloat16 */
}
static inline __m512 pmac(__m512 acc, __m512bh w, __m512bh x) { return _mm512_dpbf16_ps(acc, w, x); }
static inline float pload_bf16_scalar(uint16_t v) { return bf16_scalar(v); }
static inline float pload_i8_scalar(int8_t v) { return (float)v; }
#else
#define HAVE_PAIRS 0
#endif

/* Dot products of R weight rows (w, row stride K) with MC rows of x (row stride K) into out[m * R + r]: each weight
   is loaded once for all MC rows. Inlined with constant R and MC so the accumulators stay in registers. The block
   after next is prefetched into L2 as this one is read: with several rows of x a block is bound by arithmetic, and
   the hardware prefetchers alone left memory and arithmetic taking turns (8 rows of bfloat16: 1.4x faster with the
   next block prefetched into L1, 1.3x faster again with the one after next into L2, the level whose miss buffers
   can hold that many lines in flight; a prefetch past the last row is harmless, it never faults). */
#define DEFINE_BLOCK(NAME, WT, XT, STEP, LOADW, LOADX, MAC)                                                    \
    static inline __attribute__((always_inline)) void NAME(const WT *w, const XT *x, int64_t K, int R, int MC, \
                                                           float *out) {                                        \
        vec acc[WIDE_MCHUNK][ROWS];                                                                            \
        _Pragma("GCC unroll 8") for (int m = 0; m < MC; ++m)                                                   \
            _Pragma("GCC unroll 4") for (int r = 0; r < R; ++r) acc[m][r] = vzero();                           \
        int64_t k = 0;                                                                                         \
        for (; k + (STEP) <= K; k += (STEP)) {                                                                 \
            __typeof__(LOADW(w)) wv[ROWS];                                                                     \
            _Pragma("GCC unroll 4") for (int r = 0; r < R; ++r) wv[r] = LOADW(w + r * K + k);                  \
            _Pragma("GCC unroll 4") for (int r = 0; r < R; ++r) __builtin_prefetch(w + (2 * R + r) * K + k, 0, 2); \
            _Pragma("GCC unroll 8") for (int m = 0; m < MC; ++m) {                                             \
                __typeof__(LOADX(x)) xv = LOADX(x + m * K + k);                                                \
                _Pragma("GCC unroll 4") for (int r = 0; r < R; ++r) acc[m][r] = MAC(acc[m][r], wv[r], xv);     \
            }                                                                                                  \
        }                                                                                                      \
        _Pragma("GCC unroll 8") for (int m = 0; m < MC; ++m)                                                   \
            _Pragma("GCC unroll 4") for (int r = 0; r < R; ++r) {                                              \
                float s = vsum(acc[m][r]);                                                                     \
                for (int64_t t = k; t < K; ++t) s += LOADW##_scalar(w[r * K + t]) * LOADX##_scalar(x[m * K + t]); \
                out[m * R + r] = s;                                                                            \
            }                                                                                                  \
    }

/* One weight row against one row of x: a sequential stream through memory, four accumulators along k. The lines
   STREAM_AHEAD bytes ahead are asked into L2 as it goes (as in the int4 blocks below, also one stream each): the
   prefetchers alone kept too few lines in flight (bfloat16 decoding 5-14% faster, float32 4-8%; into L1 instead, or
   8-16 KB ahead, was slower). */
#define STREAM_AHEAD 4096
#define DEFINE_ROW1(NAME, WT, XT, STEP, LOADW, LOADX, MAC)                                                     \
    static inline float NAME(const WT *w, const XT *x, int64_t K) {                                            \
        vec a0 = vzero(), a1 = vzero(), a2 = vzero(), a3 = vzero();                                            \
        int64_t k = 0;                                                                                         \
        for (; k + 4 * (STEP) <= K; k += 4 * (STEP)) {                                                         \
            a0 = MAC(a0, LOADW(w + k), LOADX(x + k));                                                          \
            a1 = MAC(a1, LOADW(w + k + (STEP)), LOADX(x + k + (STEP)));                                        \
            a2 = MAC(a2, LOADW(w + k + 2 * (STEP)), LOADX(x + k + 2 * (STEP)));                                \
            a3 = MAC(a3, LOADW(w + k + 3 * (STEP)), LOADX(x + k + 3 * (STEP)));                                \
            for (int64_t b = 0; b < 4 * (STEP) * (int64_t)sizeof(WT); b += 64)                                   \
                __builtin_prefetch((const char *)(w + k) + STREAM_AHEAD + b, 0, 2);                            \
        }                                                                                                      \
        for (; k + (STEP) <= K; k += (STEP)) a0 = MAC(a0, LOADW(w + k), LOADX(x + k));                         \
        float s = vsum(vadd(vadd(a0, a1), vadd(a2, a3)));                                                      \
        for (; k < K; ++k) s += LOADW##_scalar(w[k]) * LOADX##_scalar(x[k]);                                   \
        return s;                                                                                              \
    }

/* Two weight rows far apart (`w`, `v`) against one row of x, side by side: two streams through memory in flight
   per core where one row at a time keeps one. Four accumulators per row along k, in ROW1's order, so a row's sum is
   the same bits whichever of the two computes it. With every thread's rows in two such streams, one-row bfloat16
   decode steps took 0.84-0.95x the time of one stream (two builds alternated, median of 100 pairs of steps; the
   least where the memory was fastest: one stream per core reached ~42 GB/s of the ~57 a plain read did), with the
   prefetches STREAM2_AHEAD bytes ahead in each (4 KB in each gained nothing). */
#define STREAM2_AHEAD 2048
#define DEFINE_ROW2(NAME, WT, XT, STEP, LOADW, LOADX, MAC)                                                     \
    static inline void NAME(const WT *w, const WT *v, const XT *x, int64_t K, float *sum_w, float *sum_v) {   \
        vec a0 = vzero(), a1 = vzero(), a2 = vzero(), a3 = vzero();                                            \
        vec b0 = vzero(), b1 = vzero(), b2 = vzero(), b3 = vzero();                                            \
        int64_t k = 0;                                                                                         \
        for (; k + 4 * (STEP) <= K; k += 4 * (STEP)) {                                                         \
            __typeof__(LOADX(x)) x0 = LOADX(x + k), x1 = LOADX(x + k + (STEP));                                \
            a0 = MAC(a0, LOADW(w + k), x0);                                                                    \
            b0 = MAC(b0, LOADW(v + k), x0);                                                                    \
            a1 = MAC(a1, LOADW(w + k + (STEP)), x1);                                                           \
            b1 = MAC(b1, LOADW(v + k + (STEP)), x1);                                                           \
            x0 = LOADX(x + k + 2 * (STEP));                                                                    \
            x1 = LOADX(x + k + 3 * (STEP));                                                                    \
            a2 = MAC(a2, LOADW(w + k + 2 * (STEP)), x0);                                                       \
            b2 = MAC(b2, LOADW(v + k + 2 * (STEP)), x0);                                                       \
            a3 = MAC(a3, LOADW(w + k + 3 * (STEP)), x1);                                                       \
            b3 = MAC(b3, LOADW(v + k + 3 * (STEP)), x1);                                                       \
            for (int64_t b = 0; b < 4 * (STEP) * (int64_t)sizeof(WT); b += 64) {                                 \
                __builtin_prefetch((const char *)(w + k) + STREAM2_AHEAD + b, 0, 2);                           \
                __builtin_prefetch((const char *)(v + k) + STREAM2_AHEAD + b, 0, 2);                           \
            }                                                                                                  \
        }                                                                                                      \
        for (; k + (STEP) <= K; k += (STEP)) {                                                                 \
            a0 = MAC(a0, LOADW(w + k), LOADX(x + k));                                                          \
            b0 = MAC(b0, LOADW(v + k), LOADX(x + k));                                                          \
        }                                                                                                      \
        float s = vsum(vadd(vadd(a0, a1), vadd(a2, a3))), t = vsum(vadd(vadd(b0, b1), vadd(b2, b3)));          \
        for (; k < K; ++k) {                                                                                   \
            s += LOADW##_scalar(w[k]) * LOADX##_scalar(x[k]);                                                  \
            t += LOADW##_scalar(v[k]) * LOADX##_scalar(x[k]);                                                  \
        }                                                                                                      \
        *sum_w = s;                                                                                            \
        *sum_v = t;                                                                                            \
    }

/* The sums of output rows n0 .. n1 - 1 for one row of x: the first half's rows beside the second half's (ROW2),
   the odd row out alone (ROW1). */
#define DEFINE_ONE_ROW(NAME, WT, XT, ROW1, ROW2)                                                               \
    static void NAME(const Linear *L, const XT *x, float *y, int64_t n0, int64_t n1) {                        \
        const int64_t K = L->K, half = (n1 - n0) / 2;                                                          \
        const WT *w = (const WT *)L->weight;                                                                   \
        for (int64_t n = n0; n < n0 + half; ++n) ROW2(w + n * K, w + (n + half) * K, x, K, y + n, y + n + half); \
        if ((n1 - n0) % 2) y[n1 - 1] = ROW1(w + (n1 - 1) * K, x, K);                                           \
    }

/* What becomes of a product's sum for output row n: times the int8 row scale, plus the bias, rounded to bfloat16
   as PyTorch rounds a linear's output; then the activation, rounded again (PyTorch runs it on that output).
   `epilogue` does it LANES outputs at a time; this is its scalar tail. */
static inline float finish(const Linear *L, int bf16, int act, int64_t n, float sum) {
    float v = sum * (L->kind == KIND_I8 ? value_at(L->scales, bf16, n) : 1.f)
              + (L->bias ? value_at(L->bias, bf16, n) : 0.f);
    if (bf16) v = bf16_rounded(v);
    if (act == ACT_GELU) { /* exact (erf) GELU, as the checkpoints were trained */
        v = 0.5f * v * (1.f + erff(v * 0.70710678118654752f));
        if (bf16) v = bf16_rounded(v);
    }
    return v;
}

/* finish for outputs n0 .. n1 - 1 of one row of y (the products' sums, in place), and into yb as bfloat16 too
   unless it is NULL. Once per product after its sums: the erf of every GELU output one at a time cost 0.4 ms of a
   20 ms decode step, 4 ms of an 8-row one. */
static void epilogue(const Linear *L, int bf16, int act, float *y, uint16_t *yb, int64_t n0, int64_t n1) {
    int64_t n = n0;
    for (; n + LANES <= n1; n += LANES) {
        vec v = vload(y + n);
        if (L->kind == KIND_I8) v = vmul(v, vload_at(L->scales, bf16, n));
        if (L->bias) v = vadd(v, vload_at(L->bias, bf16, n));
        if (bf16) v = vbf16_rounded(v);
        if (act == ACT_GELU) {
            v = vgelu(v);
            if (bf16) v = vbf16_rounded(v);
        }
        vstore(y + n, v);
        if (yb) vstore_bf16(yb + n, v);
    }
    for (; n < n1; ++n) {
        y[n] = finish(L, bf16, act, n, y[n]);
        if (yb) yb[n] = bf16_round(y[n]);
    }
}

/* The sums of output rows n .. n + NR - 1 (NR <= block_rows(M)) for every row of x (M rows, stride K) into y (M rows,
   stride N), in passes of MCHUNK rows of x over a block (WIDE_MCHUNK where block_rows(M) is WIDE_ROWS). */
#define DEFINE_ROWS(NAME, WT, XT, BLOCK, ROW1)                                                                 \
    static void NAME(const Linear *L, const XT *x, float *y, int64_t M, int64_t n, int NR) {                   \
        float out[WIDE_MCHUNK * ROWS];                                                                         \
        const int64_t K = L->K, N = L->N;                                                                      \
        const int R = block_rows(M);                                                                           \
        const WT *wn = (const WT *)L->weight + n * K;                                                          \
        const int64_t chunk = R == WIDE_ROWS ? WIDE_MCHUNK : MCHUNK;                                          \
        for (int64_t m0 = 0; m0 < M; m0 += chunk) {                                                            \
            int MC = M - m0 < chunk ? (int)(M - m0) : (int)chunk;                                              \
            const XT *xm = x + m0 * K;                                                                         \
            if (M == 1 || NR < R) {                                                                            \
                for (int m = 0; m < MC; ++m)                                                                   \
                    for (int r = 0; r < NR; ++r) out[m * R + r] = ROW1(wn + r * K, xm + m * K, K);             \
            } else if (R == WIDE_ROWS) {                                                                       \
                BLOCK(wn, xm, K, WIDE_ROWS, WIDE_MCHUNK, out);                                                 \
            } else {                                                                                           \
                switch (MC) {                                                                                  \
                    case 1: BLOCK(wn, xm, K, ROWS, 1, out); break;                                             \
                    case 2: BLOCK(wn, xm, K, ROWS, 2, out); break;                                             \
                    case 3: BLOCK(wn, xm, K, ROWS, 3, out); break;                                             \
                    default: BLOCK(wn, xm, K, ROWS, MCHUNK, out);                                              \
                }                                                                                              \
            }                                                                                                  \
            for (int m = 0; m < MC; ++m)                                                                       \
                for (int r = 0; r < NR; ++r)                                                                   \
                    y[(m0 + m) * N + n + r] = out[m * R + r];                                                   \
        }                                                                                                      \
    }

#define DEFINE_PRODUCTS(SUFFIX, WT, XT, STEP, LOADW, LOADX, MAC)                                              \
    DEFINE_BLOCK(block_##SUFFIX, WT, XT, STEP, LOADW, LOADX, MAC)                                              \
    DEFINE_ROW1(row1_##SUFFIX, WT, XT, STEP, LOADW, LOADX, MAC)                                                \
    DEFINE_ROW2(row2_##SUFFIX, WT, XT, STEP, LOADW, LOADX, MAC)                                                \
    DEFINE_ONE_ROW(one_row_##SUFFIX, WT, XT, row1_##SUFFIX, row2_##SUFFIX)                                     \
    DEFINE_ROWS(rows_##SUFFIX, WT, XT, block_##SUFFIX, row1_##SUFFIX)

DEFINE_PRODUCTS(f32, float, float, LANES, vload, vload, vmac)
DEFINE_PRODUCTS(i8, int8_t, float, LANES, vload_i8, vload, vmac)
DEFINE_PRODUCTS(bf16, uint16_t, float, LANES, vload_bf16, vload, vmac)
#if HAVE_PAIRS
DEFINE_PRODUCTS(i8_pairs, int8_t, uint16_t, 32, pload_i8, pload_bf16, pmac)
DEFINE_PRODUCTS(bf16_pairs, uint16_t, uint16_t, 32, pload_bf16, pload_bf16, pmac)
#endif

/* int4 weights in PyTorch's packed layout for _weight_int4pack_mm_for_cpu (biogpt.kernels' Int4Linear; the layouts
   are those kernels.INT4_LAYOUTS names, of which this reads the "split" ones): blocks of B = 64 (AVX-512 torch) or
   32 (AVX2 torch) output rows, where input column k of a block is B/2 bytes whose byte j holds row j (low nibble)
   and row B/2 + j (high nibble); the last N % B rows form one block in which byte j of a column holds rows 2j (low)
   and 2j + 1 (high). W[n, k] = (q - 8) * scale[g, n] + zero[g, n] for the group g = k / group, scales_zeros laid out
   (K / group, N, 2). So y[n] = sum over groups of scale * sum_k (q - 8) x[k] + zero * sum_k x[k]. */
/* Each group's scales and zeros are a short read far from the last one ((K / group, N, 2) layout), which the
   hardware prefetchers do not foresee: a miss at the end of every group stalled the int4 products (one thread: 10.6
   GB/s of int4 weights where the arithmetic alone runs at 24). So each group asks for the next one's (the next
   block's first group after the last) while it computes. */
static inline void prefetch_scales(const void *sz, int bf16, int64_t N, int64_t n0, int64_t rows, int64_t g,
                                   int64_t groups) {
    const int64_t next = g + 1 < groups ? (g + 1) * N + n0 : n0 + rows, size = bf16 ? 2 : 4;
    const char *at = (const char *)sz + next * 2 * size;
    for (int64_t offset = 0; offset < rows * 2 * size; offset += 64) __builtin_prefetch(at + offset);
}

/* The scales of rows n0 .. n0 + rows - 1 in group g, and their zeros times `zero_factor` (a group's sum of x in the
   products, 1 when unpacking). */
static inline void group_scales(const void *sz, int bf16, int64_t N, int64_t n0, int64_t rows, int64_t g,
                                float zero_factor, float *scale, float *zero) {
    for (int64_t r = 0; r < rows; ++r) {
        scale[r] = value_at(sz, bf16, (g * N + n0 + r) * 2);
        zero[r] = value_at(sz, bf16, (g * N + n0 + r) * 2 + 1) * zero_factor;
    }
}

/* Rows n0 .. n0 + B - 1 of one block (`wb`: its K * B/2 bytes) for one row of x, into out[B]. */
#define DEFINE_INT4_BLOCK(NAME, B)                                                                             \
    static void NAME(const uint8_t *wb, const float *xf, const void *sz, int bf16, int64_t N, int64_t n0,      \
                     int64_t K, int64_t group, float *out) {                                                   \
        enum { VECS = (B) / LANES };                                                                           \
        vec total[VECS];                                                                                       \
        _Pragma("GCC unroll 8") for (int v = 0; v < VECS; ++v) total[v] = vzero();                             \
        float scale[B], zero[B];                                                                               \
        for (int64_t k0 = 0; k0 < K; k0 += group) {                                                            \
            prefetch_scales(sz, bf16, N, n0, (B), k0 / group, K / group);                                      \
            vec acc[VECS];                                                                                     \
            _Pragma("GCC unroll 8") for (int v = 0; v < VECS; ++v) acc[v] = vzero();                           \
            float sum_x = 0.f;                                                                                 \
            for (int64_t k = k0; k < k0 + group; ++k) {                                                        \
                const uint8_t *p = wb + k * ((B) / 2);                                                         \
                __builtin_prefetch(p + STREAM_AHEAD, 0, 2);                                                      \
                vec xk = vset(xf[k]);                                                                          \
                sum_x += xf[k];                                                                                \
                _Pragma("GCC unroll 8") for (int v = 0; v < VECS / 2; ++v) {                                   \
                    acc[v] = vfma(vnib_lo(p + v * LANES), xk, acc[v]);                                         \
                    acc[v + VECS / 2] = vfma(vnib_hi(p + v * LANES), xk, acc[v + VECS / 2]);                   \
                }                                                                                              \
            }                                                                                                  \
            group_scales(sz, bf16, N, n0, (B), k0 / group, sum_x, scale, zero);                                \
            _Pragma("GCC unroll 8") for (int v = 0; v < VECS; ++v)                                             \
                total[v] = vadd(vfma(acc[v], vload(scale + v * LANES), total[v]), vload(zero + v * LANES));    \
        }                                                                                                      \
        _Pragma("GCC unroll 8") for (int v = 0; v < VECS; ++v) vstore(out + v * LANES, total[v]);              \
    }

DEFINE_INT4_BLOCK(int4_block64, 64)
DEFINE_INT4_BLOCK(int4_block32, 32)

#if HAVE_PAIRS && defined(__AVX512VBMI__)
#define HAVE_INT4_PAIRS 1
/* The 64-row block on bfloat16 pairs (bfloat16 activations, CPUs with AVX-512 BF16 and VBMI): two input columns per
   step, 64 bytes holding both columns' nibbles; a masked byte permutation (VPERMB) sets each nibble in a 16-bit lane
   next to the same row's nibble of the other column, a word lookup (VPERMW, low five bits) makes it the exact bfloat16
   of q - 8, and one VDPBF16PS per 16 rows multiplies the pairs with x's pair. Four vector operations per 32 weights
   where the float32 block above needs eight: that block is bound by its arithmetic, not by memory. */
static void int4_pairs_block64(const uint8_t *wb, const uint16_t *xb, const float *xf, const void *sz, int bf16,
                               int64_t N, int64_t n0, int64_t K, int64_t group, float *out) {
    static const uint16_t q_minus_8[32] = { /* bfloat16 bits of -8 .. 7, twice (index bit 4 is the next nibble's) */
        0xC100, 0xC0E0, 0xC0C0, 0xC0A0, 0xC080, 0xC040, 0xC000, 0xBF80, 0x0000, 0x3F80, 0x4000, 0x4040, 0x4080,
        0x40A0, 0x40C0, 0x40E0, 0xC100, 0xC0E0, 0xC0C0, 0xC0A0, 0xC080, 0xC040, 0xC000, 0xBF80, 0x0000, 0x3F80,
        0x4000, 0x4040, 0x4080, 0x40A0, 0x40C0, 0x40E0};
    /* pick[h]: for rows 16h + r (r < 16), word 2r takes byte 16h + r (column k), word 2r + 1 byte 32 + 16h + r
       (column k + 1); the words' high bytes are masked to zero */
    uint8_t pick[2][64];
    for (int h = 0; h < 2; ++h)
        for (int w = 0; w < 32; ++w) {
            pick[h][2 * w] = (uint8_t)((w & 1) * 32 + 16 * h + w / 2);
            pick[h][2 * w + 1] = 0;
        }
    const __m512i table = _mm512_loadu_si512((const void *)q_minus_8);
    const __m512i pick0 = _mm512_loadu_si512((const void *)pick[0]), pick1 = _mm512_loadu_si512((const void *)pick[1]);
    const __mmask64 low_bytes = 0x5555555555555555ULL;
    __m512 total[4];
    for (int v = 0; v < 4; ++v) total[v] = _mm512_setzero_ps();
    float scale[64], zero[64];
    for (int64_t k0 = 0; k0 < K; k0 += group) {
        prefetch_scales(sz, bf16, N, n0, 64, k0 / group, K / group);
        __m512 acc[4];
        for (int v = 0; v < 4; ++v) acc[v] = _mm512_setzero_ps();
        float sum_x = 0.f;
        for (int64_t k = k0; k < k0 + group; k += 2) {
            const __m512i lo = _mm512_loadu_si512((const void *)(wb + k * 32)); /* rows 0..31: low nibbles */
            __builtin_prefetch(wb + k * 32 + STREAM_AHEAD, 0, 2);
            const __m512i hi = _mm512_srli_epi16(lo, 4);                       /* rows 32..63: high nibbles */
            uint32_t pair;
            memcpy(&pair, xb + k, sizeof pair);
            const __m512bh xv = (__m512bh)_mm512_set1_epi32((int)pair);
            sum_x += xf[k] + xf[k + 1];
#define INT4_PAIRS(V, BYTES, PICK) \
    acc[V] = _mm512_dpbf16_ps(acc[V], \
        (__m512bh)_mm512_permutexvar_epi16(_mm512_maskz_permutexvar_epi8(low_bytes, PICK, BYTES), table), xv)
            INT4_PAIRS(0, lo, pick0);
            INT4_PAIRS(1, lo, pick1);
            INT4_PAIRS(2, hi, pick0);
            INT4_PAIRS(3, hi, pick1);
#undef INT4_PAIRS
        }
        group_scales(sz, bf16, N, n0, 64, k0 / group, sum_x, scale, zero);
        for (int v = 0; v < 4; ++v)
            total[v] = _mm512_add_ps(_mm512_fmadd_ps(acc[v], _mm512_loadu_ps(scale + 16 * v), total[v]),
                                     _mm512_loadu_ps(zero + 16 * v));
    }
    for (int v = 0; v < 4; ++v) _mm512_storeu_ps(out + 16 * v, total[v]);
}
#else
#define HAVE_INT4_PAIRS 0
#endif

/* An int4 Linear's blocks: its whole blocks of L->block rows (*whole rows in all), then the tail block if any. */
static inline int64_t int4_blocks(const Linear *L, int64_t *whole) {
    *whole = L->N - L->N % L->block;
    return *whole / L->block + (L->N > *whole ? 1 : 0);
}

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

/* Threads: an OpenMP parallel region per call, on the team torch itself uses from the calling thread (the same
   libgomp; torch's workers, spinning after its last operation, pick the call up at once), but barriers of our own.
   libgomp's barriers sleep almost at once when more OpenMP threads exist than cores ("throttled" spinning), which
   is the case as soon as a second Python thread has run parallel code (the app's batching worker beside the main
   thread): a decode step has ~150 barriers, and it ran 2x slower there. Ours spin (the team's threads are all
   running the call; a decode step's barriers are microseconds apart), yielding the core only after a long wait. */
#include <omp.h>
#include <sched.h>
#include <stdatomic.h>

#define BARRIER_SPINS 1000000 /* pauses at a barrier before yielding the core (another process holds it) */

static inline void cpu_relax(void) {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#endif
}

/* The threads of one call: nth of them, meeting at `barrier`. One per call, so concurrent calls (from different
   Python threads, hence different OpenMP teams) never share one. */
typedef struct {
    int nth;
    atomic_int arrived, phase;
} Team;

static void barrier(Team *team) {
    if (team->nth == 1) return;
    int phase = atomic_load_explicit(&team->phase, memory_order_acquire);
    if (atomic_fetch_add_explicit(&team->arrived, 1, memory_order_acq_rel) == team->nth - 1) {
        atomic_store_explicit(&team->arrived, 0, memory_order_relaxed);
        atomic_fetch_add_explicit(&team->phase, 1, memory_order_release);
        return;
    }
    for (long spins = 0; atomic_load_explicit(&team->phase, memory_order_acquire) == phase; ++spins)
        if (spins < BARRIER_SPINS) cpu_relax();
        else sched_yield();
}

typedef void (*job_fn)(void *arg, Team *team, int ith);

/* fn(arg, team, ith) on `threads` threads (ith 0 is the caller); returns when all have returned. */
static void run_parallel(job_fn fn, void *arg, int threads) {
    Team team = {.nth = 0};
#pragma omp parallel num_threads(threads > 0 ? threads : 1)
    {
#pragma omp single
        team.nth = omp_get_num_threads(); /* the team libgomp gave: maybe fewer than asked */
        fn(arg, &team, omp_get_thread_num());
    }
}

/* Thread ith's share [*begin, *end) of count items (contiguous, in order: every output is summed by one thread in
   one fixed order, so results do not depend on the number of threads). */
static inline void share(int64_t count, const Team *team, int ith, int64_t *begin, int64_t *end) {
    *begin = count * ith / team->nth;
    *end = count * (ith + 1) / team->nth;
}

/* xb = xf as bfloat16 (exact: in bfloat16 mode xf holds bfloat16 values), each thread its share, then a barrier:
   the pairs products read all of it. */
static void to_pairs(const float *xf, uint16_t *xb, int64_t count, Team *team, int ith) {
    int64_t first, last;
    share(count, team, ith, &first, &last);
    int64_t i = first;
    for (; i + LANES <= last; i += LANES) vstore_bf16(xb + i, vload(xf + i));
    for (; i < last; ++i) xb[i] = bf16_round(xf[i]);
    barrier(team);
}

/* The sums of y (M, N) = xf (M, K) @ W^T for this thread's share of the output rows, [*n0, *n1). */
static void products(const Linear *L, const float *xf, uint16_t *xb, float *y, int bf16, int64_t M, Team *team,
                     int ith, int64_t *n0_out, int64_t *n1_out) {
    const int64_t N = L->N, K = L->K;
    int64_t begin, end;
    (void)xb;
    if (L->kind == KIND_I4) {
        const uint8_t *w = (const uint8_t *)L->weight;
        int64_t block = L->block, whole, blocks = int4_blocks(L, &whole);
        const int pairs = HAVE_INT4_PAIRS && bf16 && block == 64;
        if (pairs) to_pairs(xf, xb, M * K, team, ith);
        share(blocks, team, ith, &begin, &end);
        for (int64_t b = begin; b < end; ++b) {
            int64_t n0 = b * block, rows = n0 < whole ? block : N - whole;
            float out[64];
            for (int64_t m = 0; m < M; ++m) {
                const uint8_t *wb = w + n0 * K / 2;
                if (n0 >= whole) int4_tail(wb, xf + m * K, L->scales, bf16, N, n0, rows, K, L->group, out);
#if HAVE_INT4_PAIRS
                else if (pairs) int4_pairs_block64(wb, xb + m * K, xf + m * K, L->scales, bf16, N, n0, K, L->group, out);
#endif
                else if (block == 64) int4_block64(wb, xf + m * K, L->scales, bf16, N, n0, K, L->group, out);
                else int4_block32(wb, xf + m * K, L->scales, bf16, N, n0, K, L->group, out);
                memcpy(y + m * N + n0, out, (size_t)rows * sizeof(float));
            }
        }
        *n0_out = begin * block < N ? begin * block : N;
        *n1_out = end * block < N ? end * block : N;
        return;
    }
    const int R = block_rows(M);
    const int64_t blocks = (N + R - 1) / R;
    share(blocks, team, ith, &begin, &end);
    *n0_out = begin * R < N ? begin * R : N;
    *n1_out = end * R < N ? end * R : N;
#if HAVE_PAIRS
    if (bf16 && L->kind != KIND_F32) { /* bfloat16 activations: x as bfloat16 pairs */
        to_pairs(xf, xb, M * K, team, ith);
        if (M == 1) {
            if (L->kind == KIND_I8) one_row_i8_pairs(L, xb, y, *n0_out, *n1_out);
            else one_row_bf16_pairs(L, xb, y, *n0_out, *n1_out);
            return;
        }
        for (int64_t b = begin; b < end; ++b) {
            int64_t n = b * R;
            int NR = N - n < R ? (int)(N - n) : R;
            if (L->kind == KIND_I8) rows_i8_pairs(L, xb, y, M, n, NR);
            else rows_bf16_pairs(L, xb, y, M, n, NR);
        }
        return;
    }
#endif
    if (M == 1) {
        if (L->kind == KIND_I8) one_row_i8(L, xf, y, *n0_out, *n1_out);
        else if (L->kind == KIND_BF16) one_row_bf16(L, xf, y, *n0_out, *n1_out);
        else one_row_f32(L, xf, y, *n0_out, *n1_out);
        return;
    }
    for (int64_t b = begin; b < end; ++b) {
        int64_t n = b * R;
        int NR = N - n < R ? (int)(N - n) : R;
        if (L->kind == KIND_I8) rows_i8(L, xf, y, M, n, NR);
        else if (L->kind == KIND_BF16) rows_bf16(L, xf, y, M, n, NR);
        else rows_f32(L, xf, y, M, n, NR);
    }
}

/* y (M, N) = xf (M, K) @ W^T + bias, then `act`, all float32 (bfloat16-rounded when `bf16`), and y as bfloat16 into
   yb unless it is NULL; xb: room for M * K bfloat16 values. Thread ith of nth computes its share of the rows; returns
   when all threads have finished. */
static void linear(const Linear *L, const float *xf, uint16_t *xb, float *y, uint16_t *yb, int bf16, int act,
                   int64_t M, Team *team, int ith) {
    int64_t n0, n1;
    products(L, xf, xb, y, bf16, M, team, ith, &n0, &n1);
    for (int64_t m = 0; m < M; ++m) epilogue(L, bf16, act, y + m * L->N, yb ? yb + m * L->N : NULL, n0, n1);
    barrier(team);
}

static int check_linear(const Linear *L) {
    if (L->kind < KIND_F32 || L->kind > KIND_I4) return 2;
    if (L->kind == KIND_I4 && ((L->block != 64 && L->block != 32) || L->group <= 0 || L->K % L->group)) return 2;
    return 0;
}

typedef struct {
    const Linear *L;
    const float *xf;
    uint16_t *xb;
    float *y;
    int bf16;
    int64_t M;
} LinearJob;

static void linear_job(void *arg, Team *team, int ith) {
    const LinearJob *job = (const LinearJob *)arg;
    linear(job->L, job->xf, job->xb, job->y, NULL, job->bf16, ACT_NONE, job->M, team, ith);
}

/* y (M, N) = x (M, K) @ W^T + bias (the Linear `L`) on `threads` threads. Returns 0, 1 when out of memory, 2 for a
   Linear it cannot read (an unknown kind, an int4 block other than 64 or 32 rows). */
int biogpt_linear(const Linear *L, const void *x, void *y, int bf16, int64_t M, int threads) {
    if (check_linear(L)) return 2;
    if (!bf16) { /* float32 in and out: no copies */
        LinearJob job = {L, (const float *)x, NULL, (float *)y, 0, M};
        run_parallel(linear_job, &job, threads);
        return 0;
    }
    /* bfloat16: x widened to float32 (and, for the pairs, kept as bfloat16 too), y rounded back */
    const int64_t count = M * L->K > 0 ? M * L->K : 1, outs = M * L->N > 0 ? M * L->N : 1;
    float *xf = (float *)malloc((size_t)(count + outs) * sizeof(float) + (size_t)count * sizeof(uint16_t));
    if (!xf) return 1;
    float *yf = xf + count;
    uint16_t *xb = (uint16_t *)(yf + outs);
    for (int64_t i = 0; i < M * L->K; ++i) xf[i] = bf16_scalar(((const uint16_t *)x)[i]);
    LinearJob job = {L, xf, xb, yf, 1, M};
    run_parallel(linear_job, &job, threads);
    for (int64_t i = 0; i < M * L->N; ++i) ((uint16_t *)y)[i] = bf16_round(yf[i]);
    free(xf);
    return 0;
}

/* Column k of an int4 tail block (`col`: its rows / 2 bytes, byte j holding rows 2j (low nibble) and 2j + 1 (high))
   as q - 8 in float32, for its `rows` rows in order. */
static inline void int4_tail_column(const uint8_t *col, int64_t rows, float *q) {
    for (int64_t j = 0; j < rows / 2; ++j) {
        q[2 * j] = (float)(col[j] & 15) - 8.f;
        q[2 * j + 1] = (float)(col[j] >> 4) - 8.f;
    }
}

typedef struct {
    const Linear *L;
    void *out;
    int bf16;
    float *scales; /* int4: room for 2 N floats per thread */
} DequantizeJob;

/* Thread ith's groups of input columns, and in each column every block in turn: out is written one whole row
   (k, all N) after another. (Block by block, every column, wrote 128 bytes at a stride of N values: 1.9 ms per 4096
   x 1024 matrix on two cores, where this order takes 0.7-1.0.) */
static void int4_dequantize_job(void *arg, Team *team, int ith) {
    const DequantizeJob *j = (const DequantizeJob *)arg;
    const Linear *L = j->L;
    const int64_t N = L->N, K = L->K, block = L->block, group = L->group;
    int64_t whole;
    const int64_t blocks = int4_blocks(L, &whole);
    int64_t begin, end;
    share(K / group, team, ith, &begin, &end);
    float *scale = j->scales + ith * 2 * N, *zero = scale + N, q[64];
    for (int64_t g = begin; g < end; ++g) {
        group_scales(L->scales, j->bf16, N, 0, N, g, 1.f, scale, zero);
        for (int64_t k = g * group; k < (g + 1) * group; ++k)
            for (int64_t b = 0; b < blocks; ++b) {
                const int64_t n0 = b * block, rows = n0 < whole ? block : N - whole, half = rows / 2;
                const uint8_t *col = (const uint8_t *)L->weight + n0 * K / 2 + k * half;
                const int split = n0 < whole; /* split: byte j holds row j (low nibble) and row half + j (high) */
                if (!split) int4_tail_column(col, rows, q);
                for (int64_t r = 0; r < rows; r += LANES) { /* rows: a multiple of 16 (kernels.int4_shape_error) */
                    vec w = !split ? vload(q + r) : r < half ? vnib_lo(col + r) : vnib_hi(col + r - half);
                    w = vfma(w, vload(scale + n0 + r), vload(zero + n0 + r));
                    if (j->bf16) vstore_bf16((uint16_t *)j->out + k * N + n0 + r, w);
                    else vstore((float *)j->out + k * N + n0 + r, w);
                }
            }
    }
}

/* The transposed weight W^T (K, N) of an int4 Linear in the compute dtype (float32, or bfloat16 when `bf16`):
   out[k * N + n] = (q - 8) * scale + zero, computed in float32 and rounded once. What the `dequant` kernel of a
   long prompt multiplies with. Returns 0, 1 when out of memory, or 2 for a Linear it cannot read. */
int biogpt_int4_dequantize_t(const Linear *L, void *out, int bf16, int threads) {
    if (check_linear(L) || L->kind != KIND_I4) return 2;
    DequantizeJob job = {L, out, bf16, (float *)malloc((size_t)(threads > 0 ? threads : 1) * 2 * L->N * sizeof(float))};
    if (!job.scales) return 1;
    run_parallel(int4_dequantize_job, &job, threads);
    free(job.scales);
    return 0;
}

static void int8_dequantize_job(void *arg, Team *team, int ith) {
    const DequantizeJob *j = (const DequantizeJob *)arg;
    const Linear *L = j->L;
    const int64_t K = L->K;
    int64_t begin, end;
    share(L->N, team, ith, &begin, &end);
    for (int64_t n = begin; n < end; ++n) {
        const int8_t *w = (const int8_t *)L->weight + n * K;
        const float scale = value_at(L->scales, j->bf16, n);
        const vec scale_v = vset(scale);
        int64_t k = 0;
        for (; k + LANES <= K; k += LANES) {
            const vec v = vmul(vload_i8(w + k), scale_v);
            if (j->bf16) vstore_bf16((uint16_t *)j->out + n * K + k, v);
            else vstore((float *)j->out + n * K + k, v);
        }
        for (; k < K; ++k) store_at(j->out, j->bf16, n * K + k, (float)w[k] * scale);
    }
}

/* The weight W (N, K) of an int8 Linear in the compute dtype: out[n * K + k] = q * scale[n], one product rounded
   once (what PyTorch's weight * scales[:, None] computes). What the `dequant` kernel of a long prompt multiplies
   with: 4096 x 1024 on two cores in 0.3 ms, where PyTorch's mixed-dtype product took 6 ms (half as long as the
   512-row product that follows it). Returns 0, or 2 for a Linear it cannot read. */
int biogpt_int8_dequantize(const Linear *L, void *out, int bf16, int threads) {
    if (check_linear(L) || L->kind != KIND_I8) return 2;
    DequantizeJob job = {L, out, bf16, NULL};
    run_parallel(int8_dequantize_job, &job, threads);
    return 0;
}

/* ---- Long prompts with low-bit weights: a blocked product over weight panels expanded in the cache ------------ */
/* `biogpt_tiles_linear`: y (M, N) = x (M, K) @ W^T + bias, all bfloat16, for int8 and int4 weights. A long prompt's
   products are bound by arithmetic, not memory; expanding the whole weight to bfloat16 first (the `dequant` kernel)
   writes and reads it back through memory, and oneDNN then reorders it into its own blocked layout (1 ms of a 10 ms
   512 x 4096 x 1024 product on two cores). Here each thread expands a panel of the weight's columns, already in the
   layout of the VDPBF16PS product (K / 2 pairs of 32 columns), into a buffer that stays in its L2 cache, and
   multiplies every row of x with it: the weight is read from memory once, in its own format. int8 values are exact
   in bfloat16 and their row scale multiplies the sums (as in the decode products); int4 ones are expanded as the
   dequant kernel does it ((q - 8) * scale + zero rounded once). */
#if HAVE_PAIRS
#define TILE_ROWS 14          /* rows of x per tile: 14 x 2 accumulators + 2 weight vectors + x: 31 of 32 registers */
#define PANEL_BYTES (512 << 10) /* an expanded panel (a thread's L2 holds it beside the rows of x it multiplies) */

typedef struct {
    const Linear *L;
    const uint16_t *x;
    uint16_t *y;
    int64_t M, panel;   /* panel: columns per panel, a multiple of 32 */
    uint32_t *xp;       /* x as pairs, TILE_ROWS rows interleaved: [M / TILE_ROWS][K / 2][TILE_ROWS] */
    uint32_t *buffers;  /* per thread: a panel [panel / 32][K / 2][32] pairs */
} TilesJob;

/* A 16 x 16 transpose of 32-bit elements: r[i] element j -> r[j] element i (unpacks within 128-bit lanes, then a
   4 x 4 transpose of the lanes). */
static inline void transpose16(__m512i r[16]) {
    __m512i t[16];
    for (int i = 0; i < 16; i += 2) {
        t[i] = _mm512_unpacklo_epi32(r[i], r[i + 1]);
        t[i + 1] = _mm512_unpackhi_epi32(r[i], r[i + 1]);
    }
    for (int i = 0; i < 16; i += 4) { /* r[i + e], lane L: rows i .. i + 3, element 4 L + e */
        r[i] = _mm512_unpacklo_epi64(t[i], t[i + 2]);
        r[i + 1] = _mm512_unpackhi_epi64(t[i], t[i + 2]);
        r[i + 2] = _mm512_unpacklo_epi64(t[i + 1], t[i + 3]);
        r[i + 3] = _mm512_unpackhi_epi64(t[i + 1], t[i + 3]);
    }
    for (int e = 0; e < 4; ++e) {
        const __m512i p0 = _mm512_shuffle_i32x4(r[e], r[4 + e], 0x44), p1 = _mm512_shuffle_i32x4(r[e], r[4 + e], 0xee);
        const __m512i p2 = _mm512_shuffle_i32x4(r[8 + e], r[12 + e], 0x44);
        const __m512i p3 = _mm512_shuffle_i32x4(r[8 + e], r[12 + e], 0xee);
        t[e] = _mm512_shuffle_i32x4(p0, p2, 0x88);      /* element e */
        t[4 + e] = _mm512_shuffle_i32x4(p0, p2, 0xdd);  /* element 4 + e */
        t[8 + e] = _mm512_shuffle_i32x4(p1, p3, 0x88);
        t[12 + e] = _mm512_shuffle_i32x4(p1, p3, 0xdd);
    }
    for (int i = 0; i < 16; ++i) r[i] = t[i];
}

/* Columns n0 .. n0 + 15 of the panel (zeros past N) as pairs:
   out[kp * 32 + i] = (q[n0 + i][2 kp], q[n0 + i][2 kp + 1]),
   16 rows x 32 columns at a time through the registers. The int8 values themselves (exact in bfloat16): the scale
   multiplies the sums, as in the decode products. */
static void tile_columns_i8(const Linear *L, int64_t n0, uint32_t *out) {
    const int64_t N = L->N, K = L->K, valid = N - n0 < 16 ? N - n0 : 16;
    const int8_t *w = (const int8_t *)L->weight + n0 * K;
    int64_t k = 0;
    for (; k + 32 <= K; k += 32) {
        __m512i r[16];
        for (int i = 0; i < 16; ++i)
            r[i] = i < valid ? (__m512i)_mm512_cvtne2ps_pbh(vload_i8(w + i * K + k + 16), vload_i8(w + i * K + k))
                             : _mm512_setzero_si512();
        transpose16(r);
        for (int j = 0; j < 16; ++j) _mm512_storeu_si512(out + (k / 2 + j) * 32, r[j]);
    }
    for (; k < K; k += 2) /* the last K % 32 columns */
        for (int i = 0; i < 16; ++i)
            out[(k / 2) * 32 + i] = i < valid ? (uint32_t)bf16_round(w[i * K + k])
                                                    | (uint32_t)bf16_round(w[i * K + k + 1]) << 16
                                              : 0;
}

/* The same for int4 weights in a split block layout (int4_dequantize_job): a column of a block is contiguous, so the
   pairs come straight from two columns, (q - 8) * scale + zero rounded once. Needs N a multiple of the block. */
static void tile_columns_i4(const Linear *L, int64_t n0, uint32_t *out) {
    const int64_t N = L->N, K = L->K, block = L->block, half = block / 2, group = L->group;
    const int64_t b0 = n0 - n0 % block, r = n0 - b0; /* the block, and the first of its rows */
    const uint8_t *w = (const uint8_t *)L->weight + b0 * K / 2 + (r < half ? r : r - half);
    float scale[16], zero[16];
    for (int64_t g = 0; g < K / group; ++g) {
        group_scales(L->scales, 1, N, n0, 16, g, 1.f, scale, zero);
        const vec s = vload(scale), z = vload(zero);
        for (int64_t k = g * group; k < (g + 1) * group; k += 2) {
            const vec a = vfma(r < half ? vnib_lo(w + k * half) : vnib_hi(w + k * half), s, z);
            const vec b = vfma(r < half ? vnib_lo(w + (k + 1) * half) : vnib_hi(w + (k + 1) * half), s, z);
            const __m512i pair = _mm512_or_si512(_mm512_srli_epi32(vbf16_bits(a), 16),
                                                 _mm512_and_si512(vbf16_bits(b), _mm512_set1_epi32((int)0xffff0000)));
            _mm512_storeu_si512(out + (k / 2) * 32, pair);
        }
    }
}

/* Up to 16 bfloat16 values as float32 (zeros where `keep` is not set). */
static inline __m512 bf16_lanes(__mmask16 keep, const uint16_t *p) {
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(keep, p)), 16));
}

/* Rows m0 .. m0 + rows - 1 (rows <= TILE_ROWS) times 32 expanded columns (`b`: [K / 2][32] pairs) -> y. */
static inline void tile(const uint32_t *xp, int64_t K, int rows, const uint32_t *b, const Linear *L, int64_t n0,
                        uint16_t *y) {
    __m512 acc[TILE_ROWS][2];
#pragma GCC unroll 14
    for (int r = 0; r < TILE_ROWS; ++r) acc[r][0] = acc[r][1] = _mm512_setzero_ps();
    for (int64_t kp = 0; kp < K / 2; ++kp) {
        const __m512bh w0 = (__m512bh)_mm512_loadu_si512(b + kp * 32);
        const __m512bh w1 = (__m512bh)_mm512_loadu_si512(b + kp * 32 + 16);
#pragma GCC unroll 14
        for (int r = 0; r < TILE_ROWS; ++r) {
            const __m512bh a = (__m512bh)_mm512_set1_epi32((int)xp[kp * TILE_ROWS + r]);
            acc[r][0] = _mm512_dpbf16_ps(acc[r][0], a, w0);
            acc[r][1] = _mm512_dpbf16_ps(acc[r][1], a, w1);
        }
    }
    const int64_t N = L->N;
    for (int c = 0; c < 2; ++c) {
        const int64_t n = n0 + c * 16;
        if (n >= N) break;
        const __mmask16 keep = N - n >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << (N - n)) - 1);
        const __m512 bias = L->bias ? bf16_lanes(keep, (const uint16_t *)L->bias + n) : _mm512_setzero_ps();
        const __m512 scale = L->kind == KIND_I8 ? bf16_lanes(keep, (const uint16_t *)L->scales + n)
                                                : _mm512_set1_ps(1.f);
        for (int r = 0; r < rows; ++r) {
            const __m512i bits = _mm512_srli_epi32(vbf16_bits(_mm512_fmadd_ps(acc[r][c], scale, bias)), 16);
            _mm256_mask_storeu_epi16(y + r * N + n, keep, _mm512_cvtepi32_epi16(bits));
        }
    }
}

static void tiles_job(void *arg, Team *team, int ith) {
    const TilesJob *j = (const TilesJob *)arg;
    const Linear *L = j->L;
    const int64_t M = j->M, N = L->N, K = L->K, KP = K / 2, tiles = (M + TILE_ROWS - 1) / TILE_ROWS;
    int64_t begin, end;
    share(tiles, team, ith, &begin, &end);
    for (int64_t t = begin; t < end; ++t) /* x as pairs, a tile's rows interleaved (the last row repeated past M) */
        for (int r = 0; r < TILE_ROWS; ++r) {
            const int64_t m = t * TILE_ROWS + r < M ? t * TILE_ROWS + r : M - 1;
            const uint32_t *row = (const uint32_t *)(j->x + m * K);
            uint32_t *out = j->xp + t * KP * TILE_ROWS + r;
            for (int64_t kp = 0; kp < KP; ++kp) out[kp * TILE_ROWS] = row[kp];
        }
    barrier(team);
    uint32_t *panel = j->buffers + ith * j->panel * KP;
    for (int64_t p = ith; p * j->panel < N; p += team->nth) {
        const int64_t n0 = p * j->panel, width = N - n0 < j->panel ? N - n0 : j->panel;
        for (int64_t s = 0; s * 16 < width; ++s) /* (a last odd strip's twin is never stored: no need to fill it) */
            (L->kind == KIND_I8 ? tile_columns_i8 : tile_columns_i4)(L, n0 + s * 16,
                                                                     panel + (s / 2) * KP * 32 + (s % 2) * 16);
        for (int64_t t = 0; t < tiles; ++t) {
            const int rows_here = M - t * TILE_ROWS < TILE_ROWS ? (int)(M - t * TILE_ROWS) : TILE_ROWS;
            for (int64_t g = 0; g * 32 < width; ++g)
                tile(j->xp + t * KP * TILE_ROWS, K, rows_here, panel + g * KP * 32, L, n0 + g * 32,
                     j->y + t * TILE_ROWS * N);
        }
    }
}
#endif

/* Whether biogpt_tiles_linear runs on this build (AVX-512 with BF16 pairs). */
int biogpt_tiles_available(void) { return HAVE_PAIRS; }

/* y (M, N) = x (M, K) @ W^T + bias for int8 weights, or int4 ones in whole split blocks, all bfloat16, on `threads`
   threads (see above). Returns 0, 1 when out of memory, 2 for a Linear it cannot read, 3 for one it does not do
   here (no BF16 pairs on this CPU, an int4 tail block, odd K): the caller takes the `dequant` kernel. */
int biogpt_tiles_linear(const Linear *L, const void *x, void *y, int64_t M, int threads) {
    if (check_linear(L) || M < 1) return 2;
#if HAVE_PAIRS
    if ((L->kind != KIND_I8 && L->kind != KIND_I4) || L->K % 2 || (L->kind == KIND_I4 && L->N % L->block)) return 3;
    const int64_t K = L->K, tiles = (M + TILE_ROWS - 1) / TILE_ROWS, nth = threads > 0 ? threads : 1;
    int64_t panel = PANEL_BYTES / (K * 2) / 32 * 32;
    if (panel < 32) panel = 32;
    const size_t xp = (size_t)(tiles * TILE_ROWS * K / 2), per_thread = (size_t)(panel * K / 2);
    /* aligned_alloc wants a multiple of the alignment */
    const size_t bytes = ((xp + per_thread * (size_t)nth) * sizeof(uint32_t) + 63) / 64 * 64;
    uint32_t *memory = (uint32_t *)aligned_alloc(64, bytes);
    if (!memory) return 1;
    TilesJob job = {L, (const uint16_t *)x, (uint16_t *)y, M, panel, memory, memory + xp};
    run_parallel(tiles_job, &job, (int)nth);
    free(memory);
    return 0;
#else
    (void)x, (void)y, (void)threads;
    return 3;
#endif
}

/* One decoder layer's weights (native.py's `_Layer`), in the order of the module code. */
typedef struct {
    const void *ln1_weight, *ln1_bias; /* self_attn_layer_norm */
    Linear q, k, v, out;               /* self_attn.{q,k,v,out}_proj */
    const void *ln2_weight, *ln2_bias; /* final_layer_norm */
    Linear fc1, fc2;
} Layer;

/* out = LayerNorm(x) (two passes in float32, as PyTorch's CPU kernel). */
static void layer_norm(const float *x, const void *weight, const void *bias, int bf16, int64_t H, float eps,
                       float *out) {
    vec sum = vzero();
    int64_t i = 0;
    for (; i + LANES <= H; i += LANES) sum = vadd(sum, vload(x + i));
    float mean = vsum(sum);
    for (; i < H; ++i) mean += x[i];
    mean /= (float)H;
    const vec mean_v = vset(mean);
    sum = vzero();
    for (i = 0; i + LANES <= H; i += LANES) {
        const vec d = vsub(vload(x + i), mean_v);
        sum = vfma(d, d, sum);
    }
    float var = vsum(sum);
    for (; i < H; ++i) var += (x[i] - mean) * (x[i] - mean);
    const float rstd = 1.f / sqrtf(var / (float)H + eps);
    const vec rstd_v = vset(rstd);
    for (i = 0; i + LANES <= H; i += LANES) {
        vec v = vfma(vmul(vsub(vload(x + i), mean_v), rstd_v), vload_at(weight, bf16, i), vload_at(bias, bf16, i));
        vstore(out + i, bf16 ? vbf16_rounded(v) : v);
    }
    for (; i < H; ++i) {
        float v = (x[i] - mean) * rstd * value_at(weight, bf16, i) + value_at(bias, bf16, i);
        out[i] = bf16 ? bf16_rounded(v) : v;
    }
}

/* h += delta (a residual connection), rounded as PyTorch rounds a bfloat16 sum. */
static void add_residual(float *h, const float *delta, int bf16, int64_t H) {
    int64_t i = 0;
    for (; i + LANES <= H; i += LANES) {
        const vec v = vadd(vload(h + i), vload(delta + i));
        vstore(h + i, bf16 ? vbf16_rounded(v) : v);
    }
    for (; i < H; ++i) h[i] = bf16 ? bf16_rounded(h[i] + delta[i]) : h[i] + delta[i];
}

static float dot_row(const float *a, const void *row, int bf16, int64_t n) {
    vec acc = vzero();
    int64_t d = 0;
    for (; d + LANES <= n; d += LANES)
        acc = vfma(vload(a + d), bf16 ? vload_bf16((const uint16_t *)row + d) : vload((const float *)row + d), acc);
    float s = vsum(acc);
    for (; d < n; ++d) s += a[d] * value_at(row, bf16, d);
    return s;
}

static void add_scaled_row(float *acc, float p, const void *row, int bf16, int64_t n) {
    vec pv = vset(p);
    int64_t d = 0;
    for (; d + LANES <= n; d += LANES)
        vstore(acc + d, vfma(pv, bf16 ? vload_bf16((const uint16_t *)row + d) : vload((const float *)row + d),
                             vload(acc + d)));
    for (; d < n; ++d) acc[d] += p * value_at(row, bf16, d);
}

/* Attention of one head of one row for its new token: its key and value (k, v: that row's heads) go into the
   row's cache (heads, capacity, D) at `position`, then the softmax over the keys 0 .. position the row may attend
   (`may`: one flag per key, or NULL for all) weighs the values. `scores` holds position + 1 floats, `out` receives
   D values. */
static void attend(int64_t head, const float *q, const float *k, const float *v, void *keys, void *values,
                   const uint8_t *may, int bf16, int64_t D, int64_t capacity, int64_t position, float scaling,
                   float *scores, float *out) {
    const int64_t base = head * capacity * D, size = bf16 ? 2 : 4;
    for (int64_t d = 0; d < D; ++d) {
        store_at(keys, bf16, base + position * D + d, k[head * D + d]);
        store_at(values, bf16, base + position * D + d, v[head * D + d]);
    }
    const char *key_rows = (const char *)keys + base * size, *value_rows = (const char *)values + base * size;
    float top = -INFINITY, total = 0.f;
    for (int64_t t = 0; t <= position; ++t) {
        scores[t] = (!may || may[t]) ? dot_row(q + head * D, key_rows + t * D * size, bf16, D) * scaling : -INFINITY;
        top = scores[t] > top ? scores[t] : top;
    }
    /* the exponentials LANES at a time (a masked key's -inf gives 0), then their sum in order */
    const vec top_v = vset(top);
    int64_t t = 0;
    for (; t + LANES <= position + 1; t += LANES) vstore(scores + t, vexp(vsub(vload(scores + t), top_v)));
    for (; t <= position; ++t) scores[t] = (!may || may[t]) ? expf(scores[t] - top) : 0.f;
    for (t = 0; t <= position; ++t) total += scores[t];
    for (int64_t d = 0; d < D; ++d) out[d] = 0.f;
    for (int64_t t = 0; t <= position; ++t)
        if (scores[t] != 0.f) add_scaled_row(out, scores[t], value_rows + t * D * size, bf16, D);
    for (int64_t d = 0; d < D; ++d) out[d] = bf16 ? bf16_rounded(out[d] / total) : out[d] / total;
}

typedef struct {
    const Layer *layers;
    int64_t n_layers;
    void *const *keys, *const *values;
    const uint8_t *may_attend;
    int bf16, act;
    int64_t rows, heads, head_dim, capacity, position, inner_size;
    float eps, scaling;
    const void *norm_weight, *norm_bias; /* the final LayerNorm */
    const Linear *projection;            /* the output projection, or NULL */
    float *logits;                       /* (rows, projection->N) sums and results */
    uint16_t *logits_bf16;               /* the results as bfloat16 (bfloat16 mode), else NULL */
    float *h, *normed, *q, *k, *v, *attended, *delta, *inner, *scores;
    uint16_t *xb;
} DecodeJob;

static void decode_job(void *arg, Team *team, int ith) {
    const DecodeJob *j = (const DecodeJob *)arg;
    const int64_t rows = j->rows, H = j->heads * j->head_dim, T = j->position + 1;
    const int64_t row_cache = j->heads * j->capacity * j->head_dim * (j->bf16 ? 2 : 4); /* bytes of a row's cache */
    int64_t begin, end, first, last;
    share(rows, team, ith, &begin, &end);
    share(rows * j->heads, team, ith, &first, &last);
    for (int64_t l = 0; l < j->n_layers; ++l) {
        const Layer *L = j->layers + l;
        for (int64_t r = begin; r < end; ++r)
            layer_norm(j->h + r * H, L->ln1_weight, L->ln1_bias, j->bf16, H, j->eps, j->normed + r * H);
        barrier(team);
        linear(&L->q, j->normed, j->xb, j->q, NULL, j->bf16, ACT_NONE, rows, team, ith);
        linear(&L->k, j->normed, j->xb, j->k, NULL, j->bf16, ACT_NONE, rows, team, ith);
        linear(&L->v, j->normed, j->xb, j->v, NULL, j->bf16, ACT_NONE, rows, team, ith);
        for (int64_t task = first; task < last; ++task) {
            int64_t r = task / j->heads, head = task % j->heads;
            attend(head, j->q + r * H, j->k + r * H, j->v + r * H, (char *)j->keys[l] + r * row_cache,
                   (char *)j->values[l] + r * row_cache, j->may_attend ? j->may_attend + r * T : NULL, j->bf16,
                   j->head_dim, j->capacity, j->position, j->scaling, j->scores + task * T,
                   j->attended + r * H + head * j->head_dim);
        }
        barrier(team);
        linear(&L->out, j->attended, j->xb, j->delta, NULL, j->bf16, ACT_NONE, rows, team, ith);
        for (int64_t r = begin; r < end; ++r) {
            add_residual(j->h + r * H, j->delta + r * H, j->bf16, H);
            layer_norm(j->h + r * H, L->ln2_weight, L->ln2_bias, j->bf16, H, j->eps, j->normed + r * H);
        }
        barrier(team);
        linear(&L->fc1, j->normed, j->xb, j->inner, NULL, j->bf16, j->act, rows, team, ith);
        linear(&L->fc2, j->inner, j->xb, j->delta, NULL, j->bf16, ACT_NONE, rows, team, ith);
        for (int64_t r = begin; r < end; ++r) add_residual(j->h + r * H, j->delta + r * H, j->bf16, H);
        barrier(team);
    }
    for (int64_t r = begin; r < end; ++r)
        layer_norm(j->h + r * H, j->norm_weight, j->norm_bias, j->bf16, H, j->eps, j->normed + r * H);
    barrier(team);
    if (j->projection)
        linear(j->projection, j->normed, j->xb, j->logits, j->logits_bf16, j->bf16, ACT_NONE, rows, team, ith);
}

/* Every decoder layer of a decode step for one new token in each of `rows` sequences, whose key/value caches hold
   `position` earlier columns and have room for this one, on `threads` threads, then the final LayerNorm (norm_weight,
   norm_bias) and, unless `projection` is NULL, the output projection: hidden (rows, H) in, the final LayerNorm's
   output into out, the projection's into logits (rows, projection->N). One call for the whole step: the head's 42k
   rows alone were a second call, and the LayerNorm and the Python around them ~0.5 ms a step, all cache-cold after
   the weights streamed by. keys[l] and values[l] are layer l's cache, (rows, heads, capacity, head_dim) each.
   `may_attend` is NULL (every earlier key) or (rows, position + 1) flags, 1 where a row may attend a key (its padding
   columns are 0; its own new key is 1). `act` is ACT_GELU (the only activation of BioGPT checkpoints). Returns 0, 1
   when out of memory, 2 for a Linear it cannot read, 3 when the cache has no room. */
int biogpt_decode_layers(const Layer *layers, int64_t n_layers, void *const *keys, void *const *values,
                         const void *hidden, void *out, const uint8_t *may_attend, int bf16, int64_t rows,
                         int64_t heads, int64_t head_dim, int64_t capacity, int64_t position, float eps,
                         float scaling, int act, const void *norm_weight, const void *norm_bias,
                         const Linear *projection, void *logits, int threads) {
    const int64_t H = heads * head_dim, inner_size = n_layers ? layers[0].fc1.N : 0, T = position + 1;
    if (position < 0 || position >= capacity) return 3;
    if (projection && check_linear(projection)) return 2;
    for (int64_t l = 0; l < n_layers; ++l) {
        const Linear *all[6] = {&layers[l].q, &layers[l].k, &layers[l].v, &layers[l].out, &layers[l].fc1,
                                &layers[l].fc2};
        for (int i = 0; i < 6; ++i)
            if (check_linear(all[i])) return 2;
    }
    const int64_t widest = H > inner_size ? H : inner_size;
    /* bfloat16 logits are summed in float32 first (float32 ones in place) */
    const int64_t logit_sums = projection && bf16 ? rows * projection->N : 0;
    float *h = (float *)malloc((size_t)(rows * (7 * H + inner_size + heads * T) + logit_sums) * sizeof(float)
                               + (size_t)(rows * widest) * sizeof(uint16_t));
    if (!h) return 1;
    DecodeJob job = {.layers = layers, .n_layers = n_layers, .keys = keys, .values = values, .may_attend = may_attend,
                     .bf16 = bf16, .act = act, .rows = rows, .heads = heads, .head_dim = head_dim,
                     .capacity = capacity, .position = position, .inner_size = inner_size, .eps = eps,
                     .scaling = scaling, .norm_weight = norm_weight, .norm_bias = norm_bias, .projection = projection,
                     .h = h};
    job.normed = h + rows * H;
    job.q = job.normed + rows * H;
    job.k = job.q + rows * H;
    job.v = job.k + rows * H;
    job.attended = job.v + rows * H;
    job.delta = job.attended + rows * H;
    job.inner = job.delta + rows * H;
    job.scores = job.inner + rows * inner_size;
    job.logits = bf16 ? job.scores + rows * heads * T : (float *)logits;
    job.logits_bf16 = bf16 ? (uint16_t *)logits : NULL;
    job.xb = (uint16_t *)(job.scores + rows * heads * T + logit_sums);
    for (int64_t i = 0; i < rows * H; ++i) h[i] = value_at(hidden, bf16, i);
    run_parallel(decode_job, &job, threads);
    for (int64_t i = 0; i < rows * H; ++i) store_at(out, bf16, i, job.normed[i]);
    free(h);
    return 0;
}
