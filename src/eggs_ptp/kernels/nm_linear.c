/* N:M sparse linear layers computed straight from the compact format.
 *
 * A layer (rows = out, cols = in) is stored as
 *   values  (rows, kept)           the stored weights of each row, in column order, fp32 or bf16;
 *   bitmask (rows, ceil(cols/8))   bit j of byte k set when column 8k+j is stored (LSB first).
 * That is a bitmap-compressed row, so the kernels never need the group size M: they walk each row
 * 16 (AVX-512) or 8 (AVX2) columns at a time, expand the next popcount(mask) stored values into
 * their columns (zeros elsewhere) and multiply-add against the dense input. Rows whose mask bytes
 * all mark 4 columns (2:4, 4:8, 1:2) take a faster path on both: 16 columns then own 8 consecutive
 * values, loaded whole, and the inputs of those columns are gathered to them with one permute per
 * mask byte, so no lane multiplies a zero and no expand instruction runs (AMD Zen 5's vexpandps
 * made the expanding AVX-512 path slower than dense there). One-token decode is memory-bound, so
 * reading ~N/M of the weight bytes is what makes it faster than a dense GEMV.
 *
 *   y (tokens, rows) fp32 = x (tokens, cols) fp32 @ W^T + bias (fp32, may be NULL)
 *
 * Quantized layers keep the same bitmask and store integers instead, dequantized in registers:
 *   qvalues  int8 (rows, kept), or uint8 (rows, ceil(kept/2)) holding 4-bit values, value k of a
 *            row in the low nibble of byte k/2 when k is even, in the high nibble when k is odd;
 *   scales   IEEE half (rows, groups) and zeros uint8 (rows, groups) or NULL, column c of a row in
 *            group c / group_size, group_size a multiple of 32 or >= cols (one group per row);
 *   w = ((float)q - (float)z) * (float)scale, exact in fp32; z = zeros[r, g], else 0 (int8) or 8 (int4).
 *
 * Rows are split over OpenMP threads and walked one at a time, so the values are read as one
 * sequential stream (blocking several rows was measured 2x slower at one token: more streams, no
 * gain). Each expanded chunk is used for up to 8 tokens (4 with AVX2) from registers. The
 * AVX-512 and AVX2 variants are compiled with target attributes and picked at run time, so one
 * build serves any x86-64 CPU; the generic C loop serves the rest. Every row's bitmask is checked
 * to mark exactly `kept` columns before it is used, so a corrupt mask is refused, never over-read:
 * on every call by eggs_nm_linear / eggs_nm_qlinear, once by eggs_nm_mask_info for the prepared
 * entry points (eggs_nm_*linear_prepared), which layers called once per decoded token use.
 * On AVX-512 the quantized whole-byte rows (2:4) dequantize 16 values where they lie and spread
 * them to their columns with two register expands (vexpandps), four accumulator chains at one or
 * two tokens; that was ~10% faster than gathering the inputs with table permutes, as AVX2 does.
 */
#include <stdint.h>
#include <string.h>

enum { ISA_AUTO = 0, ISA_GENERIC = 1, ISA_AVX2 = 2, ISA_AVX512 = 3 };
enum { DTYPE_F32 = 0, DTYPE_BF16 = 1 };
enum { ERR_ISA = -1, ERR_DTYPE = -2, ERR_BITMASK = -3, ERR_GROUP = -4 };

#define GENERIC_TOKENS 8
#define L1_INPUT_BYTES 24576
#define GRAIN 32768
/* Bytes an AVX2 load may read past a row's last stored value (8 fp32 values); rows that end
 * closer than this to the end of the values check their loads. */
#define SLACK 32
#define INLINE static inline __attribute__((always_inline))

typedef struct {
    const float *x;
    const uint8_t *values; /* fp32, bf16 or quantized, addressed in bytes */
    const uint8_t *bitmask;
    const float *bias;
    float *out;
    void *dense;
    int64_t tokens, rows, cols, kept, mask_stride, width;
    /* What mask_info found of every row (MASK_*): whole bytes, whole bytes in 2:4 pairs, every column
     * stored (a dense layer), or nothing: rows are checked as they come. */
    int64_t whole_bytes;
} layer_t;

/* mask_info's findings. MASK_BYTES: each mask byte (of whole 16-column chunks) marks 4 columns;
 * MASK_PAIRS: also each nibble of whole 32-column chunks marks 2 (2:4); MASK_FULL: every column is
 * stored (kept == cols, a quantized dense layer such as an output head). */
enum { MASK_ROWS = 0, MASK_BYTES = 1, MASK_PAIRS = 2, MASK_FULL = 3 };

/* Whether mask_info found whole bytes in every row, so that no row need be checked for them. */
INLINE int known_bytes(const layer_t *L) { return L->whole_bytes == MASK_BYTES || L->whole_bytes == MASK_PAIRS; }

/* A quantized layer: `base` (first, so row kernels take either) holds the qvalues as its values. */
typedef struct {
    layer_t base;
    const uint16_t *scales;
    const uint8_t *zeros;
    int64_t bits, stride, group_size, groups, zero; /* stride: qvalue bytes per row */
} qlayer_t;

