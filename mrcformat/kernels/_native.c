/*
 * mrcformat.kernels._native: the compiled CPU kernels of mrcformat (SPEC.md sections 3-5 and 11).
 *
 * Four operations, each over a range of work so that Python can split it across threads
 * (every entry point releases the GIL):
 *   decode_blocks   regenerate blocks [b0, b1) of a group and scatter them to pi^-1(p)   (SPEC 4.2, 5, 10)
 *   decode_affine   the same for an affine group, calls taken in the order of their first value
 *   hash_gather     w[t] = s(t) * v[h(t)] for weights [t0, t1)                            (SPEC 5.3)
 *   score_blocks    log q - log p of candidates [ka, kb) of rows [r0, r1) (float64)       (SPEC 11)
 *
 * Bit-exactness: integer Philox; a value is mu + sigma * T[u] in binary32 (the product is exact,
 * SPEC 4.3). The file is compiled with -ffp-contract=off so that no clone fuses operations
 * differently: the avx2 and default clones give the same bits, and scores do not depend on the
 * CPU or on how work is split (each candidate's sum runs over its slots in order, in one thread).
 *
 * Speed: Philox runs on LANES counters at once in plain loops that gcc vectorises (32x32->64
 * products become vpmuludq); x86-64 Linux builds carry an AVX2 clone chosen at load time.
 * The module uses only the buffer protocol (no numpy headers), so it builds with a C compiler alone.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
#define MRC_X86 1
#include <immintrin.h>
#define AVX2 __attribute__((target("avx2")))
#endif
#if defined(__GNUC__)
#define MRC_INLINE static inline __attribute__((always_inline))
#else
#define MRC_INLINE static inline
#endif

#define M0 0xD2511F53u
#define M1 0xCD9E8D57u
#define W0 0x9E3779B9u
#define W1 0xBB67AE85u
#define LANES 16           /* Philox counters per batch: 128 samples */
#define TABLE_SIZE 65536

/* Philox4x32-10 on LANES counters in place (SPEC 3.1). */
MRC_INLINE void philox_lanes(uint32_t *restrict c0, uint32_t *restrict c1, uint32_t *restrict c2,
                             uint32_t *restrict c3, uint32_t k0, uint32_t k1) {
    for (int r = 0; r < 10; r++) {
        for (int i = 0; i < LANES; i++) {
            uint64_t p0 = (uint64_t)M0 * c0[i];
            uint64_t p1 = (uint64_t)M1 * c2[i];
            uint32_t n0 = (uint32_t)(p1 >> 32) ^ c1[i] ^ k0;
            uint32_t n2 = (uint32_t)(p0 >> 32) ^ c3[i] ^ k1;
            c1[i] = (uint32_t)p1;
            c3[i] = (uint32_t)p0;
            c0[i] = n0;
            c2[i] = n2;
        }
        k0 += W0;
        k1 += W1;
    }
}

/* The 8 samples of each lane, in slot order: u[8*i + s] (SPEC 4.2: word s>>1, low half for even s). */
MRC_INLINE void unpack_u16(const uint32_t *x0, const uint32_t *x1, const uint32_t *x2, const uint32_t *x3,
                           uint16_t *restrict u) {
    for (int i = 0; i < LANES; i++) {
        u[8 * i + 0] = (uint16_t)x0[i];
        u[8 * i + 1] = (uint16_t)(x0[i] >> 16);
        u[8 * i + 2] = (uint16_t)x1[i];
        u[8 * i + 3] = (uint16_t)(x1[i] >> 16);
        u[8 * i + 4] = (uint16_t)x2[i];
        u[8 * i + 5] = (uint16_t)(x2[i] >> 16);
        u[8 * i + 6] = (uint16_t)x3[i];
        u[8 * i + 7] = (uint16_t)(x3[i] >> 16);
    }
}

/* ------------------------------------------------------------------------------------ decode */

/* Blocks [b0, b1) of a group: out[pi^-1(p)] = mu + sigma * T[u(p)] for slot positions p < n.
 * Contiguous layout: a_inv = 1, c = 0 (pi^-1 is the identity). */
static void decode_range_generic(const float *restrict table, const uint32_t *restrict idx, float *restrict out,
                                    uint32_t k0, uint32_t k1, uint32_t dw, int64_t bsz, int64_t n,
                                    float mu, float sigma, int64_t b0, int64_t b1, int64_t a_inv, int64_t c) {
    uint32_t x0[LANES], x1[LANES], x2[LANES], x3[LANES];
    int64_t lane_b[LANES], lane_m[LANES];
    uint16_t u[8 * LANES];
    const int64_t calls = (bsz + 7) / 8;      /* Philox calls per block */
    const int identity = (a_inv == 1 && c == 0);
    int64_t b = b0, m = 0;
    int64_t p = b0 * bsz;                     /* next slot position to write */
    int64_t ip = identity ? p : (((p - c) % n + n) % n) * a_inv % n;  /* pi^-1(p); a_inv, n < 2^31 */
    while (b < b1 && p < n) {
        int lanes = 0;
        for (; lanes < LANES && b < b1; lanes++) {
            x0[lanes] = (uint32_t)m;
            x1[lanes] = idx[b];
            x2[lanes] = (uint32_t)b;
            x3[lanes] = dw;
            lane_b[lanes] = b;
            lane_m[lanes] = m;
            if (++m == calls) { m = 0; b++; }
        }
        for (int i = lanes; i < LANES; i++) { x0[i] = x1[i] = x2[i] = x3[i] = 0; }
        philox_lanes(x0, x1, x2, x3, k0, k1);
        unpack_u16(x0, x1, x2, x3, u);
        for (int i = 0; i < lanes; i++) {
            int64_t j0 = 8 * lane_m[i];
            int64_t cnt = bsz - j0 < 8 ? bsz - j0 : 8;            /* slots of this call inside the block */
            int64_t pend = lane_b[i] * bsz + j0 + cnt;
            if (pend > n) cnt -= pend - n;                         /* padding at the end of the group */
            if (cnt <= 0) break;
            const uint16_t *us = u + 8 * i;
            if (identity) {
                float *o = out + p;
                for (int s = 0; s < cnt; s++) o[s] = mu + sigma * table[us[s]];
                p += cnt;
            } else {
                for (int s = 0; s < cnt; s++) {
                    out[ip] = mu + sigma * table[us[s]];
                    ip += a_inv;
                    if (ip >= n) ip -= n;
                }
                p += cnt;
            }
        }
    }
}

/* Weights [t0, t1) of a hashing group (SPEC 5.3): w[t] = s(t) * v[h(t)], h(t) = (x[2l] * n) >> 32. */
static void hash_range_generic(const float *restrict values, float *restrict out, uint32_t k0, uint32_t k1,
                                  uint32_t dw, int64_t n, int64_t t0, int64_t t1) {
    uint32_t x0[LANES], x1[LANES], x2[LANES], x3[LANES];
    int64_t t = t0;
    while (t < t1) {
        int64_t first = t >> 1;
        for (int i = 0; i < LANES; i++) {
            x0[i] = (uint32_t)(first + i);
            x1[i] = 0;
            x2[i] = 0;
            x3[i] = dw;
        }
        philox_lanes(x0, x1, x2, x3, k0, k1);
        for (int i = 0; i < LANES; i++) {
            int64_t base = 2 * (first + i);
            for (int l = 0; l < 2; l++) {
                int64_t w = base + l;
                if (w < t) continue;
                if (w >= t1) return;
                uint32_t r = l ? x2[i] : x0[i];
                uint32_t sbit = (l ? x3[i] : x1[i]) & 1u;
                float v = values[(int64_t)(((uint64_t)r * (uint64_t)n) >> 32)];
                out[w - t0] = sbit ? -v : v;
            }
        }
        t = 2 * (first + LANES);
    }
}

