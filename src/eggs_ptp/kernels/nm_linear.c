/* N:M sparse linear layers computed straight from the compact format.
 *
 * A layer (rows = out, cols = in) is stored as
 *   values  (rows, kept)           the stored weights of each row, in column order, fp32 or bf16;
 *   bitmask (rows, ceil(cols/8))   bit j of byte k set when column 8k+j is stored (LSB first).
 * That is a bitmap-compressed row, so the kernels never need the group size M: they walk each row
 * 16 (AVX-512) or 8 (AVX2) columns at a time, expand the next popcount(mask) stored values into
 * their columns (zeros elsewhere) and multiply-add against the dense input. One-token decode is
 * memory-bound, so reading ~N/M of the weight bytes is what makes it faster than a dense GEMV.
 *
 *   y (tokens, rows) fp32 = x (tokens, cols) fp32 @ W^T + bias (fp32, may be NULL)
 *
 * Rows are split over OpenMP threads and walked one at a time, so the values are read as one
 * sequential stream (blocking several rows was measured 2x slower at one token: more streams, no
 * gain). Each expanded chunk is used for up to 8 tokens (4 with AVX2) from registers. The
 * AVX-512 and AVX2 variants are compiled with target attributes and picked at run time, so one
 * build serves any x86-64 CPU; the generic C loop serves the rest. Every row's bitmask is checked
 * to mark exactly `kept` columns before it is used, so a corrupt mask is refused, never over-read.
 */
#include <stdint.h>
#include <string.h>

enum { ISA_AUTO = 0, ISA_GENERIC = 1, ISA_AVX2 = 2, ISA_AVX512 = 3 };
enum { DTYPE_F32 = 0, DTYPE_BF16 = 1 };
enum { ERR_ISA = -1, ERR_DTYPE = -2, ERR_BITMASK = -3 };

#define GENERIC_TOKENS 8
#define L1_INPUT_BYTES 24576
#define GRAIN 32768
#define INLINE static inline __attribute__((always_inline))

typedef struct {
    const float *x;
    const uint8_t *values; /* fp32 or bf16, addressed in bytes */
    const uint8_t *bitmask;
    const float *bias;
    float *out;
    void *dense;
    int64_t tokens, rows, cols, kept, mask_stride, width;
} layer_t;

static int64_t row_count(const layer_t *L, int64_t r) {
    const uint8_t *mask = L->bitmask + r * L->mask_stride;
    int64_t whole = L->cols >> 3, count = 0, i = 0;
    for (; i + 8 <= whole; i += 8) {
        uint64_t word;
        memcpy(&word, mask + i, 8);
        count += __builtin_popcountll(word);
    }
    for (; i < whole; i++)
        count += __builtin_popcount(mask[i]);
    if (L->cols & 7)
        count += __builtin_popcount(mask[whole] & ((1u << (L->cols & 7)) - 1u));
    return count;
}

/* Whether rows r .. r+n-1 each mark exactly `kept` columns (bits past `cols` are ignored). */
static int rows_consistent(const layer_t *L, int64_t r, int64_t n) {
    for (int64_t i = 0; i < n; i++)
        if (row_count(L, r + i) != L->kept)
            return 0;
    return 1;
}

static inline float load_value(const uint8_t *p, int64_t width) {
    float f;
    if (width == 4) {
        memcpy(&f, p, 4);
    } else {
        uint16_t h;
        memcpy(&h, p, 2);
        uint32_t bits = (uint32_t)h << 16;
        memcpy(&f, &bits, 4);
    }
    return f;
}

static inline int bit(const uint8_t *mask, int64_t c) { return (mask[c >> 3] >> (c & 7)) & 1; }

/* ---------------------------------------------------------------- generic C */

static void rows_generic(const layer_t *L, int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; r++) {
        const uint8_t *mask = L->bitmask + r * L->mask_stride;
        for (int64_t t0 = 0; t0 < L->tokens; t0 += GENERIC_TOKENS) {
            int64_t nt = L->tokens - t0 < GENERIC_TOKENS ? L->tokens - t0 : GENERIC_TOKENS;
            float acc[GENERIC_TOKENS] = {0};
            const uint8_t *v = L->values + r * L->kept * L->width;
            for (int64_t c = 0; c < L->cols; c++) {
                if (!bit(mask, c))
                    continue;
                float w = load_value(v, L->width);
                v += L->width;
                for (int64_t t = 0; t < nt; t++)
                    acc[t] += w * L->x[(t0 + t) * L->cols + c];
            }
            for (int64_t t = 0; t < nt; t++)
                L->out[(t0 + t) * L->rows + r] = acc[t] + (L->bias ? L->bias[r] : 0.0f);
        }
    }
}