INLINE int64_t row_count(const layer_t *L, int64_t r) {
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
INLINE int consistent(const layer_t *L, int64_t r, int64_t n) {
    for (int64_t i = 0; i < n; i++)
        if (row_count(L, r + i) != L->kept)
            return 0;
    return 1;
}

static int rows_consistent(const layer_t *L, int64_t r, int64_t n) { return consistent(L, r, n); }

/* Whether each nibble of the n mask bytes marks exactly 2 columns (a 2:4 row): counted 16 nibbles
 * at a time in a 64-bit word, each nibble's count left in place. */
static int nibbles_hold_2(const uint8_t *mask, int64_t n) {
    const uint64_t twos = 0x2222222222222222ull, ones = 0x5555555555555555ull, pairs = 0x3333333333333333ull;
    for (int64_t i = 0; i < n; i += 8) {
        uint64_t word = 0;
        memcpy(&word, mask + i, n - i < 8 ? (size_t)(n - i) : 8);
        const uint64_t used = n - i < 8 ? (1ull << (8 * (n - i))) - 1 : ~0ull;
        word -= (word >> 1) & ones;
        word = (word & pairs) + ((word >> 2) & pairs);
        if ((word & used) != (twos & used))
            return 0;
    }
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

/* IEEE half to float, exact for every input (subnormals included), without needing F16C. */
static inline float half_to_float(uint16_t h) {
    uint32_t sign = (uint32_t)(h >> 15) << 31, exponent = (h >> 10) & 31u, fraction = h & 1023u;
    if (exponent == 0) {
        float f = (float)fraction * 0x1p-24f;
        return sign ? -f : f;
    }
    uint32_t bits = sign | (exponent == 31 ? 0x7F800000u : (exponent + 112) << 23) | fraction << 13;
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

static inline float group_scale(const qlayer_t *Q, int64_t r, int64_t g) {
    return half_to_float(Q->scales[r * Q->groups + g]);
}

static inline int32_t group_zero(const qlayer_t *Q, int64_t r, int64_t g) {
    return Q->zeros ? Q->zeros[r * Q->groups + g] : (int32_t)Q->zero;
}

/* The column after the group that starts at column c. */
static inline int64_t group_end(const qlayer_t *Q, int64_t c) {
    return Q->base.cols - c > Q->group_size ? c + Q->group_size : Q->base.cols;
}

static inline int32_t qvalue(const uint8_t *row, int64_t k, int64_t bits) {
    return bits == 8 ? (int8_t)row[k] : (row[k >> 1] >> (4 * (k & 1))) & 15;
}

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

static void qrows_generic(const layer_t *layer, int64_t r0, int64_t r1) {
    const qlayer_t *Q = (const qlayer_t *)layer;
    const layer_t *L = layer;
    for (int64_t r = r0; r < r1; r++) {
        const uint8_t *mask = L->bitmask + r * L->mask_stride, *row = L->values + r * Q->stride;
        for (int64_t t0 = 0; t0 < L->tokens; t0 += GENERIC_TOKENS) {
            int64_t nt = L->tokens - t0 < GENERIC_TOKENS ? L->tokens - t0 : GENERIC_TOKENS;
            float acc[GENERIC_TOKENS] = {0};
            for (int64_t g = 0, c = 0, k = 0; c < L->cols; g++) {
                const float s = group_scale(Q, r, g);
                const int32_t z = group_zero(Q, r, g);
                for (int64_t end = group_end(Q, c); c < end; c++) {
                    if (!bit(mask, c))
                        continue;
                    float w = (float)(qvalue(row, k++, Q->bits) - z) * s;
                    for (int64_t t = 0; t < nt; t++)
                        acc[t] += w * L->x[(t0 + t) * L->cols + c];
                }
            }
            for (int64_t t = 0; t < nt; t++)
                L->out[(t0 + t) * L->rows + r] = acc[t] + (L->bias ? L->bias[r] : 0.0f);
        }
    }
}

static void qdecompress_generic(const layer_t *layer, int64_t r0, int64_t r1) {
    const qlayer_t *Q = (const qlayer_t *)layer;
    const layer_t *L = layer;
    for (int64_t r = r0; r < r1; r++) {
        const uint8_t *mask = L->bitmask + r * L->mask_stride, *row = L->values + r * Q->stride;
        float *dst = (float *)L->dense + r * L->cols;
        for (int64_t g = 0, c = 0, k = 0; c < L->cols; g++) {
            const float s = group_scale(Q, r, g);
            const int32_t z = group_zero(Q, r, g);
            for (int64_t end = group_end(Q, c); c < end; c++)
                dst[c] = bit(mask, c) ? (float)(qvalue(row, k++, Q->bits) - z) * s : 0.0f;
        }
    }
}

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define HAVE_X86 1

/* A switch running `row` on a block of nt tokens, nt a compile-time constant in each case so the
 * per-token accumulators stay in registers; the other arguments follow nt. */
#define TOKENS_4(row, ...)                                                                        \
    switch (nt) {                                                                                 \
    case 1: row(L, r, t0, 1, __VA_ARGS__); break;                                                 \
    case 2: row(L, r, t0, 2, __VA_ARGS__); break;                                                 \
    case 3: row(L, r, t0, 3, __VA_ARGS__); break;                                                 \
    default: row(L, r, t0, 4, __VA_ARGS__); break;                                                \
    }
#define TOKENS_8(row, ...)                                                                        \
    switch (nt) {                                                                                 \
    case 1: row(L, r, t0, 1, __VA_ARGS__); break;                                                 \
    case 2: row(L, r, t0, 2, __VA_ARGS__); break;                                                 \
    case 3: row(L, r, t0, 3, __VA_ARGS__); break;                                                 \
    case 4: row(L, r, t0, 4, __VA_ARGS__); break;                                                 \
    case 5: row(L, r, t0, 5, __VA_ARGS__); break;                                                 \
    case 6: row(L, r, t0, 6, __VA_ARGS__); break;                                                 \
    case 7: row(L, r, t0, 7, __VA_ARGS__); break;                                                 \
    default: row(L, r, t0, 8, __VA_ARGS__); break;                                                \
    }

/* The whole-byte quantized row variants (bits, grouped, offset): int4; int8 with one group and no
 * zero points, whose scale multiplies the row's sum once; any other int8, scaling each chunk. The
 * other rows take QUANT_BITS's (bits): (q - z) * s per chunk, which serves any layer. */
#define QUANT_KINDS(TOKENS, row, ...)                                                             \
    if (L->bits == 4) {                                                                           \
        TOKENS(row, 4, 1, 1, ##__VA_ARGS__)                                                       \
    } else if (L->groups == 1 && !L->zeros) {                                                     \
        TOKENS(row, 8, 0, 0, ##__VA_ARGS__)                                                       \
    } else {                                                                                      \
        TOKENS(row, 8, 1, 1, ##__VA_ARGS__)                                                       \
    }
#define QUANT_BITS(TOKENS, row, ...)                                                              \
    if (L->bits == 4) {                                                                           \
        TOKENS(row, 4, ##__VA_ARGS__)                                                             \
    } else {                                                                                      \
        TOKENS(row, 8, ##__VA_ARGS__)                                                             \
    }

/* Tokens per pass over a row: as many as `most`, but few enough that their inputs stay in a 32 KiB
 * L1 (8 tokens of 1536 inputs were measured 1.7x slower than dense at 8 tokens, 4 at a time faster). */
static int64_t token_block(int64_t cols, int64_t most) {
    int64_t fit = L1_INPUT_BYTES / (cols * (int64_t)sizeof(float));
    return fit < 1 ? 1 : fit > most ? most : fit;
}

/* rows_consistent with the popcnt instruction: a portable build counts bits in a library call,
 * which took a quarter of a 576-column layer's time at one token. */
__attribute__((target("popcnt"))) static int rows_consistent_popcnt(const layer_t *L, int64_t r, int64_t n) {
    return consistent(L, r, n);
}

/* For mask byte m: PERMUTE[m][j] is the loaded value that lands in lane j, LANES[m][j] all ones
 * where column j is stored; for a byte of 4 stored columns COMPRESS[m][j] is the (j % 4)-th of them,
 * so one permute gathers their inputs into either half of a register. NIBBLE_BYTE[o][j] and
 * NIBBLE_SHIFT[o][j]: the byte and bit offset of the j-th 4-bit value from nibble o (0 or 1) on. */
static int32_t PERMUTE[256][8], LANES[256][8], COMPRESS[256][8], NIBBLE_BYTE[2][16], NIBBLE_SHIFT[2][16];

__attribute__((constructor)) static void init_tables(void) {
    for (int m = 0; m < 256; m++) {
        int at[8] = {0}, rank = 0;
        for (int j = 0; j < 8; j++) {
            PERMUTE[m][j] = (m >> j) & 1 ? rank : 0;
            LANES[m][j] = (m >> j) & 1 ? -1 : 0;
            if ((m >> j) & 1)
                at[rank++] = j;
        }
        for (int j = 0; j < 8; j++)
            COMPRESS[m][j] = at[j & 3];
    }
    for (int o = 0; o < 2; o++)
        for (int j = 0; j < 16; j++) {
            NIBBLE_BYTE[o][j] = (o + j) >> 1;
            NIBBLE_SHIFT[o][j] = 4 * ((o + j) & 1);
        }
}

/* ---------------------------------------------------------------- AVX2 */

#define AVX2 __attribute__((target("avx2,fma,popcnt")))

/* Eight values at p as fp32. */
AVX2 INLINE __m256 values8(const uint8_t *p, const int dtype) {
    if (dtype == DTYPE_F32)
        return _mm256_loadu_ps((const float *)p);
    __m128i h = _mm_loadu_si128((const __m128i *)p);
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
}

/* Eight values from p as fp32; careful: near the end of the buffer, read only the bytes before `end`. */
AVX2 INLINE __m256 load8(const uint8_t *p, const uint8_t *end, const int dtype, const int careful) {
    uint8_t tail[32] = {0};
    if (careful && p + 8 * (dtype == DTYPE_F32 ? 4 : 2) > end) {
        memcpy(tail, p, (size_t)(end - p));
        p = tail;
    }
    return values8(p, dtype);
}

AVX2 INLINE __m256i table8(const int32_t *entry) { return _mm256_loadu_si256((const __m256i *)entry); }

/* The next popcount(m) stored values expanded into the set lanes of the mask byte m, zeros elsewhere. */
AVX2 INLINE __m256 expand8(const uint8_t **v, const uint8_t *end, uint32_t m, const int dtype, const int careful) {
    __m256 w = _mm256_permutevar8x32_ps(load8(*v, end, dtype, careful), table8(PERMUTE[m]));
    *v += (dtype == DTYPE_F32 ? 4 : 2) * __builtin_popcount(m);
    return _mm256_and_ps(w, _mm256_castsi256_ps(table8(LANES[m])));
}

AVX2 INLINE __m256 load_x8(const float *x, int64_t left) {
    if (left >= 8)
        return _mm256_loadu_ps(x);
    float tail[8] = {0};
    memcpy(tail, x, (size_t)left * sizeof(float));
    return _mm256_loadu_ps(tail);
}

/* The inputs of the 8 stored columns among x[0..15] when both mask bytes hold 4, in column order;
 * lo and hi are the bytes' COMPRESS entries. */
AVX2 INLINE __m256 gather16(const float *x, __m256i lo, __m256i hi) {
    return _mm256_blend_ps(_mm256_permutevar8x32_ps(_mm256_loadu_ps(x), lo),
                           _mm256_permutevar8x32_ps(_mm256_loadu_ps(x + 8), hi), 0xF0);
}

/* Whether each of the 32 bytes marks exactly 4 columns, by a nibble popcount table. */
AVX2 INLINE int hold_4(const uint8_t *bytes) {
    const __m256i counts = _mm256_setr_epi8(0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4, 0, 1, 1, 2, 1, 2, 2, 3, 1,
                                            2, 2, 3, 2, 3, 3, 4);
    const __m256i low = _mm256_set1_epi8(15), b = _mm256_loadu_si256((const __m256i *)bytes);
    __m256i count = _mm256_add_epi8(_mm256_shuffle_epi8(counts, _mm256_and_si256(b, low)),
                                    _mm256_shuffle_epi8(counts, _mm256_and_si256(_mm256_srli_epi16(b, 4), low)));
    return _mm256_movemask_epi8(_mm256_cmpeq_epi8(count, _mm256_set1_epi8(4))) == -1;
}

/* Whether each of the n mask bytes marks exactly 4 columns (rows at 2:4, 4:8, 1:2): row_halves applies. */
AVX2 static int bytes_hold_4(const uint8_t *mask, int64_t n) {
    if (n < 32) {
        for (int64_t i = 0; i < n; i++)
            if (__builtin_popcount(mask[i]) != 4)
                return 0;
        return 1;
    }
    for (int64_t i = 0; i + 32 < n; i += 32)
        if (!hold_4(mask + i))
            return 0;
    return hold_4(mask + n - 32); /* the last 32 bytes, overlapping the previous ones */
}

AVX2 INLINE float hsum8(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

/* Columns c.. to the row's end (fewer than 16), 8 at a time into acc, loads checked against `end`.
 * Not inlined: it runs once a row, and a copy in every row variant tripled the compile time. */
AVX2 static void tail_avx2(const float *x, int64_t cols, int64_t c, const uint8_t *v, const uint8_t *end,
                           const uint8_t *mask, __m256 *acc, int nt, int dtype) {
    for (; c < cols; c += 8) {
        uint32_t cut = cols - c >= 8 ? 0xFFu : (1u << (cols - c)) - 1u;
        __m256 w = expand8(&v, end, mask[c >> 3] & cut, dtype, 1);
        for (int t = 0; t < nt; t++)
            acc[t] = _mm256_fmadd_ps(w, load_x8(x + t * cols + c, cols - c), acc[t]);
    }
}

/* One row against nt <= 4 tokens (16 ymm registers allow no more), two chains as in AVX-512. Loads
 * are checked against the end of the values only where `careful` (the last rows). */
AVX2 INLINE void row_avx2(const layer_t *L, int64_t r, int64_t t0, const int nt, const int dtype, const int careful) {
    const int64_t cols = L->cols, width = dtype == DTYPE_F32 ? 4 : 2;
    const uint8_t *end = L->values + L->rows * L->kept * width;
    const float *x = L->x + t0 * cols;
    const uint8_t *v = L->values + r * L->kept * width, *mask = L->bitmask + r * L->mask_stride;
    __m256 even[4], odd[4];
    for (int t = 0; t < nt; t++)
        even[t] = odd[t] = _mm256_setzero_ps();
    int64_t c = 0;
    for (; c + 16 <= cols; c += 16) {
        __m256 w0 = expand8(&v, end, mask[c >> 3], dtype, careful);
        __m256 w1 = expand8(&v, end, mask[(c >> 3) + 1], dtype, careful);
        for (int t = 0; t < nt; t++) {
            even[t] = _mm256_fmadd_ps(w0, _mm256_loadu_ps(x + t * cols + c), even[t]);
            odd[t] = _mm256_fmadd_ps(w1, _mm256_loadu_ps(x + t * cols + c + 8), odd[t]);
        }
    }
    tail_avx2(x, cols, c, v, end, mask, even, nt, dtype);
    for (int t = 0; t < nt; t++)
        L->out[(t0 + t) * L->rows + r] = hsum8(_mm256_add_ps(even[t], odd[t])) + (L->bias ? L->bias[r] : 0.0f);
}

/* row_avx2 for a row whose mask bytes (those of whole 16-column chunks) each mark 4 columns: 16
 * columns then own 8 consecutive values, loaded whole, and their inputs are gathered to them, so no
 * lane multiplies a zero and no value is loaded twice. The AVX-512 rows run it too, with nt up to 8
 * (32 registers). */
AVX2 INLINE void row_halves(const layer_t *L, int64_t r, int64_t t0, const int nt, const int dtype) {
    const int64_t cols = L->cols, width = dtype == DTYPE_F32 ? 4 : 2;
    const uint8_t *end = L->values + L->rows * L->kept * width;
    const float *x = L->x + t0 * cols;
    const uint8_t *v = L->values + r * L->kept * width, *mask = L->bitmask + r * L->mask_stride;
    __m256 even[8], odd[8];
    for (int t = 0; t < nt; t++)
        even[t] = odd[t] = _mm256_setzero_ps();
    int64_t c = 0;
    for (; c + 32 <= cols; c += 32, v += 16 * width) {
        const uint8_t *m = mask + (c >> 3);
        __m256i i0 = table8(COMPRESS[m[0]]), i1 = table8(COMPRESS[m[1]]);
        __m256i i2 = table8(COMPRESS[m[2]]), i3 = table8(COMPRESS[m[3]]);
        __m256 w0 = values8(v, dtype), w1 = values8(v + 8 * width, dtype);
        for (int t = 0; t < nt; t++) {
            even[t] = _mm256_fmadd_ps(w0, gather16(x + t * cols + c, i0, i1), even[t]);
            odd[t] = _mm256_fmadd_ps(w1, gather16(x + t * cols + c + 16, i2, i3), odd[t]);
        }
    }
    if (c + 16 <= cols) {
        __m256i i0 = table8(COMPRESS[mask[c >> 3]]), i1 = table8(COMPRESS[mask[(c >> 3) + 1]]);
        __m256 w = values8(v, dtype);
        for (int t = 0; t < nt; t++)
            even[t] = _mm256_fmadd_ps(w, gather16(x + t * cols + c, i0, i1), even[t]);
        c += 16;
        v += 8 * width;
    }
    tail_avx2(x, cols, c, v, end, mask, even, nt, dtype);
    for (int t = 0; t < nt; t++)
        L->out[(t0 + t) * L->rows + r] = hsum8(_mm256_add_ps(even[t], odd[t])) + (L->bias ? L->bias[r] : 0.0f);
}

/* Rows ahead of the one computed whose values and mask are asked for into L1: the hardware
 * prefetchers alone leave one-token int8 rows waiting on L3. On a Sapphire Rapids class Xeon, 1
 * thread: a 49152 x 576 int8 head 4.6 -> 3.7 ms, SmolLM2's 210 2:4 int8 layers 2-11% faster; 2, 4,
 * 12 and 16 rows ahead were no better than 8. */
#define PREFETCH_ROWS 8

/* Ask for row r's values (row_bytes of them) and mask into L1, when r < end. */
INLINE void prefetch_row(const layer_t *L, int64_t r, int64_t end, int64_t row_bytes) {
    if (r >= end)
        return;
    const uint8_t *values = L->values + r * row_bytes, *mask = L->bitmask + r * L->mask_stride;
    for (int64_t b = 0; b < row_bytes; b += 64)
        _mm_prefetch((const char *)(values + b), _MM_HINT_T0);
    for (int64_t b = 0; b < L->mask_stride; b += 64)
        _mm_prefetch((const char *)(mask + b), _MM_HINT_T0);
}

/* Whether the last value of row r lies within SLACK bytes of the end of the values. */
INLINE int near_end(const layer_t *L, int64_t r, int64_t row_bytes) {
    return (L->rows - r - 1) * row_bytes < SLACK;
}

AVX2 static void rows_avx2(const layer_t *L, int64_t r0, int64_t r1) {
    const int64_t block = token_block(L->cols, 4);
    for (int64_t r = r0; r < r1; r++) {
        prefetch_row(L, r + PREFETCH_ROWS, r1, L->kept * L->width);
        const int halves = known_bytes(L) || bytes_hold_4(L->bitmask + r * L->mask_stride, L->cols >> 4 << 1);
        const int careful = near_end(L, r, L->kept * L->width);
        for (int64_t t0 = 0; t0 < L->tokens; t0 += block) {
            int64_t nt = L->tokens - t0 < block ? L->tokens - t0 : block;
            if (L->width == 4) {
                if (halves) {
                    TOKENS_4(row_halves, DTYPE_F32)
                } else if (careful) {
                    TOKENS_4(row_avx2, DTYPE_F32, 1)
                } else {
                    TOKENS_4(row_avx2, DTYPE_F32, 0)
                }
            } else {
                if (halves) {
                    TOKENS_4(row_halves, DTYPE_BF16)
                } else if (careful) {
                    TOKENS_4(row_avx2, DTYPE_BF16, 1)
                } else {
                    TOKENS_4(row_avx2, DTYPE_BF16, 0)
                }
            }
        }
    }
}

AVX2 INLINE void decompress_row_avx2(const layer_t *L, int64_t r, const int dtype) {
    const uint8_t *mask = L->bitmask + r * L->mask_stride, *v = L->values + r * L->kept * L->width;
    const uint8_t *end = L->values + L->rows * L->kept * L->width;
    int64_t c = 0;
    for (; c + 8 <= L->cols; c += 8) {
        __m256 w = expand8(&v, end, mask[c >> 3], dtype, 1);
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

/* The eight 4-bit values of n, lowest nibble first, as int32. */
AVX2 INLINE __m256i nibbles8(uint32_t n) {
    const __m256i shifts = _mm256_setr_epi32(0, 4, 8, 12, 16, 20, 24, 28);
    return _mm256_and_si256(_mm256_srlv_epi32(_mm256_set1_epi32((int)n), shifts), _mm256_set1_epi32(15));
}

/* Eight quantized values from value k of a row on as int32 (those past the row's stored values are
 * garbage); careful: read no byte at or past `end`. */
AVX2 INLINE __m256i qload8(const uint8_t *row, int64_t k, const uint8_t *end, const int bits, const int careful) {
    const uint8_t *p = row + (bits == 8 ? k : k >> 1);
    uint64_t word = 0;
    memcpy(&word, p, careful && p + 8 > end ? (size_t)(end - p) : 8);
    if (bits == 8)
        return _mm256_cvtepi8_epi32(_mm_cvtsi64_si128((long long)word));
    return nibbles8((uint32_t)(word >> (4 * (k & 1))));
}

/* Dequantized weights of the mask byte m's columns, +0 where not stored: (q - z) * s, or q - z when
 * the scale is left to the row's sum; *k advances. */
AVX2 INLINE __m256 qexpand8(const uint8_t *row, int64_t *k, const uint8_t *end, uint32_t m, __m256i z, __m256 s,
                            const int bits, const int grouped, const int offset, const int careful) {
    __m256i q = _mm256_permutevar8x32_epi32(qload8(row, *k, end, bits, careful), table8(PERMUTE[m]));
    __m256 w = _mm256_cvtepi32_ps(offset ? _mm256_sub_epi32(q, z) : q);
    *k += __builtin_popcount(m);
    return _mm256_and_ps(grouped ? _mm256_mul_ps(w, s) : w, _mm256_castsi256_ps(table8(LANES[m])));
}

/* The 8 dequantized values of 16 columns whose mask bytes both mark 4, from value k on (k % 8 == 0,
 * so int4 values start at a byte). */
AVX2 INLINE __m256 qvalues8(const uint8_t *row, int64_t k, __m256i z, __m256 s, const int bits, const int grouped,
                            const int offset) {
    __m256i q;
    if (bits == 8) {
        int64_t word;
        memcpy(&word, row + k, 8);
        q = _mm256_cvtepi8_epi32(_mm_cvtsi64_si128(word));
    } else {
        uint32_t word;
        memcpy(&word, row + (k >> 1), 4);
        q = nibbles8(word);
    }
    __m256 w = _mm256_cvtepi32_ps(offset ? _mm256_sub_epi32(q, z) : q);
    return grouped ? _mm256_mul_ps(w, s) : w;
}

/* tail_avx2 for quantized values. */
AVX2 static void qtail_avx2(const float *x, int64_t cols, int64_t c, const uint8_t *row, int64_t k,
                            const uint8_t *end, const uint8_t *mask, __m256i z, __m256 s, __m256 *acc, int nt,
                            int bits, int grouped, int offset) {
    for (; c < cols; c += 8) {
        uint32_t cut = cols - c >= 8 ? 0xFFu : (1u << (cols - c)) - 1u;
        __m256 w = qexpand8(row, &k, end, mask[c >> 3] & cut, z, s, bits, grouped, offset, 1);
        for (int t = 0; t < nt; t++)
            acc[t] = _mm256_fmadd_ps(w, load_x8(x + t * cols + c, cols - c), acc[t]);
    }
}

/* The sums of a quantized row to out, the row scale applied where it was left to them. */
AVX2 INLINE void qstore(const qlayer_t *Q, int64_t r, int64_t t0, const int nt, __m256 *even, __m256 *odd,
                        const int grouped) {
    const float scale = grouped ? 1.0f : group_scale(Q, r, 0), bias = Q->base.bias ? Q->base.bias[r] : 0.0f;
    for (int t = 0; t < nt; t++)
        Q->base.out[(t0 + t) * Q->base.rows + r] = hsum8(_mm256_add_ps(even[t], odd[t])) * scale + bias;
}

/* row_avx2 for quantized values, (q - z) * s per chunk, a group's zero point and scale set up once
 * (groups hold whole 32-column chunks, so only the row's last columns are a tail). */
AVX2 INLINE void qrow_avx2(const qlayer_t *Q, int64_t r, int64_t t0, const int nt, const int bits, const int careful) {
    const layer_t *L = &Q->base;
    const int64_t cols = L->cols;
    const uint8_t *end = L->values + L->rows * Q->stride;
    const float *x = L->x + t0 * cols;
    const uint8_t *row = L->values + r * Q->stride, *mask = L->bitmask + r * L->mask_stride;
    __m256 even[4], odd[4];
    for (int t = 0; t < nt; t++)
        even[t] = odd[t] = _mm256_setzero_ps();
    for (int64_t g = 0, c = 0, k = 0; c < cols; g++) {
        const int64_t stop = group_end(Q, c);
        const __m256i z = _mm256_set1_epi32(group_zero(Q, r, g));
        const __m256 s = _mm256_set1_ps(group_scale(Q, r, g));
        for (; c + 16 <= stop; c += 16) {
            __m256 w0 = qexpand8(row, &k, end, mask[c >> 3], z, s, bits, 1, 1, careful);
            __m256 w1 = qexpand8(row, &k, end, mask[(c >> 3) + 1], z, s, bits, 1, 1, careful);
            for (int t = 0; t < nt; t++) {
                even[t] = _mm256_fmadd_ps(w0, _mm256_loadu_ps(x + t * cols + c), even[t]);
                odd[t] = _mm256_fmadd_ps(w1, _mm256_loadu_ps(x + t * cols + c + 8), odd[t]);
            }
        }
        if (c < stop) {
            qtail_avx2(x, cols, c, row, k, end, mask, z, s, even, nt, bits, 1, 1);
            c = stop;
        }
    }
    qstore(Q, r, t0, nt, even, odd, 1);
}

/* row_halves for quantized values. */
AVX2 INLINE void qrow_halves(const qlayer_t *Q, int64_t r, int64_t t0, const int nt, const int bits,
                             const int grouped, const int offset) {
    const layer_t *L = &Q->base;
    const int64_t cols = L->cols;
    const uint8_t *end = L->values + L->rows * Q->stride;
    const float *x = L->x + t0 * cols;
    const uint8_t *row = L->values + r * Q->stride, *mask = L->bitmask + r * L->mask_stride;
    __m256 even[8], odd[8];
    for (int t = 0; t < nt; t++)
        even[t] = odd[t] = _mm256_setzero_ps();
    for (int64_t g = 0, c = 0, k = 0; c < cols; g++) {
        const int64_t stop = group_end(Q, c);
        const __m256i z = offset ? _mm256_set1_epi32(group_zero(Q, r, g)) : _mm256_setzero_si256();
        const __m256 s = _mm256_set1_ps(grouped ? group_scale(Q, r, g) : 1.0f);
        for (; c + 32 <= stop; c += 32, k += 16) {
            const uint8_t *m = mask + (c >> 3);
            __m256i i0 = table8(COMPRESS[m[0]]), i1 = table8(COMPRESS[m[1]]);
            __m256i i2 = table8(COMPRESS[m[2]]), i3 = table8(COMPRESS[m[3]]);
            __m256 w0 = qvalues8(row, k, z, s, bits, grouped, offset);
            __m256 w1 = qvalues8(row, k + 8, z, s, bits, grouped, offset);
            for (int t = 0; t < nt; t++) {
                even[t] = _mm256_fmadd_ps(w0, gather16(x + t * cols + c, i0, i1), even[t]);
                odd[t] = _mm256_fmadd_ps(w1, gather16(x + t * cols + c + 16, i2, i3), odd[t]);
            }
        }
        if (c + 16 <= stop) {
            __m256i i0 = table8(COMPRESS[mask[c >> 3]]), i1 = table8(COMPRESS[mask[(c >> 3) + 1]]);
            __m256 w = qvalues8(row, k, z, s, bits, grouped, offset);
            for (int t = 0; t < nt; t++)
                even[t] = _mm256_fmadd_ps(w, gather16(x + t * cols + c, i0, i1), even[t]);
            c += 16;
            k += 8;
        }
        if (c < stop) {
            qtail_avx2(x, cols, c, row, k, end, mask, z, s, even, nt, bits, grouped, offset);
            c = stop;
        }
    }
    qstore(Q, r, t0, nt, even, odd, grouped);
}

/* A row that stores every column (qrow_wide's CHUNK_FULL) for AVX2, 16 columns at a time, the tail masked. */
AVX2 INLINE void qrow_full_avx2(const qlayer_t *Q, int64_t r, int64_t t0, const int nt, const int bits,
                                const int grouped, const int offset) {
    const layer_t *L = &Q->base;
    const int64_t cols = L->cols;
    const uint8_t *end = L->values + L->rows * Q->stride;
    const float *x = L->x + t0 * cols;
    const uint8_t *row = L->values + r * Q->stride, *mask = L->bitmask + r * L->mask_stride;
    __m256 even[4], odd[4];
    for (int t = 0; t < nt; t++)
        even[t] = odd[t] = _mm256_setzero_ps();
    for (int64_t g = 0, c = 0; c < cols; g++) {
        const int64_t stop = group_end(Q, c);
        const __m256i z = offset ? _mm256_set1_epi32(group_zero(Q, r, g)) : _mm256_setzero_si256();
        const __m256 s = _mm256_set1_ps(grouped ? group_scale(Q, r, g) : 1.0f);
        for (; c + 16 <= stop; c += 16) {
            __m256 w0 = qvalues8(row, c, z, s, bits, grouped, offset);
            __m256 w1 = qvalues8(row, c + 8, z, s, bits, grouped, offset);
            for (int t = 0; t < nt; t++) {
                even[t] = _mm256_fmadd_ps(w0, _mm256_loadu_ps(x + t * cols + c), even[t]);
                odd[t] = _mm256_fmadd_ps(w1, _mm256_loadu_ps(x + t * cols + c + 8), odd[t]);
            }
        }
        if (c < stop) {
            qtail_avx2(x, cols, c, row, c, end, mask, z, s, even, nt, bits, grouped, offset);
            c = stop;
        }
    }
    qstore(Q, r, t0, nt, even, odd, grouped);
}

AVX2 static void qrows_avx2(const layer_t *layer, int64_t r0, int64_t r1) {
    const qlayer_t *L = (const qlayer_t *)layer;
    const int64_t block = token_block(layer->cols, 4);
    for (int64_t r = r0; r < r1; r++) {
        prefetch_row(layer, r + PREFETCH_ROWS, r1, L->stride);
        const int halves =
            known_bytes(layer) || bytes_hold_4(layer->bitmask + r * layer->mask_stride, layer->cols >> 4 << 1);
        const int careful = near_end(layer, r, L->stride);
        for (int64_t t0 = 0; t0 < layer->tokens; t0 += block) {
            int64_t nt = layer->tokens - t0 < block ? layer->tokens - t0 : block;
            if (layer->whole_bytes == MASK_FULL) {
                QUANT_KINDS(TOKENS_4, qrow_full_avx2)
            } else if (halves) {
                QUANT_KINDS(TOKENS_4, qrow_halves)
            } else if (careful) {
                QUANT_BITS(TOKENS_4, qrow_avx2, 1)
            } else {
                QUANT_BITS(TOKENS_4, qrow_avx2, 0)
            }
        }
    }
}

AVX2 INLINE void qdecompress_row_avx2(const qlayer_t *Q, int64_t r, const int bits) {
    const int64_t cols = Q->base.cols;
    const uint8_t *end = Q->base.values + Q->base.rows * Q->stride;
    const uint8_t *row = Q->base.values + r * Q->stride, *mask = Q->base.bitmask + r * Q->base.mask_stride;
    float *dst = (float *)Q->base.dense + r * cols;
    for (int64_t g = 0, c = 0, k = 0; c < cols; g++) {
        const int64_t stop = group_end(Q, c);
        const __m256i z = _mm256_set1_epi32(group_zero(Q, r, g));
        const __m256 s = _mm256_set1_ps(group_scale(Q, r, g));
        for (; c < stop; c += 8) {
            uint32_t cut = cols - c >= 8 ? 0xFFu : (1u << (cols - c)) - 1u;
            __m256 w = qexpand8(row, &k, end, mask[c >> 3] & cut, z, s, bits, 1, 1, 1);
            if (cols - c >= 8) {
                _mm256_storeu_ps(dst + c, w);
            } else {
                float tail[8];
                _mm256_storeu_ps(tail, w);
                memcpy(dst + c, tail, (size_t)(cols - c) * sizeof(float));
            }
        }
    }
}

AVX2 static void qdecompress_avx2(const layer_t *layer, int64_t r0, int64_t r1) {
    const qlayer_t *Q = (const qlayer_t *)layer;
    for (int64_t r = r0; r < r1; r++) {
        if (Q->bits == 8)
            qdecompress_row_avx2(Q, r, 8);
        else
            qdecompress_row_avx2(Q, r, 4);
    }
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

INLINE __mmask16 lanes16(int64_t left) { return left >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << left) - 1u); }

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
        __m512 w = expand16(&v, mask16(mask, c, cols), dtype);
        for (int t = 0; t < nt; t++)
            even[t] = _mm512_fmadd_ps(w, _mm512_maskz_loadu_ps(lanes16(cols - c), x + t * cols + c), even[t]);
    }
    for (int t = 0; t < nt; t++)
        L->out[(t0 + t) * L->rows + r] = _mm512_reduce_add_ps(_mm512_add_ps(even[t], odd[t])) + (L->bias ? L->bias[r] : 0.0f);
}

/* Whole-byte rows take row_halves in 256 bits: on Zen 5 the expanding rows ran slower than dense
 * from memory, and a 512-bit gather (vpermt2ps over 32 inputs) was no faster than two halves. */
AVX512 static void rows_avx512(const layer_t *L, int64_t r0, int64_t r1) {
    int64_t block = token_block(L->cols, 8);
    for (int64_t r = r0; r < r1; r++) {
        prefetch_row(L, r + PREFETCH_ROWS, r1, L->kept * L->width);
        const int halves = known_bytes(L) || bytes_hold_4(L->bitmask + r * L->mask_stride, L->cols >> 4 << 1);
        for (int64_t t0 = 0; t0 < L->tokens; t0 += block) {
            int64_t nt = L->tokens - t0 < block ? L->tokens - t0 : block;
            if (L->width == 4) {
                if (halves) {
                    TOKENS_8(row_halves, DTYPE_F32)
                } else {
                    TOKENS_8(row_avx512, DTYPE_F32)
                }
            } else {
                if (halves) {
                    TOKENS_8(row_halves, DTYPE_BF16)
                } else {
                    TOKENS_8(row_avx512, DTYPE_BF16)
                }
            }
        }
    }
}

AVX512 INLINE void decompress_row_avx512(const layer_t *L, int64_t r, const int dtype) {
    const uint8_t *mask = L->bitmask + r * L->mask_stride, *v = L->values + r * L->kept * L->width;
    for (int64_t c = 0; c < L->cols; c += 16) {
        __mmask16 lanes = lanes16(L->cols - c);
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

/* Quantized values k.. of a row (popcount(m) of them) as int32 in the set lanes of m and z in the
 * others, so that q - z is 0 there; *k advances. The masked loads read no byte past those values. */
AVX512 INLINE __m512i qexpand16(const uint8_t *row, int64_t *k, uint32_t m, __m512i z, const int bits) {
    const uint32_t count = (uint32_t)__builtin_popcount(m);
    __m512i q;
    if (bits == 8) {
        q = _mm512_cvtepi8_epi32(_mm_maskz_loadu_epi8((__mmask16)((1u << count) - 1u), row + *k));
    } else {
        /* The chunk may start at a high nibble: spread the bytes one per lane, then pick and shift. */
        const int64_t odd = *k & 1;
        const __mmask16 bytes = (__mmask16)((1u << ((odd + count + 1) >> 1)) - 1u);
        __m512i b = _mm512_cvtepu8_epi32(_mm_maskz_loadu_epi8(bytes, row + (*k >> 1)));
        b = _mm512_permutexvar_epi32(_mm512_loadu_si512(NIBBLE_BYTE[odd]), b);
        q = _mm512_and_si512(_mm512_srlv_epi32(b, _mm512_loadu_si512(NIBBLE_SHIFT[odd])), _mm512_set1_epi32(15));
    }
    *k += count;
    return _mm512_mask_expand_epi32(z, (__mmask16)m, q);
}

/* Dequantized weights (q - z) * s of 16 columns, a zero of either sign where not stored. */
AVX512 INLINE __m512 qweights16(const uint8_t *row, int64_t *k, uint32_t m, __m512i z, __m512 s, const int bits) {
    return _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_sub_epi32(qexpand16(row, k, m, z, bits), z)), s);
}

/* row_avx512 for quantized values. A group's zero point and scale are set up once: groups hold
 * whole 32-column chunks, so only the row's last columns take the 16-column loop. */
AVX512 INLINE void qrow_avx512(const qlayer_t *Q, int64_t r, int64_t t0, const int nt, const int bits) {
    const layer_t *L = &Q->base;
    const int64_t cols = L->cols;
    const float *x = L->x + t0 * cols;
    const uint8_t *row = L->values + r * Q->stride, *mask = L->bitmask + r * L->mask_stride;
    __m512 even[8], odd[8];
    for (int t = 0; t < nt; t++)
        even[t] = odd[t] = _mm512_setzero_ps();
    for (int64_t g = 0, c = 0, k = 0; c < cols; g++) {
        const int64_t end = group_end(Q, c);
        const __m512i z = _mm512_set1_epi32(group_zero(Q, r, g));
        const __m512 s = _mm512_set1_ps(group_scale(Q, r, g));
        for (; c + 32 <= end; c += 32) {
            uint32_t m;
            memcpy(&m, mask + (c >> 3), 4);
            __m512 w0 = qweights16(row, &k, m & 0xFFFFu, z, s, bits);
            __m512 w1 = qweights16(row, &k, m >> 16, z, s, bits);
            for (int t = 0; t < nt; t++) {
                even[t] = _mm512_fmadd_ps(w0, _mm512_loadu_ps(x + t * cols + c), even[t]);
                odd[t] = _mm512_fmadd_ps(w1, _mm512_loadu_ps(x + t * cols + c + 16), odd[t]);
            }
        }
        for (; c < end; c += 16) {
            __m512 w = qweights16(row, &k, mask16(mask, c, cols), z, s, bits);
            for (int t = 0; t < nt; t++)
                even[t] = _mm512_fmadd_ps(w, _mm512_maskz_loadu_ps(lanes16(cols - c), x + t * cols + c), even[t]);
        }
    }
    for (int t = 0; t < nt; t++)
        L->out[(t0 + t) * L->rows + r] = _mm512_reduce_add_ps(_mm512_add_ps(even[t], odd[t])) + (L->bias ? L->bias[r] : 0.0f);
}

/* The 16 quantized values k.. of a row as fp32 integers; k % 16 == 0 (int4 values start at a byte). */
AVX512 INLINE __m512 qcompact16(const uint8_t *row, int64_t k, const int bits) {
    __m512i q;
    if (bits == 8) {
        q = _mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)(row + k)));
    } else {
        const __m128i low = _mm_set1_epi8(15), b = _mm_loadl_epi64((const __m128i *)(row + (k >> 1)));
        q = _mm512_cvtepu8_epi32(_mm_unpacklo_epi8(_mm_and_si128(b, low), _mm_and_si128(_mm_srli_epi16(b, 4), low)));
    }
    return _mm512_cvtepi32_ps(q);
}

/* The column (0..31) of each of the 16 values of a 32-column chunk whose 8 mask nibbles (m) each
 * mark 2 (2:4): lane l holds value l, the lower stored column of nibble l / 2 when l is even, the
 * upper when odd, read from a 32-entry table (PAIR_COLUMN: lower columns, then upper) by nibble and
 * parity in one two-register permute. Costs 4 instructions, none of them an expand. */
AVX512 INLINE __m512i pair_columns(uint32_t m) {
    static const int32_t PAIR_COLUMN[32] = {0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 1, 0, 2, 0, 0, 0,
                                            0, 0, 0, 1, 0, 2, 2, 0, 0, 3, 3, 0, 3, 0, 0, 0};
    const __m512i base = _mm512_setr_epi32(0, 0, 4, 4, 8, 8, 12, 12, 16, 16, 20, 20, 24, 24, 28, 28);
    const __m512i parity = _mm512_setr_epi32(0, 16, 0, 16, 0, 16, 0, 16, 0, 16, 0, 16, 0, 16, 0, 16);
    const __m512i nibble = _mm512_srlv_epi32(_mm512_set1_epi32((int)m), base);
    const __m512i entry = _mm512_ternarylogic_epi32(nibble, _mm512_set1_epi32(15), parity, 0xEA); /* (a & b) | c */
    const __m512i column = _mm512_permutex2var_epi32(_mm512_loadu_si512(PAIR_COLUMN), entry,
                                                     _mm512_loadu_si512(PAIR_COLUMN + 16));
    return _mm512_or_si512(column, base);
}

/* How a row's 32-column chunks hold their values: 16 of them spread by register expands, 16 in 2:4
 * pairs, or all 32 (a row that stores every column). */
enum { CHUNK_EXPAND = 0, CHUNK_PAIRS = 1, CHUNK_FULL = 2 };

/* The 16 values k.. of a row, dequantized where they lie, (q - z) * s as q * s + zs with zs = -z * s
 * (both products and their sum exact in fp32), or left as q when the row's scale multiplies its sum. */
AVX512 INLINE __m512 qdequant16(const uint8_t *row, int64_t k, __m512 s, __m512 zs, const int bits, const int grouped,
                                const int offset) {
    const __m512 w = qcompact16(row, k, bits);
    return grouped ? (offset ? _mm512_fmadd_ps(w, s, zs) : _mm512_mul_ps(w, s)) : w;
}

/* 32 columns from value k on, their values from qdequant16. CHUNK_FULL: 32 values multiply the
 * inputs as loaded, into lo and hi. Otherwise the 4 mask bytes (m) each mark 4 and hold 16 values:
 * with CHUNK_PAIRS (every nibble marks 2) the 16 inputs they multiply are gathered from the chunk's
 * two input registers by pair_columns, into lo only; with CHUNK_EXPAND the values are spread to
 * their columns with two register expands and multiplied with the inputs as loaded, into lo and hi.
 * No gather from memory, no table per byte. On an Intel Xeon (Sapphire Rapids class) the pairs form
 * took 0.6-0.9x the expands' time. */
AVX512 INLINE void qwide32(const uint8_t *row, int64_t k, const uint8_t *m, const float *x, int64_t cols, __m512 s,
                           __m512 zs, __m512 *lo, __m512 *hi, const int nt, const int bits, const int grouped,
                           const int offset, const int chunk) {
    const __m512 w = qdequant16(row, k, s, zs, bits, grouped, offset);
    if (chunk == CHUNK_PAIRS) {
        uint32_t bits32;
        memcpy(&bits32, m, 4);
        const __m512i at = pair_columns(bits32);
        for (int t = 0; t < nt; t++)
            lo[t] = _mm512_fmadd_ps(
                w, _mm512_permutex2var_ps(_mm512_loadu_ps(x + t * cols), at, _mm512_loadu_ps(x + t * cols + 16)), lo[t]);
        return;
    }
    const __m512 w0 = chunk == CHUNK_FULL ? w : _mm512_maskz_expand_ps(_load_mask16((__mmask16 *)m), w);
    const __m512 w1 = chunk == CHUNK_FULL
                          ? qdequant16(row, k + 16, s, zs, bits, grouped, offset)
                          : _mm512_maskz_expand_ps(_load_mask16((__mmask16 *)(m + 2)), _mm512_shuffle_f32x4(w, w, 0xEE));
    for (int t = 0; t < nt; t++) {
        lo[t] = _mm512_fmadd_ps(w0, _mm512_loadu_ps(x + t * cols), lo[t]);
        hi[t] = _mm512_fmadd_ps(w1, _mm512_loadu_ps(x + t * cols + 16), hi[t]);
    }
}

/* A row whose mask bytes (those of whole 16-column chunks) each mark 4 columns (and with CHUNK_PAIRS,
 * whose nibbles of whole 32-column chunks each mark 2), or that stores every column (CHUNK_FULL),
 * 32 columns at a time by qwide32; at one or two tokens 64 at a time into four chains, so that the
 * FMAs' latency does not bound a row. Columns left in a group (at the row's end) take qrow_avx512's
 * masked loop. */
AVX512 INLINE void qrow_wide(const qlayer_t *Q, int64_t r, int64_t t0, const int nt, const int bits,
                             const int grouped, const int offset, const int chunk) {
    const layer_t *L = &Q->base;
    const int64_t cols = L->cols;
    const float *x = L->x + t0 * cols;
    const uint8_t *row = L->values + r * Q->stride, *mask = L->bitmask + r * L->mask_stride;
    const int four = nt <= 2, held = chunk == CHUNK_FULL ? 32 : 16; /* values per 32-column chunk */
    __m512 even[8], odd[8], even2[2], odd2[2];
    for (int t = 0; t < nt; t++)
        even[t] = odd[t] = _mm512_setzero_ps();
    for (int t = 0; four && t < nt; t++)
        even2[t] = odd2[t] = _mm512_setzero_ps();
    for (int64_t g = 0, c = 0, k = 0; c < cols; g++) {
        const int64_t end = group_end(Q, c);
        const float scale = grouped ? group_scale(Q, r, g) : 1.0f;
        const int32_t zero = offset ? group_zero(Q, r, g) : 0;
        const __m512 s = _mm512_set1_ps(scale), zs = _mm512_set1_ps(-(float)zero * scale);
        if (four)
            for (; c + 64 <= end; c += 64, k += 2 * held) {
                qwide32(row, k, mask + (c >> 3), x + c, cols, s, zs, even, odd, nt, bits, grouped, offset, chunk);
                qwide32(row, k + held, mask + (c >> 3) + 4, x + c + 32, cols, s, zs, even2, odd2, nt, bits, grouped,
                        offset, chunk);
            }
        for (; c + 32 <= end; c += 32, k += held)
            qwide32(row, k, mask + (c >> 3), x + c, cols, s, zs, even, odd, nt, bits, grouped, offset, chunk);
        if (c < end) {
            const __m512i z = _mm512_set1_epi32(zero);
            for (; c < end; c += 16) {
                __m512 w = qweights16(row, &k, mask16(mask, c, cols), z, s, bits);
                for (int t = 0; t < nt; t++)
                    even[t] = _mm512_fmadd_ps(w, _mm512_maskz_loadu_ps(lanes16(cols - c), x + t * cols + c), even[t]);
            }
        }
    }
    const float scale = grouped ? 1.0f : group_scale(Q, r, 0), bias = L->bias ? L->bias[r] : 0.0f;
    for (int t = 0; t < nt; t++) {
        __m512 sum = _mm512_add_ps(even[t], odd[t]);
        if (four)
            sum = _mm512_add_ps(sum, _mm512_add_ps(even2[t < 2 ? t : 0], odd2[t < 2 ? t : 0]));
        L->out[(t0 + t) * L->rows + r] = _mm512_reduce_add_ps(sum) * scale + bias;
    }
}

AVX512 static void qrows_avx512(const layer_t *layer, int64_t r0, int64_t r1) {
    const qlayer_t *L = (const qlayer_t *)layer;
    const int64_t block = token_block(layer->cols, 8);
    for (int64_t r = r0; r < r1; r++) {
        prefetch_row(layer, r + PREFETCH_ROWS, r1, L->stride);
        const uint8_t *mask = layer->bitmask + r * layer->mask_stride;
        const int halves = known_bytes(layer) || bytes_hold_4(mask, layer->cols >> 4 << 1);
        const int pairs = halves && (layer->whole_bytes == MASK_PAIRS ||
                                     (layer->whole_bytes == MASK_ROWS && nibbles_hold_2(mask, layer->cols >> 5 << 2)));
        for (int64_t t0 = 0; t0 < layer->tokens; t0 += block) {
            int64_t nt = layer->tokens - t0 < block ? layer->tokens - t0 : block;
            if (layer->whole_bytes == MASK_FULL) {
                QUANT_KINDS(TOKENS_8, qrow_wide, CHUNK_FULL)
            } else if (pairs) {
                QUANT_KINDS(TOKENS_8, qrow_wide, CHUNK_PAIRS)
            } else if (halves) {
                QUANT_KINDS(TOKENS_8, qrow_wide, CHUNK_EXPAND)
            } else {
                QUANT_BITS(TOKENS_8, qrow_avx512)
            }
        }
    }
}

AVX512 INLINE void qdecompress_row_avx512(const qlayer_t *Q, int64_t r, const int bits) {
    const int64_t cols = Q->base.cols;
    const uint8_t *row = Q->base.values + r * Q->stride, *mask = Q->base.bitmask + r * Q->base.mask_stride;
    float *dst = (float *)Q->base.dense + r * cols;
    for (int64_t g = 0, c = 0, k = 0; c < cols; g++) {
        const int64_t end = group_end(Q, c);
        const __m512i z = _mm512_set1_epi32(group_zero(Q, r, g));
        const __m512 s = _mm512_set1_ps(group_scale(Q, r, g));
        for (; c < end; c += 16) {
            const uint32_t m = mask16(mask, c, cols);
            __m512 w = _mm512_maskz_mov_ps((__mmask16)m, qweights16(row, &k, m, z, s, bits)); /* +0, never -0 */
            _mm512_mask_storeu_ps(dst + c, lanes16(cols - c), w);
        }
    }
}

AVX512 static void qdecompress_avx512(const layer_t *layer, int64_t r0, int64_t r1) {
    const qlayer_t *Q = (const qlayer_t *)layer;
    for (int64_t r = r0; r < r1; r++) {
        if (Q->bits == 8)
            qdecompress_row_avx512(Q, r, 8);
        else
            qdecompress_row_avx512(Q, r, 4);
    }
}

#endif

/* ---------------------------------------------------------------- dispatch */

static int best_isa(void) {
#ifdef HAVE_X86
    __builtin_cpu_init();
    if (!__builtin_cpu_supports("popcnt"))
        return ISA_GENERIC;
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

typedef int (*check_fn)(const layer_t *, int64_t, int64_t);

/* Each code path's bitmask check and row kernels: float values, their decompression, quantized
 * values, theirs. */
static const struct {
    check_fn check;
    rows_fn rows, decompress, qrows, qdecompress;
} KERNELS[] = {
    [ISA_GENERIC] = {rows_consistent, rows_generic, decompress_generic, qrows_generic, qdecompress_generic},
#ifdef HAVE_X86
    [ISA_AVX2] = {rows_consistent_popcnt, rows_avx2, decompress_avx2, qrows_avx2, qdecompress_avx2},
    [ISA_AVX512] = {rows_consistent_popcnt, rows_avx512, decompress_avx512, qrows_avx512, qdecompress_avx512},
#endif
};

/* Run `kernel` over all rows, split into one contiguous range per thread, each thread getting at
 * least GRAIN multiply-adds (torch's own grain size): waking threads costs more than tiny layers
 * take. ERR_BITMASK (and that range skipped) if a row's mask does not mark exactly `kept` columns;
 * check NULL: the mask was checked once by eggs_nm_mask_info (the prepared entry points). One part
 * runs without entering an OpenMP region. */
static int split_rows(const layer_t *L, check_fn check, rows_fn kernel, int threads, int64_t work) {
    int64_t most = work / GRAIN < L->rows ? work / GRAIN : L->rows;
    int parts = threads < 1 ? 1 : threads, bad = 0;
    if (parts > most)
        parts = most < 1 ? 1 : (int)most;
    if (parts == 1) {
        if (check && !check(L, 0, L->rows))
            return ERR_BITMASK;
        kernel(L, 0, L->rows);
        return 0;
    }
#pragma omp parallel for num_threads(parts) schedule(static) reduction(| : bad)
    for (int part = 0; part < parts; part++) {
        int64_t r0 = L->rows * part / parts, r1 = L->rows * (part + 1) / parts;
        if (!check || check(L, r0, r1 - r0))
            kernel(L, r0, r1);
        else
            bad = 1;
    }
    return bad ? ERR_BITMASK : 0;
}

/* y = x @ W^T + bias from the compact form; returns the ISA used, or a negative error code. */
int eggs_nm_linear(const float *x, int64_t tokens, const void *values, int dtype, const uint8_t *bitmask,
                   int64_t rows, int64_t cols, int64_t kept, const float *bias, float *out, int threads,
                   int requested_isa) {
    int isa = eggs_nm_isa(requested_isa);
    if (isa >= 0 && dtype != DTYPE_F32 && dtype != DTYPE_BF16)
        return ERR_DTYPE;
    if (isa < 0 || tokens <= 0 || rows <= 0)
        return isa;
    layer_t L = {x, values, bitmask, bias, out, NULL, tokens, rows, cols, kept, (cols + 7) / 8, dtype == DTYPE_F32 ? 4 : 2, 0};
    int error = split_rows(&L, KERNELS[isa].check, KERNELS[isa].rows, threads, rows * kept * tokens);
    return error ? error : isa;
}

/* The dense (rows, cols) weight, in the values' dtype, with zeros where nothing is stored. */
int eggs_nm_decompress(const void *values, int dtype, const uint8_t *bitmask, int64_t rows, int64_t cols,
                       int64_t kept, void *dense, int threads, int requested_isa) {
    int isa = eggs_nm_isa(requested_isa);
    if (isa >= 0 && dtype != DTYPE_F32 && dtype != DTYPE_BF16)
        return ERR_DTYPE;
    if (isa < 0 || rows <= 0)
        return isa;
    layer_t L = {NULL, values, bitmask, NULL, NULL, dense, 0, rows, cols, kept, (cols + 7) / 8, dtype == DTYPE_F32 ? 4 : 2, 0};
    int error = split_rows(&L, KERNELS[isa].check, KERNELS[isa].decompress, threads, rows * cols);
    return error ? error : isa;
}

/* The quantization fields of Q, whose base is filled in; ERR_DTYPE unless bits is 4 or 8, ERR_GROUP
 * unless group_size is a multiple of 32 or at least cols (the SIMD rows take one scale per chunk). */
static int quant_layer(qlayer_t *Q, int bits, const uint16_t *scales, const uint8_t *zeros, int64_t group_size) {
    const int64_t cols = Q->base.cols;
    if (bits != 4 && bits != 8)
        return ERR_DTYPE;
    if (cols <= 0 || group_size <= 0 || (group_size % 32 && group_size < cols))
        return ERR_GROUP;
    Q->scales = scales;
    Q->zeros = zeros;
    Q->bits = bits;
    Q->stride = bits == 8 ? Q->base.kept : (Q->base.kept + 1) / 2;
    Q->group_size = group_size < cols ? group_size : cols;
    Q->groups = (cols + Q->group_size - 1) / Q->group_size;
    Q->zero = bits == 8 ? 0 : 8;
    return 0;
}

/* y = x @ W^T + bias with W dequantized from int8 or int4 values; returns the ISA used, or a
 * negative error code. */
int eggs_nm_qlinear(const float *x, int64_t tokens, const void *qvalues, int bits, const uint8_t *bitmask,
                    int64_t rows, int64_t cols, int64_t kept, const uint16_t *scales, const uint8_t *zeros,
                    int64_t group_size, const float *bias, float *out, int threads, int requested_isa) {
    int isa = eggs_nm_isa(requested_isa);
    qlayer_t Q = {.base = {x, qvalues, bitmask, bias, out, NULL, tokens, rows, cols, kept, (cols + 7) / 8, 1, 0}};
    int error = isa < 0 ? isa : quant_layer(&Q, bits, scales, zeros, group_size);
    if (error || tokens <= 0 || rows <= 0)
        return error ? error : isa;
    error = split_rows(&Q.base, KERNELS[isa].check, KERNELS[isa].qrows, threads, rows * kept * tokens);
    return error ? error : isa;
}

/* The dense (rows, cols) fp32 weight dequantized, zeros where nothing is stored. */
int eggs_nm_qdecompress(const void *qvalues, int bits, const uint8_t *bitmask, int64_t rows, int64_t cols,
                        int64_t kept, const uint16_t *scales, const uint8_t *zeros, int64_t group_size, float *dense,
                        int threads, int requested_isa) {
    int isa = eggs_nm_isa(requested_isa);
    qlayer_t Q = {.base = {NULL, qvalues, bitmask, NULL, NULL, dense, 0, rows, cols, kept, (cols + 7) / 8, 1, 0}};
    int error = isa < 0 ? isa : quant_layer(&Q, bits, scales, zeros, group_size);
    if (error || rows <= 0)
        return error ? error : isa;
    error = split_rows(&Q.base, KERNELS[isa].check, KERNELS[isa].qdecompress, threads, rows * cols);
    return error ? error : isa;
}

/* ---------------------------------------------------------------- prepared layers */

/* A mask checked once, for layers called many times (one-token decode calls each layer once per
 * token, and checking every row on every call took a tenth of the time): ERR_BITMASK if a row does
 * not mark exactly `kept` columns, else 1 when every row's mask bytes (those of whole 16-column
 * chunks) mark 4 columns each, so that the rows may take the whole-byte path unchecked, 2 when also
 * each nibble of every whole 32-column chunk marks 2 (2:4: the pairs path), 3 when every column is
 * stored (the dense path of quantized layers), else 0. */
int eggs_nm_mask_info(const uint8_t *bitmask, int64_t rows, int64_t cols, int64_t kept, int requested_isa) {
    int isa = eggs_nm_isa(requested_isa);
    if (isa < 0 || rows <= 0)
        return isa < 0 ? isa : 0;
    layer_t L = {.bitmask = bitmask, .rows = rows, .cols = cols, .kept = kept, .mask_stride = (cols + 7) / 8};
    if (!KERNELS[isa].check(&L, 0, rows))
        return ERR_BITMASK;
#ifdef HAVE_X86
    if (isa >= ISA_AVX2 && kept == cols)
        return MASK_FULL;
    if (isa >= ISA_AVX2) {
        int info = MASK_PAIRS;
        for (int64_t r = 0; r < rows; r++) {
            if (!bytes_hold_4(bitmask + r * L.mask_stride, cols >> 4 << 1))
                return 0;
            if (info == MASK_PAIRS && !nibbles_hold_2(bitmask + r * L.mask_stride, cols >> 5 << 2))
                info = MASK_BYTES;
        }
        return info;
    }
#endif
    return 0;
}

/* The constant arguments of eggs_nm_linear (float values) and eggs_nm_qlinear (quantized ones),
 * laid out for a caller to fill once: every field 8 bytes. mask_info: what eggs_nm_mask_info
 * returned for this bitmask (MASK_*); the prepared calls trust it and check no row, so the caller
 * must have checked the mask and keep it unchanged. */
typedef struct {
    const void *values;
    const uint8_t *bitmask;
    const float *bias;
    int64_t dtype, rows, cols, kept, mask_info;
} eggs_nm_layer;

typedef struct {
    const void *qvalues;
    const uint8_t *bitmask;
    const uint16_t *scales;
    const uint8_t *zeros;
    const float *bias;
    int64_t bits, rows, cols, kept, group_size, mask_info;
} eggs_nm_qlayer;

/* eggs_nm_linear for a prepared layer: six arguments instead of twelve (a ctypes call costs about a
 * tenth of a microsecond per argument) and no per-call mask check. */
int eggs_nm_linear_prepared(const float *x, int64_t tokens, const eggs_nm_layer *P, float *out, int threads,
                            int requested_isa) {
    int isa = eggs_nm_isa(requested_isa);
    if (isa >= 0 && P->dtype != DTYPE_F32 && P->dtype != DTYPE_BF16)
        return ERR_DTYPE;
    if (isa < 0 || tokens <= 0 || P->rows <= 0)
        return isa;
    layer_t L = {x,       P->values, P->bitmask, P->bias, out, NULL, tokens, P->rows, P->cols, P->kept,
                 (P->cols + 7) / 8, P->dtype == DTYPE_F32 ? 4 : 2, P->mask_info};
    int error = split_rows(&L, NULL, KERNELS[isa].rows, threads, P->rows * P->kept * tokens);
    return error ? error : isa;
}

/* eggs_nm_qlinear for a prepared layer, likewise. */
int eggs_nm_qlinear_prepared(const float *x, int64_t tokens, const eggs_nm_qlayer *P, float *out, int threads,
                             int requested_isa) {
    int isa = eggs_nm_isa(requested_isa);
    qlayer_t Q = {.base = {x, P->qvalues, P->bitmask, P->bias, out, NULL, tokens, P->rows, P->cols, P->kept,
                           (P->cols + 7) / 8, 1, P->mask_info}};
    int error = isa < 0 ? isa : quant_layer(&Q, (int)P->bits, P->scales, P->zeros, P->group_size);
    if (error || tokens <= 0 || P->rows <= 0)
        return error ? error : isa;
    error = split_rows(&Q.base, NULL, KERNELS[isa].qrows, threads, P->rows * P->kept * tokens);
    return error ? error : isa;
}