/* ------------------------------------------------------------------------------------ score */

/* Scores of candidates [ka, kb) of rows [r0, r1) (SPEC 11):
 *   out[r * ostride + (k - kbase)] = const[r] + 0.5 * sum_j (x_kj * cp[r,j])^2 - ((x_kj - mean[r,j]) * a[r,j])^2
 * with x_kj = mu + sigma * T[u] (binary32, as a decoder regenerates it) promoted to float64, and
 * a = valid / s, cp = valid / sigma_p, so that padding slots add exactly 0. Each candidate's sum
 * runs over its slots in order: the result does not depend on the split of work. */
static void score_range_generic(const float *restrict table, double *restrict out, int64_t ostride, int64_t kbase,
                                   const int64_t *restrict blocks, const double *restrict mean,
                                   const double *restrict a, const double *restrict cp, const double *restrict cst,
                                   uint32_t k0, uint32_t k1, uint32_t dw, int64_t bsz, float mu, float sigma,
                                   int64_t r0, int64_t r1, int64_t ka, int64_t kb) {
    uint32_t x0[LANES], x1[LANES], x2[LANES], x3[LANES];
    double acc[LANES];
    double xs[LANES];
    const int64_t calls = (bsz + 7) / 8;
    for (int64_t r = r0; r < r1; r++) {
        const double *mr = mean + r * bsz, *ar = a + r * bsz, *cr = cp + r * bsz;
        const uint32_t blk = (uint32_t)blocks[r];
        for (int64_t k = ka; k < kb; k += LANES) {
            for (int i = 0; i < LANES; i++) acc[i] = 0.0;
            for (int64_t m = 0; m < calls; m++) {
                for (int i = 0; i < LANES; i++) {
                    x0[i] = (uint32_t)m;
                    x1[i] = (uint32_t)(k + i);   /* lanes past kb wrap harmlessly: never stored */
                    x2[i] = blk;
                    x3[i] = dw;
                }
                philox_lanes(x0, x1, x2, x3, k0, k1);
                int64_t cnt = bsz - 8 * m < 8 ? bsz - 8 * m : 8;
                for (int s = 0; s < cnt; s++) {
                    const uint32_t *w = (s >> 1) == 0 ? x0 : (s >> 1) == 1 ? x1 : (s >> 1) == 2 ? x2 : x3;
                    const int shift = 16 * (s & 1);
                    const int64_t j = 8 * m + s;
                    const double mj = mr[j], aj = ar[j], cj = cr[j];
                    for (int i = 0; i < LANES; i++) {
                        float xf = mu + sigma * table[(w[i] >> shift) & 0xFFFFu];
                        xs[i] = (double)xf;
                    }
                    for (int i = 0; i < LANES; i++) {
                        double zp = xs[i] * cj;
                        double z = (xs[i] - mj) * aj;
                        acc[i] += zp * zp - z * z;
                    }
                }
            }
            int64_t lim = kb - k < LANES ? kb - k : LANES;
            double *o = out + r * ostride + (k - kbase);
            for (int i = 0; i < lim; i++) o[i] = cst[r] + 0.5 * acc[i];
        }
    }
}


/* Affine layout, calls in the order of their first value: the scan walks values i in [i0, i1); when
 * slot pi(i) starts a Philox call (slot j of its block with j % 8 == 0), the call is generated and
 * its up to 8 samples are written to i, i + a_inv, i + 2 a_inv, ... (mod n), the values of the
 * call's consecutive slots. As i grows, each of these 8 write streams moves forward through
 * memory, so the writes stay in cache, where slot order would scatter every write across the
 * whole tensor (the layout spreads each block over it by design). Every call starts at exactly
 * one value, so scanning all of [0, n) in any split writes every value exactly once. */
static void flush_calls_generic(const float *restrict table, float *restrict out, uint32_t *x0, uint32_t *x1,
                                uint32_t *x2, uint32_t *x3, const int64_t *li, const int64_t *lcnt, int lanes,
                                uint32_t k0, uint32_t k1, int64_t n, int64_t a_inv, float mu, float sigma) {
    uint16_t u[8 * LANES];
    for (int l = lanes; l < LANES; l++) x0[l] = x1[l] = x2[l] = x3[l] = 0;
    philox_lanes(x0, x1, x2, x3, k0, k1);
    unpack_u16(x0, x1, x2, x3, u);
    for (int l = 0; l < lanes; l++) {
        int64_t ip = li[l];
        for (int s = 0; s < lcnt[l]; s++) {
            out[ip] = mu + sigma * table[u[8 * l + s]];
            ip += a_inv;
            if (ip >= n) ip -= n;
        }
    }
}

static void decode_affine_calls_generic(const float *restrict table, const uint32_t *restrict idx,
                                        float *restrict out, uint32_t k0, uint32_t k1, uint32_t dw, int64_t bsz,
                                        int64_t n, float mu, float sigma, int64_t a, int64_t a_inv, int64_t c,
                                        int64_t i0, int64_t i1) {
    uint32_t x0[LANES], x1[LANES], x2[LANES], x3[LANES];
    int64_t li[LANES], lcnt[LANES];
    int lanes = 0;
    int64_t p = (a * i0 + c) % n;                 /* a, i0 < 2^31: exact in int64 */
    for (int64_t i = i0; i < i1; i++) {
        int64_t b = p / bsz, j = p - b * bsz;
        if ((j & 7) == 0) {
            int64_t cnt = bsz - j < 8 ? bsz - j : 8;
            if (n - p < cnt) cnt = n - p;
            x0[lanes] = (uint32_t)(j >> 3);
            x1[lanes] = idx[b];
            x2[lanes] = (uint32_t)b;
            x3[lanes] = dw;
            li[lanes] = i;
            lcnt[lanes] = cnt;
            if (++lanes == LANES) {
                flush_calls_generic(table, out, x0, x1, x2, x3, li, lcnt, lanes, k0, k1, n, a_inv, mu, sigma);
                lanes = 0;
            }
        }
        p += a;
        if (p >= n) p -= n;
    }
    if (lanes) flush_calls_generic(table, out, x0, x1, x2, x3, li, lcnt, lanes, k0, k1, n, a_inv, mu, sigma);
}

/* decode_affine_calls_generic's contract when n and the block size are multiples of 8 (most weight
 * tensors). Then every call has 8 samples, and since 8 | n, pi(i) = a i + c (mod 8) with a odd (coprime
 * to the even n), so the calls start at exactly the values i = r (mod 8), r = -c a (mod 8) (an odd a is
 * its own inverse mod 8): the calls are enumerated directly, LANES at a time, with no scan over the
 * values. Slot s of the calls starting at i, i + 8, i + 16, ... goes to i + s a_inv, i + s a_inv + 8, ...
 * (mod n): eight write streams, each moving forward 8 values per call. */