static void decompress_generic(const layer_t *L, int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; r++) {
        const uint8_t *mask = L->bitmask + r * L->mask_stride;
        const uint8_t *v = L->values + r * L->kept * L->width;
        uint8_t *dst = (uint8_t *)L->dense + r * L->cols * L->width;
        memset(dst, 0, (size_t)(L->cols * L->width));
        for (int64_t c = 0; c < L->cols; c++)
            if (bit(mask, c)) {
                memcpy(dst + c * L->width, v, (size_t)L->width);
                v += L->width;
            }
    }
}

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define HAVE_X86 1

/* Switch cases running `row` on a block of nt tokens, nt a compile-time constant in each case so
 * the per-token accumulators stay in registers. */
#define TOKEN_CASES_4(row, dtype)                                                                 \
    case 1: row(L, r, t0, 1, dtype); break;                                                       \
    case 2: row(L, r, t0, 2, dtype); break;                                                       \
    case 3: row(L, r, t0, 3, dtype); break;                                                       \
    default: row(L, r, t0, 4, dtype); break;
#define TOKEN_CASES_8(row, dtype)                                                                 \
    case 1: row(L, r, t0, 1, dtype); break;                                                       \
    case 2: row(L, r, t0, 2, dtype); break;                                                       \
    case 3: row(L, r, t0, 3, dtype); break;                                                       \
    case 4: row(L, r, t0, 4, dtype); break;                                                       \
    case 5: row(L, r, t0, 5, dtype); break;                                                       \
    case 6: row(L, r, t0, 6, dtype); break;                                                       \
    case 7: row(L, r, t0, 7, dtype); break;                                                       \
    default: row(L, r, t0, 8, dtype); break;

/* Tokens per pass over a row: as many as `most`, but few enough that their inputs stay in a 32 KiB
 * L1 (8 tokens of 1536 inputs were measured 1.7x slower than dense at 8 tokens, 4 at a time faster). */
static int64_t token_block(int64_t cols, int64_t most) {
    int64_t fit = L1_INPUT_BYTES / (cols * (int64_t)sizeof(float));
    return fit < 1 ? 1 : fit > most ? most : fit;
}

/* ---------------------------------------------------------------- AVX-512 */

#define AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,avx2,fma,popcnt")))

/* The next popcount(m) stored values of a row, expanded into the set lanes of m; *v advances. */
AVX512 INLINE __m512 expand16(const uint8_t **v, uint32_t m, const int dtype) {
    uint32_t count = (uint32_t)__builtin_popcount(m);
    __m512 w;
    if (dtype == DTYPE_F32) {
        w = _mm512_maskz_expandloadu_ps((__mmask16)m, *v);
        *v += 4 * count;
    } else {
        __m256i h = _mm256_maskz_loadu_epi16((__mmask16)((1u << count) - 1u), *v);
        w = _mm512_maskz_expand_ps((__mmask16)m, _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16)));
        *v += 2 * count;
    }
    return w;
}

/* Mask bits of the (up to) 16 columns from c, cut at the row's end. */
INLINE uint32_t mask16(const uint8_t *mask, int64_t c, int64_t cols) {
    uint32_t m = mask[c >> 3];
    if (cols - c > 8)
        m |= (uint32_t)mask[(c >> 3) + 1] << 8;
    return cols - c >= 16 ? m : m & ((1u << (cols - c)) - 1u);
}

/* One row against nt tokens. Two accumulator chains (even and odd 16-column chunks) so that
 * consecutive FMAs do not wait on each other at one token. */