static void decode_affine_aligned_generic(const float *restrict table, const uint32_t *restrict idx,
                                          float *restrict out, uint32_t k0, uint32_t k1, uint32_t dw, int64_t bsz,
                                          int64_t n, float mu, float sigma, int64_t a, int64_t a_inv, int64_t c,
                                          int64_t i0, int64_t i1) {
    const int64_t r = ((8 - c % 8) % 8) * (a % 8) % 8;
    const int64_t first = i0 + ((r - i0 % 8) % 8 + 8) % 8;
    if (first >= i1) return;
    const int64_t calls = (i1 - first + 7) / 8, step = (8 * a) % n;
    uint32_t x0[LANES], x1[LANES], x2[LANES], x3[LANES];
    uint16_t u[8 * LANES];
    int64_t base[8];
    for (int s = 0; s < 8; s++) base[s] = (first + (int64_t)s * a_inv % n) % n;
    int64_t p = (a * first + c) % n;                  /* a, i < 2^31: exact in int64 */
    for (int64_t k = 0; k < calls; k += LANES) {
        const int lanes = calls - k < LANES ? (int)(calls - k) : LANES;
        for (int l = 0; l < LANES; l++) {
            int64_t b = l < lanes ? p / bsz : 0, j = l < lanes ? p - b * bsz : 0;
            x0[l] = (uint32_t)(j >> 3);
            x1[l] = idx[b];
            x2[l] = (uint32_t)b;
            x3[l] = dw;
            if (l < lanes) {
                p += step;
                if (p >= n) p -= n;
            }
        }
        philox_lanes(x0, x1, x2, x3, k0, k1);
        unpack_u16(x0, x1, x2, x3, u);
        for (int s = 0; s < 8; s++) {
            int64_t d = base[s];
            for (int l = 0; l < lanes; l++) {
                out[d] = mu + sigma * table[u[8 * l + s]];
                d += 8;
                if (d >= n) d -= n;
            }
            base[s] = d;
        }
    }
}

/* ------------------------------------------------------------------------------------ AVX2 */
#ifdef MRC_X86
/* The same operations with explicit AVX2 intrinsics: Philox on 8 counters per register (the
 * 32x32->64 products of even and odd lanes by two vpmuludq), table lookups by gathers, and the
 * arithmetic as separate IEEE multiplies and adds in the generic code's order (no FMA), so the
 * results are bit-identical to the generic functions above. */

AVX2 static inline void mulhilo8(__m256i x, __m256i m, __m256i *hi, __m256i *lo) {
    __m256i pe = _mm256_mul_epu32(x, m);                          /* lanes 0, 2, 4, 6 */
    __m256i po = _mm256_mul_epu32(_mm256_srli_epi64(x, 32), m);   /* lanes 1, 3, 5, 7 */
    *hi = _mm256_blend_epi32(_mm256_srli_epi64(pe, 32), po, 0xAA);
    *lo = _mm256_blend_epi32(pe, _mm256_slli_epi64(po, 32), 0xAA);
}

AVX2 static inline void philox8(__m256i *x0, __m256i *x1, __m256i *x2, __m256i *x3, uint32_t k0, uint32_t k1) {
    const __m256i m0 = _mm256_set1_epi32((int)M0), m1 = _mm256_set1_epi32((int)M1);
    __m256i c0 = *x0, c1 = *x1, c2 = *x2, c3 = *x3;
    for (int r = 0; r < 10; r++) {
        __m256i h0, l0, h1, l1;
        mulhilo8(c0, m0, &h0, &l0);
        mulhilo8(c2, m1, &h1, &l1);
        c0 = _mm256_xor_si256(_mm256_xor_si256(h1, c1), _mm256_set1_epi32((int)k0));
        c2 = _mm256_xor_si256(_mm256_xor_si256(h0, c3), _mm256_set1_epi32((int)k1));
        c1 = l1;
        c3 = l0;
        k0 += W0;
        k1 += W1;
    }
    *x0 = c0; *x1 = c1; *x2 = c2; *x3 = c3;
}

/* mu + sigma * T[u] for the 16-bit half `odd` of each lane of w */
AVX2 static inline __m256 value8(const float *table, __m256i w, int odd, __m256 mu, __m256 sigma) {
    __m256i u = odd ? _mm256_srli_epi32(w, 16) : _mm256_and_si256(w, _mm256_set1_epi32(0xFFFF));
    return _mm256_add_ps(mu, _mm256_mul_ps(sigma, _mm256_i32gather_ps(table, u, 4)));
}

/* 8x8 transpose: rows r[s] (slot s of 8 calls) -> r[i] (8 slots of call i) */
AVX2 static inline void transpose8(__m256 r[8]) {
    __m256 t0 = _mm256_unpacklo_ps(r[0], r[1]), t1 = _mm256_unpackhi_ps(r[0], r[1]);
    __m256 t2 = _mm256_unpacklo_ps(r[2], r[3]), t3 = _mm256_unpackhi_ps(r[2], r[3]);
    __m256 t4 = _mm256_unpacklo_ps(r[4], r[5]), t5 = _mm256_unpackhi_ps(r[4], r[5]);
    __m256 t6 = _mm256_unpacklo_ps(r[6], r[7]), t7 = _mm256_unpackhi_ps(r[6], r[7]);
    __m256 s0 = _mm256_shuffle_ps(t0, t2, 0x44), s1 = _mm256_shuffle_ps(t0, t2, 0xEE);
    __m256 s2 = _mm256_shuffle_ps(t1, t3, 0x44), s3 = _mm256_shuffle_ps(t1, t3, 0xEE);
    __m256 s4 = _mm256_shuffle_ps(t4, t6, 0x44), s5 = _mm256_shuffle_ps(t4, t6, 0xEE);
    __m256 s6 = _mm256_shuffle_ps(t5, t7, 0x44), s7 = _mm256_shuffle_ps(t5, t7, 0xEE);
    r[0] = _mm256_permute2f128_ps(s0, s4, 0x20); r[1] = _mm256_permute2f128_ps(s1, s5, 0x20);
    r[2] = _mm256_permute2f128_ps(s2, s6, 0x20); r[3] = _mm256_permute2f128_ps(s3, s7, 0x20);
    r[4] = _mm256_permute2f128_ps(s0, s4, 0x31); r[5] = _mm256_permute2f128_ps(s1, s5, 0x31);
    r[6] = _mm256_permute2f128_ps(s2, s6, 0x31); r[7] = _mm256_permute2f128_ps(s3, s7, 0x31);
}

/* decode_range_generic's contract, 16 Philox calls (128 slots, two independent chains) per step in slot order. */
AVX2 static void decode_range_avx2(const float *restrict table, const uint32_t *restrict idx, float *restrict out,
                                   uint32_t k0, uint32_t k1, uint32_t dw, int64_t bsz, int64_t n, float mu,
                                   float sigma, int64_t b0, int64_t b1, int64_t a_inv, int64_t c) {
    const int64_t calls = (bsz + 7) / 8;
    const int identity = (a_inv == 1 && c == 0);
    const __m256 muv = _mm256_set1_ps(mu), sgv = _mm256_set1_ps(sigma);
    int32_t cm[16], ci[16], cb[16];
    int64_t lane_p[16], lane_cnt[16];
    int64_t b = b0, m = 0;
    int64_t p = b0 * bsz;
    int64_t ip = identity ? p : (((p - c) % n + n) % n) * a_inv % n;
    while (b < b1 && p < n) {
        int lanes = 0;
        int64_t q = p;
        for (; lanes < 16 && b < b1; lanes++) {
            int64_t j0 = 8 * m, cnt = bsz - j0 < 8 ? bsz - j0 : 8;
            cm[lanes] = (int32_t)m;
            ci[lanes] = (int32_t)idx[b];
            cb[lanes] = (int32_t)b;
            if (q + cnt > n) cnt = n - q > 0 ? n - q : 0;
            lane_p[lanes] = q;
            lane_cnt[lanes] = cnt;
            q += cnt;
            if (++m == calls) { m = 0; b++; }
        }
        for (int i = lanes; i < 16; i++) { cm[i] = ci[i] = cb[i] = 0; lane_cnt[i] = 0; }
        __m256i x[2][4];
        for (int h = 0; h < 2; h++) {
            x[h][0] = _mm256_loadu_si256((const __m256i *)(cm + 8 * h));
            x[h][1] = _mm256_loadu_si256((const __m256i *)(ci + 8 * h));
            x[h][2] = _mm256_loadu_si256((const __m256i *)(cb + 8 * h));
            x[h][3] = _mm256_set1_epi32((int)dw);
        }
        philox8(&x[0][0], &x[0][1], &x[0][2], &x[0][3], k0, k1);
        philox8(&x[1][0], &x[1][1], &x[1][2], &x[1][3], k0, k1);
        for (int h = 0; h < 2 && 8 * h < lanes; h++) {
            __m256 r[8];
            for (int s = 0; s < 8; s++) r[s] = value8(table, x[h][s >> 1], s & 1, muv, sgv);
            transpose8(r);
            for (int i = 8 * h; i < lanes && i < 8 * h + 8; i++) {
                int64_t cnt = lane_cnt[i];
                if (identity && cnt == 8) {
                    _mm256_storeu_ps(out + lane_p[i], r[i - 8 * h]);
                    continue;
                }
                float tmp[8];
                _mm256_storeu_ps(tmp, r[i - 8 * h]);
                if (identity) {
                    for (int s = 0; s < cnt; s++) out[lane_p[i] + s] = tmp[s];
                } else {
                    for (int s = 0; s < cnt; s++) {
                        out[ip] = tmp[s];
                        ip += a_inv;
                        if (ip >= n) ip -= n;
                    }
                }
            }
        }
        p = q;
    }
}

/* decode_affine_calls_generic's contract. The scan runs on 8 values per step; the lanes that start a
 * call are left-packed into a queue with one permutation (no branch per call), and the queue goes
 * through Philox 16 calls at a time (two independent chains). */
static int32_t pack_lut[256][8];   /* pack_lut[mask]: the set lanes of mask first */

static void init_pack_lut(void) {
    for (int m = 0; m < 256; m++) {
        int k = 0;
        for (int l = 0; l < 8; l++)
            if (m & (1 << l)) pack_lut[m][k++] = l;
        while (k < 8) pack_lut[m][k++] = 0;
    }
}

/* Calls q[0..lanes) of the queue (int32 block, slot, position, value index), lanes <= 16. */
AVX2 static void flush_calls_avx2(const float *restrict table, const uint32_t *restrict idx, float *restrict out,
                                  const int32_t *qb, const int32_t *qj, const int32_t *qp, const int32_t *qi,
                                  int lanes, uint32_t k0, uint32_t k1, uint32_t dw, int64_t bsz, int64_t n,
                                  __m256i offs, float mu, float sigma) {
    const __m256 muv = _mm256_set1_ps(mu), sgv = _mm256_set1_ps(sigma);
    const __m256i vn = _mm256_set1_epi32((int32_t)n), vB = _mm256_set1_epi32((int32_t)bsz);
    const __m256i eight = _mm256_set1_epi32(8), lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    __m256i x[2][4];
    int32_t cnt[16];
    for (int h = 0; h < 2 && 8 * h < lanes; h++) {
        /* lanes past the queue's end get block 0, slot 0 and count 0: generated, never written */
        __m256i live = _mm256_cmpgt_epi32(_mm256_set1_epi32(lanes - 8 * h), lane);
        __m256i b = _mm256_and_si256(live, _mm256_loadu_si256((const __m256i *)(qb + 8 * h)));
        __m256i j = _mm256_and_si256(live, _mm256_loadu_si256((const __m256i *)(qj + 8 * h)));
        __m256i p = _mm256_loadu_si256((const __m256i *)(qp + 8 * h));
        __m256i c = _mm256_min_epi32(eight, _mm256_min_epi32(_mm256_sub_epi32(vB, j), _mm256_sub_epi32(vn, p)));
        _mm256_storeu_si256((__m256i *)(cnt + 8 * h), _mm256_and_si256(live, c));
        x[h][0] = _mm256_srli_epi32(j, 3);
        x[h][1] = _mm256_i32gather_epi32((const int *)idx, b, 4);
        x[h][2] = b;
        x[h][3] = _mm256_set1_epi32((int)dw);
    }
    philox8(&x[0][0], &x[0][1], &x[0][2], &x[0][3], k0, k1);
    if (lanes > 8) philox8(&x[1][0], &x[1][1], &x[1][2], &x[1][3], k0, k1);
    for (int h = 0; h < 2 && 8 * h < lanes; h++) {
        __m256 r[8];
        for (int s = 0; s < 8; s++) r[s] = value8(table, x[h][s >> 1], s & 1, muv, sgv);
        transpose8(r);
        for (int l = 8 * h; l < lanes && l < 8 * h + 8; l++) {
            /* destinations i + s * a_inv (mod n), s = 0..7: offs holds s * a_inv mod n; the sum is
             * below 2^32, so compare unsigned */
            __m256i d = _mm256_add_epi32(_mm256_set1_epi32(qi[l]), offs);
            __m256i ge = _mm256_cmpeq_epi32(_mm256_max_epu32(d, vn), d);
            d = _mm256_sub_epi32(d, _mm256_and_si256(ge, vn));
            int32_t dst[8];
            float row[8];
            _mm256_storeu_si256((__m256i *)dst, d);
            _mm256_storeu_ps(row, r[l - 8 * h]);
            if (cnt[l] == 8) {
                out[dst[0]] = row[0]; out[dst[1]] = row[1]; out[dst[2]] = row[2]; out[dst[3]] = row[3];
                out[dst[4]] = row[4]; out[dst[5]] = row[5]; out[dst[6]] = row[6]; out[dst[7]] = row[7];
            } else {
                for (int s = 0; s < cnt[l]; s++) out[dst[s]] = row[s];
            }
        }
    }
}