AVX512 INLINE void row_avx512(const layer_t *L, int64_t r, int64_t t0, const int nt, const int dtype) {
    const int64_t cols = L->cols;
    const float *x = L->x + t0 * cols;
    const uint8_t *v = L->values + r * L->kept * (dtype == DTYPE_F32 ? 4 : 2);
    const uint8_t *mask = L->bitmask + r * L->mask_stride;
    __m512 even[8], odd[8];
    for (int t = 0; t < nt; t++)
        even[t] = odd[t] = _mm512_setzero_ps();
    int64_t c = 0;
    for (; c + 32 <= cols; c += 32) {
        uint32_t m;
        memcpy(&m, mask + (c >> 3), 4);
        __m512 w0 = expand16(&v, m & 0xFFFFu, dtype), w1 = expand16(&v, m >> 16, dtype);
        for (int t = 0; t < nt; t++) {
            even[t] = _mm512_fmadd_ps(w0, _mm512_loadu_ps(x + t * cols + c), even[t]);
            odd[t] = _mm512_fmadd_ps(w1, _mm512_loadu_ps(x + t * cols + c + 16), odd[t]);
        }
    }
    for (; c < cols; c += 16) {
        __mmask16 lanes = cols - c >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << (cols - c)) - 1u);
        __m512 w = expand16(&v, mask16(mask, c, cols), dtype);
        for (int t = 0; t < nt; t++)
            even[t] = _mm512_fmadd_ps(w, _mm512_maskz_loadu_ps(lanes, x + t * cols + c), even[t]);
    }
    for (int t = 0; t < nt; t++)
        L->out[(t0 + t) * L->rows + r] = _mm512_reduce_add_ps(_mm512_add_ps(even[t], odd[t])) + (L->bias ? L->bias[r] : 0.0f);
}

AVX512 static void rows_avx512(const layer_t *L, int64_t r0, int64_t r1) {
    int64_t block = token_block(L->cols, 8);
    for (int64_t r = r0; r < r1; r++)
        for (int64_t t0 = 0; t0 < L->tokens; t0 += block) {
            int64_t nt = L->tokens - t0 < block ? L->tokens - t0 : block;
            if (L->width == 4) {
                switch (nt) { TOKEN_CASES_8(row_avx512, DTYPE_F32) }
            } else {
                switch (nt) { TOKEN_CASES_8(row_avx512, DTYPE_BF16) }
            }
        }
}

AVX512 INLINE void decompress_row_avx512(const layer_t *L, int64_t r, const int dtype) {
    const uint8_t *mask = L->bitmask + r * L->mask_stride, *v = L->values + r * L->kept * L->width;
    for (int64_t c = 0; c < L->cols; c += 16) {
        __mmask16 lanes = L->cols - c >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << (L->cols - c)) - 1u);
        __m512 w = expand16(&v, mask16(mask, c, L->cols), dtype);
        if (dtype == DTYPE_F32) {
            _mm512_mask_storeu_ps((float *)L->dense + r * L->cols + c, lanes, w);
        } else {
            __m256i h = _mm512_cvtepi32_epi16(_mm512_srli_epi32(_mm512_castps_si512(w), 16));
            _mm256_mask_storeu_epi16((uint16_t *)L->dense + r * L->cols + c, lanes, h);
        }
    }
}

AVX512 static void decompress_avx512(const layer_t *L, int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; r++) {
        if (L->width == 4)
            decompress_row_avx512(L, r, DTYPE_F32);
        else
            decompress_row_avx512(L, r, DTYPE_BF16);
    }
}

/* ---------------------------------------------------------------- AVX2 */

#define AVX2 __attribute__((target("avx2,fma,popcnt")))

/* PERMUTE[m][j]: which loaded value lands in lane j for mask byte m (lanes not in m are zeroed). */
static int32_t PERMUTE[256][8];

__attribute__((constructor)) static void init_tables(void) {
    for (int m = 0; m < 256; m++)
        for (int j = 0, rank = 0; j < 8; j++)
            PERMUTE[m][j] = (m >> j) & 1 ? rank++ : 0;
}

/* Eight values from p as fp32; near the end of the buffer only the bytes before `end` are read. */
AVX2 INLINE __m256 load8(const uint8_t *p, const uint8_t *end, const int dtype) {
    const int64_t width = dtype == DTYPE_F32 ? 4 : 2;
    uint8_t tail[32] = {0};
    if (p + 8 * width > end) {
        memcpy(tail, p, (size_t)(end - p));
        p = tail;
    }
    if (dtype == DTYPE_F32)
        return _mm256_loadu_ps((const float *)p);
    __m128i h = _mm_loadu_si128((const __m128i *)p);
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
}

/* The next popcount(m) stored values expanded into the set lanes of the mask byte m. */
AVX2 INLINE __m256 expand8(const uint8_t **v, const uint8_t *end, uint32_t m, const int dtype) {
    const __m256i bits = _mm256_setr_epi32(1, 2, 4, 8, 16, 32, 64, 128);
    __m256 w = _mm256_permutevar8x32_ps(load8(*v, end, dtype), _mm256_loadu_si256((const __m256i *)PERMUTE[m]));
    __m256i keep = _mm256_cmpeq_epi32(_mm256_and_si256(_mm256_set1_epi32((int)m), bits), bits);
    *v += (dtype == DTYPE_F32 ? 4 : 2) * __builtin_popcount(m);
    return _mm256_and_ps(w, _mm256_castsi256_ps(keep));
}