AVX2 static void decode_affine_calls_avx2(const float *restrict table, const uint32_t *restrict idx,
                                          float *restrict out, uint32_t k0, uint32_t k1, uint32_t dw, int64_t bsz,
                                          int64_t n, float mu, float sigma, int64_t a, int64_t a_inv, int64_t c,
                                          int64_t i0, int64_t i1) {
    const int64_t step = (8 * a) % n;                  /* each lane's p advances by 8a mod n per step */
    const __m256i vstep = _mm256_set1_epi32((int32_t)step), vback = _mm256_set1_epi32((int32_t)(n - step));
    const __m256i vsb = _mm256_set1_epi32((int32_t)(step / bsz)), vsj = _mm256_set1_epi32((int32_t)(step % bsz));
    const __m256i vnb = _mm256_set1_epi32((int32_t)(n / bsz)), vnj = _mm256_set1_epi32((int32_t)(n % bsz));
    const __m256i vB = _mm256_set1_epi32((int32_t)bsz), vBm1 = _mm256_set1_epi32((int32_t)(bsz - 1));
    const __m256i one = _mm256_set1_epi32(1), seven = _mm256_set1_epi32(7), zero = _mm256_setzero_si256();
    const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    int32_t pp[8], bb[8], jj[8], of[8];
    for (int l = 0; l < 8; l++) {
        int64_t pl = (a * ((i0 + l) % n) + c) % n;     /* a, i < 2^31: exact in int64 */
        pp[l] = (int32_t)pl;
        bb[l] = (int32_t)(pl / bsz);
        jj[l] = (int32_t)(pl % bsz);
        of[l] = (int32_t)((l * a_inv) % n);
    }
    const __m256i offs = _mm256_loadu_si256((const __m256i *)of);
    __m256i p = _mm256_loadu_si256((const __m256i *)pp), b = _mm256_loadu_si256((const __m256i *)bb);
    __m256i j = _mm256_loadu_si256((const __m256i *)jj);
    int32_t qb[24], qj[24], qp[24], qi[24];   /* the queue: up to 16 + 8 calls */
    int lanes = 0;
    for (int64_t i = i0; i < i1; i += 8) {
        int mask = _mm256_movemask_ps(_mm256_castsi256_ps(_mm256_cmpeq_epi32(_mm256_and_si256(j, seven), zero)));
        if (i + 8 > i1) mask &= (1 << (i1 - i)) - 1;
        __m256i perm = _mm256_loadu_si256((const __m256i *)pack_lut[mask]);
        _mm256_storeu_si256((__m256i *)(qb + lanes), _mm256_permutevar8x32_epi32(b, perm));
        _mm256_storeu_si256((__m256i *)(qj + lanes), _mm256_permutevar8x32_epi32(j, perm));
        _mm256_storeu_si256((__m256i *)(qp + lanes), _mm256_permutevar8x32_epi32(p, perm));
        _mm256_storeu_si256((__m256i *)(qi + lanes),
                            _mm256_permutevar8x32_epi32(_mm256_add_epi32(_mm256_set1_epi32((int32_t)i), lane), perm));
        lanes += __builtin_popcount((unsigned)mask);
        if (lanes >= 16) {
            flush_calls_avx2(table, idx, out, qb, qj, qp, qi, 16, k0, k1, dw, bsz, n, offs, mu, sigma);
            lanes -= 16;
            for (int l = 0; l < lanes; l++) {
                qb[l] = qb[16 + l]; qj[l] = qj[16 + l]; qp[l] = qp[16 + l]; qi[l] = qi[16 + l];
            }
        }
        /* advance p by step (mod n) and (b, j) with it */
        __m256i wrap = _mm256_cmpgt_epi32(p, _mm256_sub_epi32(vback, one));   /* p >= n - step */
        p = _mm256_blendv_epi8(_mm256_add_epi32(p, vstep), _mm256_sub_epi32(p, vback), wrap);
        b = _mm256_add_epi32(b, vsb);
        j = _mm256_add_epi32(j, vsj);
        __m256i carry = _mm256_cmpgt_epi32(j, vBm1);                           /* j >= B */
        j = _mm256_sub_epi32(j, _mm256_and_si256(carry, vB));
        b = _mm256_sub_epi32(b, carry);                                         /* carry is -1 */
        b = _mm256_sub_epi32(b, _mm256_and_si256(wrap, vnb));
        j = _mm256_sub_epi32(j, _mm256_and_si256(wrap, vnj));
        __m256i borrow = _mm256_cmpgt_epi32(zero, j);                           /* j < 0 */
        j = _mm256_add_epi32(j, _mm256_and_si256(borrow, vB));
        b = _mm256_add_epi32(b, borrow);
    }
    if (lanes) flush_calls_avx2(table, idx, out, qb, qj, qp, qi, lanes, k0, k1, dw, bsz, n, offs, mu, sigma);
}

/* decode_affine_calls_avx2's contract when n and the block size are multiples of 8 (most weight
 * tensors): then every call has 8 samples, pi(i) = a i + c (mod 8) since 8 | n, and a is odd, so the
 * calls start at exactly the values i = r (mod 8) with r = -c a (mod 8) (odd a is its own inverse mod
 * 8). The calls are enumerated directly, 16 per step, with no scan over the values. */
AVX2 static void decode_affine_aligned_avx2(const float *restrict table, const uint32_t *restrict idx,
                                            float *restrict out, uint32_t k0, uint32_t k1, uint32_t dw,
                                            int64_t bsz, int64_t n, float mu, float sigma, int64_t a,
                                            int64_t a_inv, int64_t c, int64_t i0, int64_t i1) {
    const int64_t r = ((8 - c % 8) % 8) * (a % 8) % 8;
    int64_t first = i0 + ((r - i0 % 8) % 8 + 8) % 8;
    if (first >= i1) return;
    const int64_t calls = (i1 - first + 7) / 8;
    const int64_t step = (128 * (a % n)) % n;           /* each lane's p advances by 16 calls = 128 values */
    const __m256i vstep = _mm256_set1_epi32((int32_t)step), vback = _mm256_set1_epi32((int32_t)(n - step));
    const __m256i vsb = _mm256_set1_epi32((int32_t)(step / bsz)), vsj = _mm256_set1_epi32((int32_t)(step % bsz));
    const __m256i vnb = _mm256_set1_epi32((int32_t)(n / bsz)), vnj = _mm256_set1_epi32((int32_t)(n % bsz));
    const __m256i vB = _mm256_set1_epi32((int32_t)bsz), vBm1 = _mm256_set1_epi32((int32_t)(bsz - 1));
    const __m256i one = _mm256_set1_epi32(1), zero = _mm256_setzero_si256();
    int32_t pp[16], bb[16], jj[16], of[8];
    for (int l = 0; l < 16; l++) {
        int64_t il = (first + 8 * l) % n;
        int64_t pl = (a * il + c) % n;                  /* a, i < 2^31: exact in int64 */
        pp[l] = (int32_t)pl;
        bb[l] = (int32_t)(pl / bsz);
        jj[l] = (int32_t)(pl % bsz);
    }
    for (int l = 0; l < 8; l++) of[l] = (int32_t)((l * a_inv) % n);
    __m256i p[2], b[2], j[2];
    for (int h = 0; h < 2; h++) {
        p[h] = _mm256_loadu_si256((const __m256i *)(pp + 8 * h));
        b[h] = _mm256_loadu_si256((const __m256i *)(bb + 8 * h));
        j[h] = _mm256_loadu_si256((const __m256i *)(jj + 8 * h));
    }
    /* stream s of the 16 calls: values i + s a_inv + 8 l (mod n), l = 0..15; base[s] = first + s a_inv */
    int64_t base[8];
    for (int s2 = 0; s2 < 8; s2++) base[s2] = (first + of[s2]) % n;
    const __m256 muv = _mm256_set1_ps(mu), sgv = _mm256_set1_ps(sigma);
    for (int64_t k = 0; k < calls; k += 16) {
        const int lanes = calls - k < 16 ? (int)(calls - k) : 16;
        __m256i x[2][4];
        for (int h = 0; h < 2; h++) {
            x[h][0] = _mm256_srli_epi32(j[h], 3);
            x[h][1] = _mm256_i32gather_epi32((const int *)idx, b[h], 4);   /* b < nb: lanes past the end too */
            x[h][2] = b[h];
            x[h][3] = _mm256_set1_epi32((int)dw);
        }
        philox8(&x[0][0], &x[0][1], &x[0][2], &x[0][3], k0, k1);
        philox8(&x[1][0], &x[1][1], &x[1][2], &x[1][3], k0, k1);
        for (int s2 = 0; s2 < 8; s2++) {
            float v[16];
            _mm256_storeu_ps(v, value8(table, x[0][s2 >> 1], s2 & 1, muv, sgv));
            _mm256_storeu_ps(v + 8, value8(table, x[1][s2 >> 1], s2 & 1, muv, sgv));
            int64_t d = base[s2];
            if (lanes == 16 && d + 120 < n) {
                float *o = out + d;
                o[0] = v[0]; o[8] = v[1]; o[16] = v[2]; o[24] = v[3]; o[32] = v[4]; o[40] = v[5];
                o[48] = v[6]; o[56] = v[7]; o[64] = v[8]; o[72] = v[9]; o[80] = v[10]; o[88] = v[11];
                o[96] = v[12]; o[104] = v[13]; o[112] = v[14]; o[120] = v[15];
            } else {
                for (int l = 0; l < lanes; l++) {
                    int64_t e = d + 8 * l;
                    out[e >= n ? e - n : e] = v[l];
                }
            }
            d += 128;
            base[s2] = d >= n ? d - n : d;
        }
        for (int h = 0; h < 2; h++) {
            /* advance p by step (mod n) and (b, j) with it */
            __m256i wrap = _mm256_cmpgt_epi32(p[h], _mm256_sub_epi32(vback, one));   /* p >= n - step */
            p[h] = _mm256_blendv_epi8(_mm256_add_epi32(p[h], vstep), _mm256_sub_epi32(p[h], vback), wrap);
            b[h] = _mm256_add_epi32(b[h], vsb);
            j[h] = _mm256_add_epi32(j[h], vsj);
            __m256i carry = _mm256_cmpgt_epi32(j[h], vBm1);                             /* j >= B */
            j[h] = _mm256_sub_epi32(j[h], _mm256_and_si256(carry, vB));
            b[h] = _mm256_sub_epi32(b[h], carry);                                       /* carry is -1 */
            b[h] = _mm256_sub_epi32(b[h], _mm256_and_si256(wrap, vnb));
            j[h] = _mm256_sub_epi32(j[h], _mm256_and_si256(wrap, vnj));
            __m256i borrow = _mm256_cmpgt_epi32(zero, j[h]);                            /* j < 0 */
            j[h] = _mm256_add_epi32(j[h], _mm256_and_si256(borrow, vB));
            b[h] = _mm256_add_epi32(b[h], borrow);
        }
    }
}

/* hash_range_generic's contract: 8 Philox calls (16 weights) per step. */
AVX2 static void hash_range_avx2(const float *restrict values, float *restrict out, uint32_t k0, uint32_t k1,
                                 uint32_t dw, int64_t n, int64_t t0, int64_t t1) {
    const __m256i vn = _mm256_set1_epi32((int32_t)n), one = _mm256_set1_epi32(1);
    const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    int64_t first = t0 >> 1, last = (t1 + 1) >> 1;           /* calls [first, last) */
    for (int64_t f = first; f < last; f += 8) {
        __m256i x0 = _mm256_add_epi32(_mm256_set1_epi32((int32_t)f), lane);
        __m256i x1 = _mm256_setzero_si256(), x2 = _mm256_setzero_si256(), x3 = _mm256_set1_epi32((int32_t)dw);
        philox8(&x0, &x1, &x2, &x3, k0, k1);
        __m256i h_even, h_odd, lo;
        mulhilo8(x0, vn, &h_even, &lo);                        /* (x * n) >> 32 */
        mulhilo8(x2, vn, &h_odd, &lo);
        __m256 ve = _mm256_i32gather_ps(values, h_even, 4), vo = _mm256_i32gather_ps(values, h_odd, 4);
        ve = _mm256_castsi256_ps(_mm256_xor_si256(_mm256_castps_si256(ve),
                                                  _mm256_slli_epi32(_mm256_and_si256(x1, one), 31)));
        vo = _mm256_castsi256_ps(_mm256_xor_si256(_mm256_castps_si256(vo),
                                                  _mm256_slli_epi32(_mm256_and_si256(x3, one), 31)));
        /* interleave: weights 2f, 2f+1, 2(f+1), ... */
        __m256 a = _mm256_unpacklo_ps(ve, vo), b = _mm256_unpackhi_ps(ve, vo);
        __m256 w0 = _mm256_permute2f128_ps(a, b, 0x20), w1 = _mm256_permute2f128_ps(a, b, 0x31);
        int64_t base = 2 * f;
        if (base >= t0 && base + 16 <= t1) {
            _mm256_storeu_ps(out + (base - t0), w0);
            _mm256_storeu_ps(out + (base - t0) + 8, w1);
        } else {
            float tmp[16];
            _mm256_storeu_ps(tmp, w0);
            _mm256_storeu_ps(tmp + 8, w1);
            for (int l = 0; l < 16; l++)
                if (base + l >= t0 && base + l < t1) out[base + l - t0] = tmp[l];
        }
    }
}

/* score_range_generic's contract, 16 candidates per step (two Philox registers). */
AVX2 static void score_range_avx2(const float *restrict table, double *restrict out, int64_t ostride, int64_t kbase,
                                  const int64_t *restrict blocks, const double *restrict mean,
                                  const double *restrict a, const double *restrict cp, const double *restrict cst,
                                  uint32_t k0, uint32_t k1, uint32_t dw, int64_t bsz, float mu, float sigma,
                                  int64_t r0, int64_t r1, int64_t ka, int64_t kb) {
    const __m256 muv = _mm256_set1_ps(mu), sgv = _mm256_set1_ps(sigma);
    const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    const int64_t calls = (bsz + 7) / 8;
    for (int64_t r = r0; r < r1; r++) {
        const double *mr = mean + r * bsz, *ar = a + r * bsz, *cr = cp + r * bsz;
        const __m256i vb = _mm256_set1_epi32((int32_t)(uint32_t)blocks[r]), vdw = _mm256_set1_epi32((int32_t)dw);
        for (int64_t k = ka; k < kb; k += 16) {
            __m256d acc[4] = {_mm256_setzero_pd(), _mm256_setzero_pd(), _mm256_setzero_pd(), _mm256_setzero_pd()};
            const __m256i ka0 = _mm256_add_epi32(_mm256_set1_epi32((int32_t)(uint32_t)k), lane);
            const __m256i ka1 = _mm256_add_epi32(ka0, _mm256_set1_epi32(8));
            for (int64_t m = 0; m < calls; m++) {
                __m256i xa[4] = {_mm256_set1_epi32((int32_t)m), ka0, vb, vdw};
                __m256i xb[4] = {_mm256_set1_epi32((int32_t)m), ka1, vb, vdw};
                philox8(&xa[0], &xa[1], &xa[2], &xa[3], k0, k1);
                philox8(&xb[0], &xb[1], &xb[2], &xb[3], k0, k1);
                int64_t cnt = bsz - 8 * m < 8 ? bsz - 8 * m : 8;
                for (int s = 0; s < cnt; s++) {
                    const int64_t jx = 8 * m + s;
                    const __m256d mj = _mm256_set1_pd(mr[jx]), aj = _mm256_set1_pd(ar[jx]), cj = _mm256_set1_pd(cr[jx]);
                    __m256 va = value8(table, xa[s >> 1], s & 1, muv, sgv);
                    __m256 vbv = value8(table, xb[s >> 1], s & 1, muv, sgv);
                    __m256d xs[4] = {_mm256_cvtps_pd(_mm256_castps256_ps128(va)), _mm256_cvtps_pd(_mm256_extractf128_ps(va, 1)),
                                     _mm256_cvtps_pd(_mm256_castps256_ps128(vbv)), _mm256_cvtps_pd(_mm256_extractf128_ps(vbv, 1))};
                    for (int q = 0; q < 4; q++) {
                        __m256d zp = _mm256_mul_pd(xs[q], cj);
                        __m256d z = _mm256_mul_pd(_mm256_sub_pd(xs[q], mj), aj);
                        acc[q] = _mm256_add_pd(acc[q], _mm256_sub_pd(_mm256_mul_pd(zp, zp), _mm256_mul_pd(z, z)));
                    }
                }
            }
            double res[16];
            const __m256d half = _mm256_set1_pd(0.5), cv = _mm256_set1_pd(cst[r]);
            for (int q = 0; q < 4; q++) _mm256_storeu_pd(res + 4 * q, _mm256_add_pd(cv, _mm256_mul_pd(half, acc[q])));
            int64_t lim = kb - k < 16 ? kb - k : 16;
            double *o = out + r * ostride + (k - kbase);
            for (int i = 0; i < lim; i++) o[i] = res[i];
        }
    }
}
#endif /* MRC_X86 */