AVX2 INLINE __m256 load_x8(const float *x, int64_t left) {
    if (left >= 8)
        return _mm256_loadu_ps(x);
    float tail[8] = {0};
    memcpy(tail, x, (size_t)left * sizeof(float));
    return _mm256_loadu_ps(tail);
}

AVX2 INLINE float hsum8(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

/* One row against nt <= 4 tokens (16 ymm registers allow no more), two chains as in AVX-512. */
AVX2 INLINE void row_avx2(const layer_t *L, int64_t r, int64_t t0, const int nt, const int dtype) {
    const int64_t cols = L->cols, width = dtype == DTYPE_F32 ? 4 : 2;
    const uint8_t *end = L->values + L->rows * L->kept * width;
    const float *x = L->x + t0 * cols;
    const uint8_t *v = L->values + r * L->kept * width, *mask = L->bitmask + r * L->mask_stride;
    __m256 even[4], odd[4];
    for (int t = 0; t < nt; t++)
        even[t] = odd[t] = _mm256_setzero_ps();
    int64_t c = 0;
    for (; c + 16 <= cols; c += 16) {
        __m256 w0 = expand8(&v, end, mask[c >> 3], dtype), w1 = expand8(&v, end, mask[(c >> 3) + 1], dtype);
        for (int t = 0; t < nt; t++) {
            even[t] = _mm256_fmadd_ps(w0, _mm256_loadu_ps(x + t * cols + c), even[t]);
            odd[t] = _mm256_fmadd_ps(w1, _mm256_loadu_ps(x + t * cols + c + 8), odd[t]);
        }
    }
    for (; c < cols; c += 8) {
        uint32_t cut = cols - c >= 8 ? 0xFFu : (1u << (cols - c)) - 1u;
        __m256 w = expand8(&v, end, mask[c >> 3] & cut, dtype);
        for (int t = 0; t < nt; t++)
            even[t] = _mm256_fmadd_ps(w, load_x8(x + t * cols + c, cols - c), even[t]);
    }
    for (int t = 0; t < nt; t++)
        L->out[(t0 + t) * L->rows + r] = hsum8(_mm256_add_ps(even[t], odd[t])) + (L->bias ? L->bias[r] : 0.0f);
}

AVX2 static void rows_avx2(const layer_t *L, int64_t r0, int64_t r1) {
    int64_t block = token_block(L->cols, 4);
    for (int64_t r = r0; r < r1; r++)
        for (int64_t t0 = 0; t0 < L->tokens; t0 += block) {
            int64_t nt = L->tokens - t0 < block ? L->tokens - t0 : block;
            if (L->width == 4) {
                switch (nt) { TOKEN_CASES_4(row_avx2, DTYPE_F32) }
            } else {
                switch (nt) { TOKEN_CASES_4(row_avx2, DTYPE_BF16) }
            }
        }
}

AVX2 INLINE void decompress_row_avx2(const layer_t *L, int64_t r, const int dtype) {
    const uint8_t *mask = L->bitmask + r * L->mask_stride, *v = L->values + r * L->kept * L->width;
    const uint8_t *end = L->values + L->rows * L->kept * L->width;
    int64_t c = 0;
    for (; c + 8 <= L->cols; c += 8) {
        __m256 w = expand8(&v, end, mask[c >> 3], dtype);
        if (dtype == DTYPE_F32) {
            _mm256_storeu_ps((float *)L->dense + r * L->cols + c, w);
        } else {
            __m256i h = _mm256_srli_epi32(_mm256_castps_si256(w), 16);
            __m128i packed = _mm_packus_epi32(_mm256_castsi256_si128(h), _mm256_extracti128_si256(h, 1));
            _mm_storeu_si128((__m128i *)((uint16_t *)L->dense + r * L->cols + c), packed);
        }
    }
    uint8_t *dst = (uint8_t *)L->dense + r * L->cols * L->width;
    for (; c < L->cols; c++) {
        memset(dst + c * L->width, 0, (size_t)L->width);
        if (bit(mask, c)) {
            memcpy(dst + c * L->width, v, (size_t)L->width);
            v += L->width;
        }
    }
}

AVX2 static void decompress_avx2(const layer_t *L, int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; r++) {
        if (L->width == 4)
            decompress_row_avx2(L, r, DTYPE_F32);
        else
            decompress_row_avx2(L, r, DTYPE_BF16);
    }
}
#endif