/* ------------------------------------------------------------------------------- dispatch */

enum { ISA_GENERIC = 0, ISA_AVX2 = 1 };
static int isa = ISA_GENERIC;
static int aligned_calls = 1;

static void detect_isa(void) {
#ifdef MRC_X86
    init_pack_lut();
    __builtin_cpu_init();
    isa = __builtin_cpu_supports("avx2") ? ISA_AVX2 : ISA_GENERIC;
#endif
}


/* ------------------------------------------------------------------------------- bindings */

static int need(Py_buffer *b, Py_ssize_t bytes, const char *what) {
    if (b->len < bytes) {
        PyErr_Format(PyExc_ValueError, "%s: buffer of %zd bytes, need %zd", what, b->len, bytes);
        return 0;
    }
    return 1;
}

static uint32_t f32_from_bits(unsigned long bits, float *f) {
    uint32_t u = (uint32_t)bits;
    memcpy(f, &u, 4);
    return u;
}

/* The table, a group's indices (nb u32) and its values (n f32) are large enough. */
static int group_buffers(Py_buffer *tb, Py_buffer *ib, Py_buffer *ob, int64_t nb, int64_t n) {
    return need(tb, TABLE_SIZE * 4, "table") && need(ib, nb * 4, "indices") && need(ob, n * 4, "out");
}

static void coding_params(unsigned long mu_bits, unsigned long sigma_bits, float *mu, float *sigma) {
    f32_from_bits(mu_bits, mu);
    f32_from_bits(sigma_bits, sigma);
}

/* decode_blocks(table, indices_u32, out_f32, seed, gid, block_size, n, mu_bits, sigma_f32_bits, b0, b1, a_inv, c) */
static PyObject *py_decode_blocks(PyObject *self, PyObject *args) {
    Py_buffer tb, ib, ob;
    unsigned long long seed;
    unsigned long gid, mu_bits, sigma_bits;
    long long bsz, n, b0, b1, a_inv, c;
    if (!PyArg_ParseTuple(args, "y*y*w*KkLLkkLLLL", &tb, &ib, &ob, &seed, &gid, &bsz, &n, &mu_bits, &sigma_bits,
                          &b0, &b1, &a_inv, &c))
        return NULL;
    PyObject *ret = NULL;
    int64_t nb = bsz > 0 ? (n + bsz - 1) / bsz : 0;
    if (bsz < 1 || n < 1 || b0 < 0 || b1 < b0 || b1 > nb || a_inv < 0 || a_inv >= (n > 1 ? n : 2) || c < 0 ||
        c >= n || gid >= (1ul << 24)) {
        PyErr_SetString(PyExc_ValueError, "decode_blocks: arguments out of range");
        goto done;
    }
    if (!group_buffers(&tb, &ib, &ob, nb, n))
        goto done;
    float mu, sigma;
    coding_params(mu_bits, sigma_bits, &mu, &sigma);
    Py_BEGIN_ALLOW_THREADS
#ifdef MRC_X86
    if (isa == ISA_AVX2)
        decode_range_avx2((const float *)tb.buf, (const uint32_t *)ib.buf, (float *)ob.buf, (uint32_t)seed,
                          (uint32_t)(seed >> 32), (uint32_t)gid, bsz, n, mu, sigma, b0, b1, n > 1 ? a_inv : 1, c);
    else
#endif
        decode_range_generic((const float *)tb.buf, (const uint32_t *)ib.buf, (float *)ob.buf, (uint32_t)seed,
                             (uint32_t)(seed >> 32), (uint32_t)gid, bsz, n, mu, sigma, b0, b1, n > 1 ? a_inv : 1, c);
    Py_END_ALLOW_THREADS
    ret = Py_None;
    Py_INCREF(ret);
done:
    PyBuffer_Release(&tb);
    PyBuffer_Release(&ib);
    PyBuffer_Release(&ob);
    return ret;
}

/* hash_gather(values_f32, out_f32, seed, gid, n, t0, t1): out[0:t1-t0] = weights t0..t1-1 */
static PyObject *py_hash_gather(PyObject *self, PyObject *args) {
    Py_buffer vb, ob;
    unsigned long long seed;
    unsigned long gid;
    long long n, t0, t1;
    if (!PyArg_ParseTuple(args, "y*w*KkLLL", &vb, &ob, &seed, &gid, &n, &t0, &t1))
        return NULL;
    PyObject *ret = NULL;
    if (n < 1 || t0 < 0 || t1 < t0 || t1 > 0xFFFFFFFFLL || gid >= (1ul << 24)) {
        PyErr_SetString(PyExc_ValueError, "hash_gather: arguments out of range");
        goto done;
    }
    if (!need(&vb, n * 4, "values") || !need(&ob, (t1 - t0) * 4, "out"))
        goto done;
    Py_BEGIN_ALLOW_THREADS
#ifdef MRC_X86
    if (isa == ISA_AVX2)
        hash_range_avx2((const float *)vb.buf, (float *)ob.buf, (uint32_t)seed, (uint32_t)(seed >> 32),
                        (1u << 24) | (uint32_t)gid, n, t0, t1);
    else
#endif
        hash_range_generic((const float *)vb.buf, (float *)ob.buf, (uint32_t)seed, (uint32_t)(seed >> 32),
                           (1u << 24) | (uint32_t)gid, n, t0, t1);
    Py_END_ALLOW_THREADS
    ret = Py_None;
    Py_INCREF(ret);
done:
    PyBuffer_Release(&vb);
    PyBuffer_Release(&ob);
    return ret;
}

/* score_blocks(table, out_f64, blocks_i64, mean_f64, a_f64, cp_f64, const_f64, seed, gid, block_size,
 *              mu_bits, sigma_bits, rows, kbase, ostride, r0, r1, ka, kb) */
static PyObject *py_score_blocks(PyObject *self, PyObject *args) {
    Py_buffer tb, ob, bb, mb, ab, cb, kb_;
    unsigned long long seed;
    unsigned long gid, mu_bits, sigma_bits;
    long long bsz, rows, kbase, ostride, r0, r1, ka, kb;
    if (!PyArg_ParseTuple(args, "y*w*y*y*y*y*y*KkLkkLLLLLLL", &tb, &ob, &bb, &mb, &ab, &cb, &kb_, &seed, &gid, &bsz,
                          &mu_bits, &sigma_bits, &rows, &kbase, &ostride, &r0, &r1, &ka, &kb))
        return NULL;
    PyObject *ret = NULL;
    if (bsz < 1 || rows < 0 || r0 < 0 || r1 < r0 || r1 > rows || ka < kbase || kb < ka || kb - kbase > ostride ||
        kb > 0x100000000LL || gid >= (1ul << 24)) {
        PyErr_SetString(PyExc_ValueError, "score_blocks: arguments out of range");
        goto done;
    }
    if (!need(&tb, TABLE_SIZE * 4, "table") || !need(&ob, rows * ostride * 8, "out") || !need(&bb, rows * 8, "blocks") ||
        !need(&mb, rows * bsz * 8, "mean") || !need(&ab, rows * bsz * 8, "a") || !need(&cb, rows * bsz * 8, "cp") ||
        !need(&kb_, rows * 8, "const"))
        goto done;
    float mu, sigma;
    coding_params(mu_bits, sigma_bits, &mu, &sigma);
    Py_BEGIN_ALLOW_THREADS
#ifdef MRC_X86
    if (isa == ISA_AVX2)
        score_range_avx2((const float *)tb.buf, (double *)ob.buf, ostride, kbase, (const int64_t *)bb.buf,
                         (const double *)mb.buf, (const double *)ab.buf, (const double *)cb.buf,
                         (const double *)kb_.buf, (uint32_t)seed, (uint32_t)(seed >> 32), (uint32_t)gid, bsz, mu,
                         sigma, r0, r1, ka, kb);
    else
#endif
        score_range_generic((const float *)tb.buf, (double *)ob.buf, ostride, kbase, (const int64_t *)bb.buf,
                            (const double *)mb.buf, (const double *)ab.buf, (const double *)cb.buf,
                            (const double *)kb_.buf, (uint32_t)seed, (uint32_t)(seed >> 32), (uint32_t)gid, bsz, mu,
                            sigma, r0, r1, ka, kb);
    Py_END_ALLOW_THREADS
    ret = Py_None;
    Py_INCREF(ret);
done:
    PyBuffer_Release(&tb);
    PyBuffer_Release(&ob);
    PyBuffer_Release(&bb);
    PyBuffer_Release(&mb);
    PyBuffer_Release(&ab);
    PyBuffer_Release(&cb);
    PyBuffer_Release(&kb_);
    return ret;
}