/* ---------------------------------------------------------------- dispatch */

static int best_isa(void) {
#ifdef HAVE_X86
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl"))
        return ISA_AVX512;
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"))
        return ISA_AVX2;
#endif
    return ISA_GENERIC;
}

/* The ISA that would run for `requested` (ISA_AUTO = the best this CPU has), or ERR_ISA. */
int eggs_nm_isa(int requested) {
    int best = best_isa();
    if (requested == ISA_AUTO)
        return best;
    return requested >= ISA_GENERIC && requested <= best ? requested : ERR_ISA;
}

/* Whether the library was built with OpenMP (otherwise `threads` is ignored). */
int eggs_nm_openmp(void) {
#ifdef _OPENMP
    return 1;
#else
    return 0;
#endif
}

typedef void (*rows_fn)(const layer_t *, int64_t, int64_t);

/* Run `kernel` over all rows, split into one contiguous range per thread, each thread getting at
 * least GRAIN multiply-adds (torch's own grain size): waking threads costs more than tiny layers
 * take. ERR_BITMASK (and that range skipped) if a row's mask does not mark exactly `kept` columns. */
static int split_rows(const layer_t *L, rows_fn kernel, int threads, int64_t work) {
    int64_t most = work / GRAIN < L->rows ? work / GRAIN : L->rows;
    int parts = threads < 1 ? 1 : threads, bad = 0;
    if (parts > most)
        parts = most < 1 ? 1 : (int)most;
#pragma omp parallel for num_threads(parts) schedule(static) if (parts > 1) reduction(| : bad)
    for (int part = 0; part < parts; part++) {
        int64_t r0 = L->rows * part / parts, r1 = L->rows * (part + 1) / parts;
        if (rows_consistent(L, r0, r1 - r0))
            kernel(L, r0, r1);
        else
            bad = 1;
    }
    return bad ? ERR_BITMASK : 0;
}

static int pick(int requested, int dtype, rows_fn *rows, rows_fn *decompress, int64_t *width) {
    int isa = eggs_nm_isa(requested);
    if (isa < 0)
        return ERR_ISA;
    if (dtype != DTYPE_F32 && dtype != DTYPE_BF16)
        return ERR_DTYPE;
    *width = dtype == DTYPE_F32 ? 4 : 2;
    *rows = rows_generic;
    *decompress = decompress_generic;
#ifdef HAVE_X86
    if (isa == ISA_AVX512) {
        *rows = rows_avx512;
        *decompress = decompress_avx512;
    } else if (isa == ISA_AVX2) {
        *rows = rows_avx2;
        *decompress = decompress_avx2;
    }
#endif
    return isa;
}

/* y = x @ W^T + bias from the compact form; returns the ISA used, or a negative error code. */
int eggs_nm_linear(const float *x, int64_t tokens, const void *values, int dtype, const uint8_t *bitmask,
                   int64_t rows, int64_t cols, int64_t kept, const float *bias, float *out, int threads,
                   int requested_isa) {
    rows_fn kernel, unused;
    int64_t width;
    int isa = pick(requested_isa, dtype, &kernel, &unused, &width);
    if (isa < 0 || tokens <= 0 || rows <= 0)
        return isa;
    layer_t L = {x, values, bitmask, bias, out, NULL, tokens, rows, cols, kept, (cols + 7) / 8, width};
    int error = split_rows(&L, kernel, threads, rows * kept * tokens);
    return error ? error : isa;
}

/* The dense (rows, cols) weight, in the values' dtype, with zeros where nothing is stored. */
int eggs_nm_decompress(const void *values, int dtype, const uint8_t *bitmask, int64_t rows, int64_t cols,
                       int64_t kept, void *dense, int threads, int requested_isa) {
    rows_fn unused, kernel;
    int64_t width;
    int isa = pick(requested_isa, dtype, &unused, &kernel, &width);
    if (isa < 0 || rows <= 0)
        return isa;
    layer_t L = {NULL, values, bitmask, NULL, NULL, dense, 0, rows, cols, kept, (cols + 7) / 8, width};
    int error = split_rows(&L, kernel, threads, rows * cols);
    return error ? error : isa;
}