/* decode_affine(table, indices_u32, out_f32, seed, gid, block_size, n, mu_bits, sigma_f32_bits, a, a_inv, c,
 *               i0, i1): the Philox calls whose first value lies in [i0, i1), written wherever their values
 * go (see decode_affine_calls_generic); all of [0, n), in any split, decodes the group */
static PyObject *py_decode_affine(PyObject *self, PyObject *args) {
    Py_buffer tb, ib, ob;
    unsigned long long seed;
    unsigned long gid, mu_bits, sigma_bits;
    long long bsz, n, a, a_inv, c, i0, i1;
    if (!PyArg_ParseTuple(args, "y*y*w*KkLLkkLLLLL", &tb, &ib, &ob, &seed, &gid, &bsz, &n, &mu_bits, &sigma_bits,
                          &a, &a_inv, &c, &i0, &i1))
        return NULL;
    PyObject *ret = NULL;
    int64_t nb = bsz > 0 ? (n + bsz - 1) / bsz : 0;
    if (bsz < 1 || n < 1 || n > 0x7FFFFFFFLL || a < 0 || a >= (n > 1 ? n : 1) || a_inv < 0 ||
        a_inv >= (n > 1 ? n : 1) || (n > 1 && (a * a_inv) % n != 1) || c < 0 || c >= n || i0 < 0 ||
        i1 < i0 || i1 > n || gid >= (1ul << 24)) {
        PyErr_SetString(PyExc_ValueError, "decode_affine: arguments out of range");
        goto done;
    }
    if (!group_buffers(&tb, &ib, &ob, nb, n))
        goto done;
    float mu, sigma;
    coding_params(mu_bits, sigma_bits, &mu, &sigma);
    Py_BEGIN_ALLOW_THREADS
#ifdef MRC_X86
    if (isa == ISA_AVX2 && n % 8 == 0 && bsz % 8 == 0 && n >= 8 && aligned_calls)
        decode_affine_aligned_avx2((const float *)tb.buf, (const uint32_t *)ib.buf, (float *)ob.buf, (uint32_t)seed,
                                   (uint32_t)(seed >> 32), (uint32_t)gid, bsz, n, mu, sigma, a, a_inv, c, i0, i1);
    else if (isa == ISA_AVX2)
        decode_affine_calls_avx2((const float *)tb.buf, (const uint32_t *)ib.buf, (float *)ob.buf, (uint32_t)seed,
                                 (uint32_t)(seed >> 32), (uint32_t)gid, bsz, n, mu, sigma, a, a_inv, c, i0, i1);
    else
#endif
    if (n % 8 == 0 && bsz % 8 == 0 && n >= 8 && aligned_calls)
        decode_affine_aligned_generic((const float *)tb.buf, (const uint32_t *)ib.buf, (float *)ob.buf, (uint32_t)seed,
                                      (uint32_t)(seed >> 32), (uint32_t)gid, bsz, n, mu, sigma, a, a_inv, c, i0, i1);
    else
        decode_affine_calls_generic((const float *)tb.buf, (const uint32_t *)ib.buf, (float *)ob.buf, (uint32_t)seed,
                                    (uint32_t)(seed >> 32), (uint32_t)gid, bsz, n, mu, sigma, a, a_inv, c, i0, i1);
    Py_END_ALLOW_THREADS
    ret = Py_None;
    Py_INCREF(ret);
done:
    PyBuffer_Release(&tb);
    PyBuffer_Release(&ib);
    PyBuffer_Release(&ob);
    return ret;
}

static PyObject *py_isa(PyObject *self, PyObject *noargs) {
    return PyUnicode_FromString(isa == ISA_AVX2 ? "avx2" : "generic");
}

/* set_isa(name): "generic", "avx2" or "auto"; for tests and comparisons */
static PyObject *py_set_isa(PyObject *self, PyObject *args) {
    const char *name;
    if (!PyArg_ParseTuple(args, "s", &name))
        return NULL;
    if (strcmp(name, "generic") == 0) {
        isa = ISA_GENERIC;
    } else if (strcmp(name, "auto") == 0) {
        detect_isa();
    } else if (strcmp(name, "avx2") == 0) {
        detect_isa();
        if (isa != ISA_AVX2) {
            PyErr_SetString(PyExc_ValueError, "this CPU (or build) has no AVX2");
            return NULL;
        }
    } else {
        PyErr_SetString(PyExc_ValueError, "isa must be 'generic', 'avx2' or 'auto'");
        return NULL;
    }
    Py_RETURN_NONE;
}

/* _set_aligned_calls(flag): use the direct enumeration of calls for aligned affine groups (1, the default)
 * or the scan (0); for tests and A/B comparisons */
static PyObject *py_set_aligned_calls(PyObject *self, PyObject *args) {
    int flag;
    if (!PyArg_ParseTuple(args, "p", &flag))
        return NULL;
    aligned_calls = flag;
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"_set_aligned_calls", py_set_aligned_calls, METH_VARARGS, "_set_aligned_calls(flag): for tests and comparisons"},
    {"decode_blocks", py_decode_blocks, METH_VARARGS,
     "decode_blocks(table, indices_u32, out_f32, seed, gid, block_size, n, mu_bits, sigma_f32_bits, b0, b1, a_inv, c)"},
    {"decode_affine", py_decode_affine, METH_VARARGS,
     "decode_affine(table, indices_u32, out_f32, seed, gid, block_size, n, mu_bits, sigma_f32_bits, a, a_inv, c, i0, i1)"},
    {"isa", py_isa, METH_NOARGS, "isa() -> 'avx2' or 'generic': the code path in use"},
    {"set_isa", py_set_isa, METH_VARARGS, "set_isa('generic' | 'avx2' | 'auto')"},
    {"hash_gather", py_hash_gather, METH_VARARGS, "hash_gather(values_f32, out_f32, seed, gid, n, t0, t1)"},
    {"score_blocks", py_score_blocks, METH_VARARGS,
     "score_blocks(table, out_f64, blocks_i64, mean, a, cp, const, seed, gid, block_size, mu_bits, sigma_f32_bits, "
     "rows, kbase, ostride, r0, r1, ka, kb)"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_native", "mrcformat's compiled CPU kernels", -1, methods};

PyMODINIT_FUNC PyInit__native(void) {
    detect_isa();
    return PyModule_Create(&module);
}
