/* One decode step of grouped-query attention over a layer's stored pages, read in place.

   Each (sequence, KV head) has G query rows (the query heads sharing that KV head). Stored tokens live in
   pages (exactly sized tensors of consecutive tokens); each page's keys and values have their own encoding:
   raw (fp32, fp16, bf16), packed integer codes with per-group scale and zero, or float8 e4m3 codes with a
   per-group scale. A row is decoded into a small on-stack buffer and used at once, so no dequantised or
   gathered copy of the cache is ever written: the step reads each stored byte once (keys in the first pass,
   values in the second). Work is split over (sequence, KV head, token range) items; partial softmax
   statistics of the ranges are merged at the end (split-KV "flash decoding").

   Built by measured/decode.py with the C compiler at first use; threads come from the OpenMP runtime torch
   itself loaded (the library links libgomp.so.1 by soname, which resolves to torch's copy). */

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <omp.h>
#if defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)
#include <immintrin.h>
#define SIMD 1
#else
#define SIMD 0
#endif

enum { RAW_F32 = 0, RAW_F16 = 1, RAW_BF16 = 2, INT_PACKED = 3, FP8_E4M3 = 4 };
enum { META_F32 = 0, META_F16 = 1, META_BF16 = 2 };
#define MAX_DIM 4096
#define BLOCK 16 /* tokens per block: rows decoded together, accumulators kept in registers */

/* Every field 8 bytes wide: the ctypes mirror in decode.py needs no padding rules. */
typedef struct {
  int64_t kind, bits, dim;  /* encoding, bits per code (INT_PACKED), elements per row */
  int64_t t_div, d_div;     /* a scale row covers t_div tokens; a scale column covers d_div elements */
  int64_t meta, rmeta;      /* dtype of scale and zero; of rowscale */
  const void *data, *scale, *zero, *rowscale;  /* rowscale: optional per-token multiplier (merged tokens) */
  int64_t n;                /* tokens in the page */
  int64_t ds[3], ss[3], rs[3];  /* strides over (batch, head, token) of data (bytes for codes), scale rows,
                                   rowscale; the last dimension of data and scale is contiguous */
} Enc;

static float fp8_table[256];

__attribute__((constructor)) static void init_fp8(void) {
  for (int x = 0; x < 256; x++) {
    int e = (x >> 3) & 15, m = x & 7;
    float v;
    if (e == 15 && m == 7)
      v = NAN;
    else if (e == 0)
      v = ldexpf((float)m / 8.0f, -6);
    else
      v = ldexpf(1.0f + (float)m / 8.0f, e - 7);
    fp8_table[x] = (x & 128) ? -v : v;
  }
}

/* exp for x <= 0 (softmax terms), vectorisable: Cephes' expf polynomial (about 1 ulp) scaled by 2^n. */
static inline float exp_neg(float x) {
  x = x < -87.0f ? -87.0f : x;
  const float n = floorf(x * 1.44269504088896341f + 0.5f);
  float r = x - n * 0.693359375f;
  r = r - n * -2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  const uint32_t bits = (uint32_t)((int32_t)n + 127) << 23;
  float s;
  memcpy(&s, &bits, 4);
  return p * s;
}

#if SIMD
static inline __m256 exp_neg8(__m256 x) {
  x = _mm256_max_ps(x, _mm256_set1_ps(-87.0f));
  const __m256 n = _mm256_floor_ps(_mm256_fmadd_ps(x, _mm256_set1_ps(1.44269504088896341f), _mm256_set1_ps(0.5f)));
  __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
  r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
  __m256 p = _mm256_set1_ps(1.9875691500e-4f);
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.3981999507e-3f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.3334519073e-3f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.1665795894e-2f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.6666665459e-1f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(5.0000001201e-1f));
  p = _mm256_fmadd_ps(_mm256_mul_ps(p, r), r, _mm256_add_ps(r, _mm256_set1_ps(1.0f)));
  const __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
  return _mm256_mul_ps(p, _mm256_castsi256_ps(e));
}
#endif

static inline float half_to_float(uint16_t h) {
  uint32_t sign = (uint32_t)(h & 0x8000) << 16, exp = (h >> 10) & 31, man = h & 1023, bits;
  if (exp == 0) {
    if (man == 0) {
      bits = sign;
    } else { /* subnormal: normalise */
      exp = 113;
      while (!(man & 1024)) { man <<= 1; exp--; }
      bits = sign | (exp << 23) | ((man & 1023) << 13);
    }
  } else if (exp == 31) {
    bits = sign | 0x7f800000u | (man << 13);
  } else {
    bits = sign | ((exp + 112) << 23) | (man << 13);
  }
  float f;
  memcpy(&f, &bits, 4);
  return f;
}

static inline float bf16_to_float(uint16_t h) {
  uint32_t bits = (uint32_t)h << 16;
  float f;
  memcpy(&f, &bits, 4);
  return f;
}

static inline float meta_at(const void *p, int64_t meta, int64_t i) {
  if (meta == META_F32) return ((const float *)p)[i];
#if SIMD
  if (meta == META_F16) return _cvtsh_ss(((const uint16_t *)p)[i]);
#endif
  if (meta == META_F16) return half_to_float(((const uint16_t *)p)[i]);
  return bf16_to_float(((const uint16_t *)p)[i]);
}

/* Row t of page e for (b, h) as floats: a pointer into the page itself for unscaled fp32, else `buf`. */
static inline const float *decode_row(const Enc *e, int64_t b, int64_t h, int64_t t, float *buf) {
  const int64_t d = e->dim;
  const int64_t off = b * e->ds[0] + h * e->ds[1] + t * e->ds[2];
  float rs = 1.0f;
  if (e->rowscale) rs = meta_at(e->rowscale, e->rmeta, b * e->rs[0] + h * e->rs[1] + t * e->rs[2]);
  switch (e->kind) {
    case RAW_F32: {
      const float *row = (const float *)e->data + off;
      if (!e->rowscale) return row;
#pragma omp simd
      for (int64_t i = 0; i < d; i++) buf[i] = row[i] * rs;
      return buf;
    }
    case RAW_F16: {
      const uint16_t *row = (const uint16_t *)e->data + off;
      for (int64_t i = 0; i < d; i++) buf[i] = half_to_float(row[i]) * rs;
      return buf;
    }
    case RAW_BF16: {
      const uint16_t *row = (const uint16_t *)e->data + off;
      for (int64_t i = 0; i < d; i++) buf[i] = bf16_to_float(row[i]) * rs;
      return buf;
    }
    default: break;
  }
  const uint8_t *row = (const uint8_t *)e->data + off;
#if SIMD
  /* 4- and 8-bit codes with a scale per run of 32 elements or more along the row (int4, int8): unpack, scale and
     shift each 32 codes in registers, one pass */
  if (e->kind == INT_PACKED && e->t_div == 1 && (e->bits == 4 || e->bits == 8) && e->d_div % 32 == 0 && d % 32 == 0) {
    const int64_t srow = b * e->ss[0] + h * e->ss[1] + t * e->ss[2];
    const __m128i nib = _mm_set1_epi8(15);
    for (int64_t i = 0; i < d; i += 32) {
      const int64_t c = i / e->d_div;
      const float sc = meta_at(e->scale, e->meta, srow + c) * rs;
      const float z = e->zero ? meta_at(e->zero, e->meta, srow + c) * rs : 0.0f;
      const __m256 sv = _mm256_set1_ps(sc), zv = _mm256_set1_ps(z);
      __m128i q0, q1, q2, q3;
      if (e->bits == 4) {
        __m128i bytes = _mm_loadu_si128((const __m128i *)(row + (i >> 1)));
        __m128i lo = _mm_and_si128(bytes, nib), hi = _mm_and_si128(_mm_srli_epi16(bytes, 4), nib);
        __m128i e0 = _mm_unpacklo_epi8(lo, hi), e1 = _mm_unpackhi_epi8(lo, hi);
        q0 = e0, q1 = _mm_srli_si128(e0, 8), q2 = e1, q3 = _mm_srli_si128(e1, 8);
      } else {
        __m128i a = _mm_loadu_si128((const __m128i *)(row + i)), b2 = _mm_loadu_si128((const __m128i *)(row + i + 16));
        q0 = a, q1 = _mm_srli_si128(a, 8), q2 = b2, q3 = _mm_srli_si128(b2, 8);
      }
      _mm256_storeu_ps(buf + i, _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(q0)), sv, zv));
      _mm256_storeu_ps(buf + i + 8, _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(q1)), sv, zv));
      _mm256_storeu_ps(buf + i + 16, _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(q2)), sv, zv));
      _mm256_storeu_ps(buf + i + 24, _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(q3)), sv, zv));
    }
    return buf;
  }
#endif
  int64_t i0 = 0; /* elements already decoded by the vector loops */
  if (e->kind == FP8_E4M3) {
#if SIMD
    for (; i0 + 8 <= d; i0 += 8) {
      __m256i ix = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)(row + i0)));
      _mm256_storeu_ps(buf + i0, _mm256_i32gather_ps(fp8_table, ix, 4));
    }
#endif
    for (int64_t i = i0; i < d; i++) buf[i] = fp8_table[row[i]];
  } else if (e->bits == 8) {
#if SIMD
    for (; i0 + 8 <= d; i0 += 8)
      _mm256_storeu_ps(buf + i0, _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)(row + i0)))));
#endif
    for (int64_t i = i0; i < d; i++) buf[i] = (float)row[i];
  } else if (e->bits == 4) {
#if SIMD
    const __m128i nib = _mm_set1_epi8(15);
    for (; i0 + 32 <= d; i0 += 32) { /* 16 bytes -> 32 codes, low nibble first */
      __m128i bytes = _mm_loadu_si128((const __m128i *)(row + (i0 >> 1)));
      __m128i lo = _mm_and_si128(bytes, nib), hi = _mm_and_si128(_mm_srli_epi16(bytes, 4), nib);
      __m128i e0 = _mm_unpacklo_epi8(lo, hi), e1 = _mm_unpackhi_epi8(lo, hi);
      _mm256_storeu_ps(buf + i0, _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(e0)));
      _mm256_storeu_ps(buf + i0 + 8, _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_srli_si128(e0, 8))));
      _mm256_storeu_ps(buf + i0 + 16, _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(e1)));
      _mm256_storeu_ps(buf + i0 + 24, _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_srli_si128(e1, 8))));
    }
#endif
    for (int64_t i = i0; i + 1 < d; i += 2) {
      uint8_t c = row[i >> 1];
      buf[i] = (float)(c & 15);
      buf[i + 1] = (float)(c >> 4);
    }
    if (d & 1) buf[d - 1] = (float)(row[d >> 1] & 15);
  } else if (e->bits == 2) {
#if SIMD
    const __m128i spread = _mm_setr_epi8(0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3);
    const __m256i shifts = _mm256_setr_epi32(0, 2, 4, 6, 0, 2, 4, 6), three = _mm256_set1_epi32(3);
    for (; i0 + 16 <= d; i0 += 16) { /* 4 bytes -> 16 codes: each byte to four lanes, shifted apart */
      int32_t word;
      memcpy(&word, row + (i0 >> 2), 4);
      __m128i b4 = _mm_shuffle_epi8(_mm_cvtsi32_si128(word), spread);
      __m256i lo = _mm256_and_si256(_mm256_srlv_epi32(_mm256_cvtepu8_epi32(b4), shifts), three);
      __m256i hi = _mm256_and_si256(_mm256_srlv_epi32(_mm256_cvtepu8_epi32(_mm_srli_si128(b4, 8)), shifts), three);
      _mm256_storeu_ps(buf + i0, _mm256_cvtepi32_ps(lo));
      _mm256_storeu_ps(buf + i0 + 8, _mm256_cvtepi32_ps(hi));
    }
#endif
    for (int64_t i = i0; i < d; i++) buf[i] = (float)((row[i >> 2] >> ((i & 3) * 2)) & 3);
  } else { /* any other width: code i starts at bit i * bits of the row, least significant first */
    const int64_t bits = e->bits, mask = (1 << bits) - 1, nbytes = (d * bits + 7) / 8;
    for (int64_t i = 0; i < d; i++) {
      int64_t pos = i * bits, byte = pos >> 3, sh = pos & 7;
      uint32_t v = row[byte];
      if (byte + 1 < nbytes) v |= (uint32_t)row[byte + 1] << 8;
      buf[i] = (float)((v >> sh) & mask);
    }
  }
  const int64_t srow = b * e->ss[0] + h * e->ss[1] + (t / e->t_div) * e->ss[2];
  if (e->d_div == 1) { /* one scale (and zero) per element: per-channel groups */
    int64_t i = 0;
#if SIMD
    const __m256 vr = _mm256_set1_ps(rs);
    if (e->meta == META_F16) {
      const uint16_t *sp = (const uint16_t *)e->scale + srow, *zp = e->zero ? (const uint16_t *)e->zero + srow : NULL;
      for (; i + 8 <= d; i += 8) {
        __m256 sv = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(sp + i)));
        __m256 zv = zp ? _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(zp + i))) : _mm256_setzero_ps();
        _mm256_storeu_ps(buf + i, _mm256_mul_ps(_mm256_fmadd_ps(_mm256_loadu_ps(buf + i), sv, zv), vr));
      }
    } else if (e->meta == META_F32) {
      const float *sp = (const float *)e->scale + srow, *zp = e->zero ? (const float *)e->zero + srow : NULL;
      for (; i + 8 <= d; i += 8) {
        __m256 zv = zp ? _mm256_loadu_ps(zp + i) : _mm256_setzero_ps();
        _mm256_storeu_ps(buf + i, _mm256_mul_ps(_mm256_fmadd_ps(_mm256_loadu_ps(buf + i), _mm256_loadu_ps(sp + i), zv), vr));
      }
    }
#endif
    for (; i < d; i++) {
      float sc = meta_at(e->scale, e->meta, srow + i), z = e->zero ? meta_at(e->zero, e->meta, srow + i) : 0.0f;
      buf[i] = (buf[i] * sc + z) * rs;
    }
  } else {
    for (int64_t g0 = 0, c = 0; g0 < d; g0 += e->d_div, c++) {
      float sc = meta_at(e->scale, e->meta, srow + c), z = e->zero ? meta_at(e->zero, e->meta, srow + c) : 0.0f;
      int64_t g1 = g0 + e->d_div < d ? g0 + e->d_div : d, i = g0;
#if SIMD
      const __m256 sv = _mm256_set1_ps(sc * rs), zv = _mm256_set1_ps(z * rs);
      for (; i + 8 <= g1; i += 8) _mm256_storeu_ps(buf + i, _mm256_fmadd_ps(_mm256_loadu_ps(buf + i), sv, zv));
#endif
      for (; i < g1; i++) buf[i] = (buf[i] * sc + z) * rs;
    }
  }
  return buf;
}

static inline const float *row_of(const Enc *e, int64_t b, int64_t h, int64_t t, float *buf) {
  if (e->kind == RAW_F32 && !e->rowscale) return (const float *)e->data + b * e->ds[0] + h * e->ds[1] + t * e->ds[2];
  return decode_row(e, b, h, t, buf);
}

/* Page holding logical token t, starting the search at *page (positions are visited in ascending order). */
static inline int64_t find_page(const int64_t *starts, int64_t np, int64_t t, int64_t *page) {
  while (*page + 1 < np && starts[*page + 1] <= t) (*page)++;
  return t - starts[*page];
}

/* Rows of the block of positions j..j+nb-1 (logical tokens idx[j + u], or j + u without an index), each decoded
   into bufs + u * width unless it can be read in place. Consecutive unscaled fp32 rows of one page are pointer
   arithmetic, with no per-row lookup. */
static inline void fill_rows(const Enc *pages, const int64_t *starts, int64_t np, const int64_t *idx, int64_t j,
                             int64_t nb, int64_t b, int64_t h, int64_t *page, float *bufs, int64_t width,
                             const float **rows) {
  if (!idx) {
    const int64_t local = find_page(starts, np, j, page);
    const Enc *e = &pages[*page];
    if (e->kind == RAW_F32 && !e->rowscale && local + nb <= e->n) {
      const float *base = (const float *)e->data + b * e->ds[0] + h * e->ds[1] + local * e->ds[2];
      for (int64_t u = 0; u < nb; u++) rows[u] = base + u * e->ds[2];
      return;
    }
  }
  for (int64_t u = 0; u < nb; u++) {
    const int64_t t = idx ? idx[j + u] : j + u;
    const int64_t local = find_page(starts, np, t, page);
    rows[u] = row_of(&pages[*page], b, h, local, bufs + u * width);
  }
}

/* Logits of up to 8 rows against the G query rows: s[g * stride + u] for u < nb. Eight independent accumulators
   keep the FMA units busy (one per row; fewer would wait on each other's latency). */
static inline void dots8(const float *q, int64_t G, int64_t dk, const float *const *rows, int64_t nb, float *s,
                         int64_t stride) {
#if SIMD
  if (dk % 8 == 0) {
    const float *r[8];
    for (int u = 0; u < 8; u++) r[u] = rows[u < nb ? u : 0];
    for (int64_t g = 0; g < G; g++) {
      const float *qg = q + g * dk;
      __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0, a4 = a0, a5 = a0, a6 = a0, a7 = a0;
      for (int64_t c = 0; c < dk; c += 8) {
        const __m256 qv = _mm256_loadu_ps(qg + c);
        a0 = _mm256_fmadd_ps(qv, _mm256_loadu_ps(r[0] + c), a0);
        a1 = _mm256_fmadd_ps(qv, _mm256_loadu_ps(r[1] + c), a1);
        a2 = _mm256_fmadd_ps(qv, _mm256_loadu_ps(r[2] + c), a2);
        a3 = _mm256_fmadd_ps(qv, _mm256_loadu_ps(r[3] + c), a3);
        a4 = _mm256_fmadd_ps(qv, _mm256_loadu_ps(r[4] + c), a4);
        a5 = _mm256_fmadd_ps(qv, _mm256_loadu_ps(r[5] + c), a5);
        a6 = _mm256_fmadd_ps(qv, _mm256_loadu_ps(r[6] + c), a6);
        a7 = _mm256_fmadd_ps(qv, _mm256_loadu_ps(r[7] + c), a7);
      }
      /* transpose-and-add: lane u of the result is the sum of a_u */
      const __m256 t0 = _mm256_hadd_ps(_mm256_hadd_ps(a0, a1), _mm256_hadd_ps(a2, a3));
      const __m256 t1 = _mm256_hadd_ps(_mm256_hadd_ps(a4, a5), _mm256_hadd_ps(a6, a7));
      const __m256 sum = _mm256_add_ps(_mm256_permute2f128_ps(t0, t1, 0x20), _mm256_permute2f128_ps(t0, t1, 0x31));
      if (nb == 8) {
        _mm256_storeu_ps(s + g * stride, sum);
      } else {
        float out[8];
        _mm256_storeu_ps(out, sum);
        for (int64_t u = 0; u < nb; u++) s[g * stride + u] = out[u];
      }
    }
    return;
  }
#endif
  for (int64_t g = 0; g < G; g++)
    for (int64_t u = 0; u < nb; u++) {
      const float *qg = q + g * dk, *row = rows[u];
      float acc = 0.0f;
#pragma omp simd reduction(+ : acc)
      for (int64_t i = 0; i < dk; i++) acc += qg[i] * row[i];
      s[g * stride + u] = acc;
    }
}

/* acc[g] += sum over u < nb of p[g * stride + u] * rows[u], for a block of up to BLOCK rows. Each 32-wide
   slice of a query row's accumulator stays in registers across the block. */
static inline void axpy_block(float *acc, int64_t G, int64_t dv, const float *const *rows, int64_t nb,
                              const float *p, int64_t stride) {
#if SIMD
  if (dv % 8 == 0) {
    for (int64_t g = 0; g < G; g++) {
      const float *pg = p + g * stride;
      float *ag = acc + g * dv;
      int64_t c = 0;
      for (; c + 64 <= dv; c += 64) { /* a 64-wide slice in eight accumulators: eight independent FMA chains */
        __m256 a0 = _mm256_loadu_ps(ag + c), a1 = _mm256_loadu_ps(ag + c + 8), a2 = _mm256_loadu_ps(ag + c + 16),
               a3 = _mm256_loadu_ps(ag + c + 24), a4 = _mm256_loadu_ps(ag + c + 32), a5 = _mm256_loadu_ps(ag + c + 40),
               a6 = _mm256_loadu_ps(ag + c + 48), a7 = _mm256_loadu_ps(ag + c + 56);
        for (int64_t u = 0; u < nb; u++) {
          const __m256 pu = _mm256_set1_ps(pg[u]);
          const float *r = rows[u] + c;
          a0 = _mm256_fmadd_ps(pu, _mm256_loadu_ps(r), a0);
          a1 = _mm256_fmadd_ps(pu, _mm256_loadu_ps(r + 8), a1);
          a2 = _mm256_fmadd_ps(pu, _mm256_loadu_ps(r + 16), a2);
          a3 = _mm256_fmadd_ps(pu, _mm256_loadu_ps(r + 24), a3);
          a4 = _mm256_fmadd_ps(pu, _mm256_loadu_ps(r + 32), a4);
          a5 = _mm256_fmadd_ps(pu, _mm256_loadu_ps(r + 40), a5);
          a6 = _mm256_fmadd_ps(pu, _mm256_loadu_ps(r + 48), a6);
          a7 = _mm256_fmadd_ps(pu, _mm256_loadu_ps(r + 56), a7);
        }
        _mm256_storeu_ps(ag + c, a0);
        _mm256_storeu_ps(ag + c + 8, a1);
        _mm256_storeu_ps(ag + c + 16, a2);
        _mm256_storeu_ps(ag + c + 24, a3);
        _mm256_storeu_ps(ag + c + 32, a4);
        _mm256_storeu_ps(ag + c + 40, a5);
        _mm256_storeu_ps(ag + c + 48, a6);
        _mm256_storeu_ps(ag + c + 56, a7);
      }
      for (; c + 32 <= dv; c += 32) {
        __m256 a0 = _mm256_loadu_ps(ag + c), a1 = _mm256_loadu_ps(ag + c + 8), a2 = _mm256_loadu_ps(ag + c + 16),
               a3 = _mm256_loadu_ps(ag + c + 24);
        for (int64_t u = 0; u < nb; u++) {
          const __m256 pu = _mm256_set1_ps(pg[u]);
          const float *r = rows[u] + c;
          a0 = _mm256_fmadd_ps(pu, _mm256_loadu_ps(r), a0);
          a1 = _mm256_fmadd_ps(pu, _mm256_loadu_ps(r + 8), a1);
          a2 = _mm256_fmadd_ps(pu, _mm256_loadu_ps(r + 16), a2);
          a3 = _mm256_fmadd_ps(pu, _mm256_loadu_ps(r + 24), a3);
        }
        _mm256_storeu_ps(ag + c, a0);
        _mm256_storeu_ps(ag + c + 8, a1);
        _mm256_storeu_ps(ag + c + 16, a2);
        _mm256_storeu_ps(ag + c + 24, a3);
      }
      for (; c < dv; c += 8) {
        __m256 a = _mm256_loadu_ps(ag + c);
        for (int64_t u = 0; u < nb; u++) a = _mm256_fmadd_ps(_mm256_set1_ps(pg[u]), _mm256_loadu_ps(rows[u] + c), a);
        _mm256_storeu_ps(ag + c, a);
      }
    }
    return;
  }
#endif
  for (int64_t g = 0; g < G; g++)
    for (int64_t u = 0; u < nb; u++) {
      const float pu = p[g * stride + u], *row = rows[u];
      float *ag = acc + g * dv;
#pragma omp simd
      for (int64_t i = 0; i < dv; i++) ag[i] += pu * row[i];
    }
}


/* q [B, H, G, dk] float32, contiguous; pages ks[i], vs[i] (np of them) hold consecutive logical tokens;
   bias (optional) adds bias[b*bsb + h*bsh + t] to the logit of logical token t < bias_n; index (optional)
   [B, H, m] ascending logical tokens to read instead of all; out [B, H, G, dv], lse [B, H, G] (log-sum-exp
   of the logits read) and, when given, logits [B, H, G, read] (scaled, capped and biased). Returns 0, or -1
   when a dimension exceeds MAX_DIM or memory runs out. */
int kvsim_attend(int64_t B, int64_t H, int64_t G, int64_t dk, int64_t dv, const float *q, const Enc *ks,
                 const Enc *vs, int64_t np, const float *bias, int64_t bias_n, int64_t bsb, int64_t bsh,
                 const int64_t *index, int64_t m, int64_t isb, int64_t ish, float scale, float softcap,
                 float *out, float *lse, float *logits, int64_t splits, int64_t threads) {
  if (dk > MAX_DIM || dv > MAX_DIM || G < 1 || splits < 1) return -1;
  int64_t *starts = malloc((size_t)(np + 1) * sizeof(int64_t));
  if (!starts) return -1;
  starts[0] = 0;
  for (int64_t i = 0; i < np; i++) starts[i + 1] = starts[i] + ks[i].n;
  const int64_t total = starts[np];
  const int64_t read = index ? m : total;
  const int64_t items = B * H * splits;
  float *pm = malloc((size_t)items * G * sizeof(float));
  float *pl = malloc((size_t)items * G * sizeof(float));
  float *pacc = malloc((size_t)items * G * dv * sizeof(float));
  int failed = !(pm && pl && pacc);
  if (!failed) {
    /* a team costs microseconds: small steps run on the calling thread */
#pragma omp parallel for schedule(dynamic, 1) num_threads((int)threads) if (threads > 1 && B * H * read >= 4096)
    for (int64_t it = 0; it < items; it++) {
      const int64_t bh = it / splits, sp = it % splits, b = bh / H, h = bh % H;
      const int64_t j0 = read * sp / splits, j1 = read * (sp + 1) / splits, len = j1 - j0;
      float *mx = pm + it * G, *l = pl + it * G, *acc = pacc + it * G * dv;
      for (int64_t g = 0; g < G; g++) { mx[g] = -INFINITY; l[g] = 0.0f; }
      memset(acc, 0, (size_t)(G * dv) * sizeof(float));
      if (len <= 0) continue;
      float *sc = malloc((size_t)(G * len + BLOCK * (dk > dv ? dk : dv)) * sizeof(float));
      if (!sc) {
#pragma omp atomic write
        failed = 1;
        continue;
      }
      float *bufs = sc + G * len; /* decoded rows of one block */
      const int64_t width = dk > dv ? dk : dv;
      const float *qb = q + (b * H + h) * G * dk;
      const int64_t *idx = index ? index + b * isb + h * ish : NULL;
      const float *rows[BLOCK];
      int64_t page = 0;
      for (int64_t j = j0; j < j1; j += BLOCK) { /* keys: logits */
        const int64_t nb = j1 - j < BLOCK ? j1 - j : BLOCK;
        fill_rows(ks, starts, np, idx, j, nb, b, h, &page, bufs, width, rows);
        for (int64_t u = 0; u < nb; u += 8)
          dots8(qb, G, dk, rows + u, nb - u < 8 ? nb - u : 8, sc + (j - j0) + u, len);
      }
      for (int64_t g = 0; g < G; g++) { /* scale, cap, bias; the largest logit */
        float *sg = sc + g * len;
#pragma omp simd
        for (int64_t j = 0; j < len; j++) sg[j] *= scale;
        if (softcap > 0.0f)
          for (int64_t j = 0; j < len; j++) sg[j] = softcap * tanhf(sg[j] / softcap);
        if (bias)
          for (int64_t j = 0; j < len; j++) {
            const int64_t t = idx ? idx[j0 + j] : j0 + j;
            if (t < bias_n) sg[j] += bias[b * bsb + h * bsh + t];
          }
        float top = -INFINITY;
#pragma omp simd reduction(max : top)
        for (int64_t j = 0; j < len; j++) top = sg[j] > top ? sg[j] : top;
        mx[g] = top;
      }
      if (logits)
        for (int64_t g = 0; g < G; g++)
          memcpy(logits + ((b * H + h) * G + g) * read + j0, sc + g * len, (size_t)len * sizeof(float));
      for (int64_t g = 0; g < G; g++) { /* exp(logit - max) in place, and its sum */
        float sum = 0.0f, *sg = sc + g * len;
        const float top = mx[g];
        int64_t j = 0;
#if SIMD
        __m256 acc8 = _mm256_setzero_ps(), tv = _mm256_set1_ps(top);
        for (; j + 8 <= len; j += 8) {
          __m256 e8 = exp_neg8(_mm256_sub_ps(_mm256_loadu_ps(sg + j), tv));
          _mm256_storeu_ps(sg + j, e8);
          acc8 = _mm256_add_ps(acc8, e8);
        }
        float part[8];
        _mm256_storeu_ps(part, acc8);
        for (int u = 0; u < 8; u++) sum += part[u];
#endif
        for (; j < len; j++) { sg[j] = exp_neg(sg[j] - top); sum += sg[j]; }
        l[g] = sum;
      }
      page = 0;
      for (int64_t j = j0; j < j1; j += BLOCK) { /* values: weighted sum */
        const int64_t nb = j1 - j < BLOCK ? j1 - j : BLOCK;
        fill_rows(vs, starts, np, idx, j, nb, b, h, &page, bufs, width, rows);
        axpy_block(acc, G, dv, rows, nb, sc + (j - j0), len);
      }
      free(sc);
    }
  }
  if (!failed) { /* merge the token ranges of each (sequence, head) */
    for (int64_t bh = 0; bh < B * H; bh++) {
      for (int64_t g = 0; g < G; g++) {
        float big = -INFINITY, sum = 0.0f;
        for (int64_t sp = 0; sp < splits; sp++)
          if (pm[(bh * splits + sp) * G + g] > big) big = pm[(bh * splits + sp) * G + g];
        float *o = out + (bh * G + g) * dv;
        memset(o, 0, (size_t)dv * sizeof(float));
        for (int64_t sp = 0; sp < splits; sp++) {
          const int64_t it = bh * splits + sp;
          if (pl[it * G + g] == 0.0f) continue;
          const float w = expf(pm[it * G + g] - big);
          sum += pl[it * G + g] * w;
          const float *a = pacc + (it * G + g) * dv;
          for (int64_t i = 0; i < dv; i++) o[i] += a[i] * w;
        }
        for (int64_t i = 0; i < dv; i++) o[i] /= sum;
        lse[bh * G + g] = big + logf(sum);
      }
    }
  }
  free(starts);
  free(pm);
  free(pl);
  free(pacc);
  return failed ? -1 : 0;
}

/* ------------------------------------------------------------------------------------------- quantization */
static inline uint16_t float_to_half(float f) {
#if SIMD
  return (uint16_t)_cvtss_sh(f, _MM_FROUND_TO_NEAREST_INT);
#else
  uint32_t x;
  memcpy(&x, &f, 4);
  uint32_t sign = (x >> 16) & 0x8000, mant = x & 0x7fffff;
  int32_t exp = (int32_t)((x >> 23) & 255) - 127 + 15;
  if (((x >> 23) & 255) == 255) return (uint16_t)(sign | 0x7c00 | (mant ? 0x200 : 0));
  if (exp >= 31) return (uint16_t)(sign | 0x7c00);
  if (exp <= 0) { /* subnormal or zero, round to nearest even */
    if (exp < -10) return (uint16_t)sign;
    mant |= 0x800000;
    uint32_t shift = (uint32_t)(14 - exp), half = 1u << (shift - 1), rest = mant & ((1u << shift) - 1);
    uint32_t h = mant >> shift;
    if (rest > half || (rest == half && (h & 1))) h++;
    return (uint16_t)(sign | h);
  }
  uint32_t h = sign | ((uint32_t)exp << 10) | (mant >> 13), rest = mant & 0x1fff;
  if (rest > 0x1000 || (rest == 0x1000 && (h & 1))) h++;
  return (uint16_t)h;
#endif
}

/* Asymmetric integer quantization of rows along their last dimension, exactly as measured/quant.py's
   quantize_groups does it (the same float32 operations in the same order, round half to even): per group of
   `group` elements (0: the whole row) zero = min and scale = max((max - min) / (2^bits - 1), 1e-12), both
   stored at 16 (fp16) or 32 bits, codes round((x - zero) / scale) clamped to [0, 2^bits - 1], packed least
   significant bits first. x [B, H, n, d] with strides (elements) xs over (b, h, t); outputs contiguous:
   payload [B, H, n, ceil(d * bits / 8)], scale and zero [B, H, n, groups]. */
int kvsim_quantize(int64_t B, int64_t H, int64_t n, int64_t d, const float *x, int64_t xs0, int64_t xs1,
                   int64_t xs2, int64_t bits, int64_t group, int64_t scale_bits, uint8_t *payload, void *scale,
                   void *zero) {
  if (bits < 1 || bits > 8 || d < 1) return -1;
  const int64_t g = group ? group : d, groups = (d + g - 1) / g, nbytes = (d * bits + 7) / 8;
  const float levels = (float)((1 << bits) - 1);
  for (int64_t b = 0; b < B; b++)
    for (int64_t h = 0; h < H; h++)
      for (int64_t t = 0; t < n; t++) {
        const float *row = x + b * xs0 + h * xs1 + t * xs2;
        const int64_t r = (b * H + h) * n + t;
        uint8_t *out = payload + r * nbytes;
        memset(out, 0, (size_t)nbytes);
        for (int64_t c = 0; c < groups; c++) {
          const int64_t i0 = c * g, i1 = i0 + g < d ? i0 + g : d;
          float lo = row[i0], hi = row[i0];
          for (int64_t i = i0 + 1; i < i1; i++) {
            lo = row[i] < lo ? row[i] : lo;
            hi = row[i] > hi ? row[i] : hi;
          }
          float sc = (hi - lo) / levels;
          sc = sc < 1e-12f ? 1e-12f : sc;
          float zf, sf;
          if (scale_bits == 16) {
            uint16_t zh = float_to_half(lo), sh = float_to_half(sc);
            ((uint16_t *)zero)[r * groups + c] = zh;
            ((uint16_t *)scale)[r * groups + c] = sh;
            zf = half_to_float(zh);
            sf = half_to_float(sh);
          } else {
            ((float *)zero)[r * groups + c] = lo;
            ((float *)scale)[r * groups + c] = sc;
            zf = lo;
            sf = sc;
          }
          for (int64_t i = i0; i < i1; i++) {
            float q = nearbyintf((row[i] - zf) / sf);
            /* clamp as torch does; NaN (0 / 0 on a constant group whose scale underflowed) becomes code 0 */
            uint32_t code = q != q ? 0u : q <= 0.0f ? 0u : q >= levels ? (uint32_t)levels : (uint32_t)q;
            const int64_t pos = i * bits;
            out[pos >> 3] |= (uint8_t)(code << (pos & 7));
            if ((pos & 7) + bits > 8) out[(pos >> 3) + 1] |= (uint8_t)(code >> (8 - (pos & 7)));
          }
        }
      }
  return 0;
}

/* ------------------------------------------------------------------------------------------ skinny matmul
   y[m, n] = x[m, k] @ w[n, k]^T (+ bias[n]) for the few rows of a decode step. A BLAS sgemm packs the weight
   into its own tile layout on every call, so a matmul of 2-16 rows reads and writes the whole weight two or
   three times (SmolLM2's 113 MB output head: 3.6 ms of memory traffic, 22 ms through torch's linear at 8
   rows). Here every weight row is read once, straight from where it lies: blocks of LIN_NW weight rows are
   dotted with LIN_NX input rows at a time, LIN_NW x LIN_NX accumulators in registers, and the block is reused
   from L1 for the next input rows (about twice torch's speed at 8 rows; 4.4 ms for that head at one row).
   Output rows are split over threads. x, w, y have contiguous rows of strides ldx, ldw, ldy (elements). */
/* 6 x 2 measured fastest here among 2x4, 2x6, 3x4, 4x3, 5x2 and 6x2 (SmolLM2's 576 x 3072 at 8 rows: 3x4 334 us,
   6x2 266-294 us) */
#define LIN_NW 6
#define LIN_NX 2

#if SIMD
static inline float hsum8(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}
#endif

/* y[0:mx, 0:nw] of one block; called with constant mx and nw so that the accumulators stay in registers */
static inline __attribute__((always_inline)) void lin_block(const float *x, int64_t ldx, int64_t mx,
                                                             const float *w, int64_t ldw, int64_t nw, int64_t k,
                                                             float *y, int64_t ldy) {
  float tail[LIN_NX][LIN_NW];
  int64_t i = 0;
#if SIMD
  __m256 acc[LIN_NX][LIN_NW];
  for (int64_t r = 0; r < mx; r++)
    for (int64_t c = 0; c < nw; c++) acc[r][c] = _mm256_setzero_ps();
  for (; i + 8 <= k; i += 8) {
    __m256 wv[LIN_NW];
    for (int64_t c = 0; c < nw; c++) wv[c] = _mm256_loadu_ps(w + c * ldw + i);
    for (int64_t r = 0; r < mx; r++) {
      const __m256 xv = _mm256_loadu_ps(x + r * ldx + i);
      for (int64_t c = 0; c < nw; c++) acc[r][c] = _mm256_fmadd_ps(xv, wv[c], acc[r][c]);
    }
  }
  for (int64_t r = 0; r < mx; r++)
    for (int64_t c = 0; c < nw; c++) tail[r][c] = hsum8(acc[r][c]);
#else
  for (int64_t r = 0; r < mx; r++)
    for (int64_t c = 0; c < nw; c++) tail[r][c] = 0.0f;
#endif
  for (; i < k; i++)
    for (int64_t r = 0; r < mx; r++)
      for (int64_t c = 0; c < nw; c++) tail[r][c] += x[r * ldx + i] * w[c * ldw + i];
  for (int64_t r = 0; r < mx; r++)
    for (int64_t c = 0; c < nw; c++) y[r * ldy + c] = tail[r][c];
}

#define LIN_CASE(MX, NW) lin_block(x + r * ldx, ldx, MX, wj, ldw, NW, k, y + r * ldy + j, ldy)

static inline void lin_rows(const float *x, int64_t ldx, int64_t m, const float *wj, int64_t ldw, int64_t nw,
                            int64_t k, float *y, int64_t ldy, int64_t j) {
  for (int64_t r = 0; r < m; r += LIN_NX) {
    const int64_t mx = m - r < LIN_NX ? m - r : LIN_NX;
    if (nw == LIN_NW) {
      if (mx == 2)
        LIN_CASE(2, LIN_NW);
      else
        LIN_CASE(1, LIN_NW);
    } else {
      for (int64_t c = 0; c < nw; c++) {
        const float *w1 = wj + c * ldw;
        float *y1 = y + r * ldy + j + c;
        for (int64_t q = 0; q < mx; q++) lin_block(x + (r + q) * ldx, ldx, 1, w1, ldw, 1, k, y1 + q * ldy, ldy);
      }
    }
  }
}

int kvsim_linear(int64_t m, int64_t n, int64_t k, const float *x, int64_t ldx, const float *w, int64_t ldw,
                 const float *bias, float *y, int64_t ldy, int64_t threads) {
  if (m < 1 || n < 1 || k < 1) return -1;
  const int64_t blocks = (n + LIN_NW - 1) / LIN_NW;
#pragma omp parallel for schedule(static) num_threads((int)threads) if (threads > 1 && n * k >= 65536)
  for (int64_t bj = 0; bj < blocks; bj++) {
    const int64_t j = bj * LIN_NW, nw = n - j < LIN_NW ? n - j : LIN_NW;
    lin_rows(x, ldx, m, w + j * ldw, ldw, nw, k, y, ldy, j);
    if (bias)
      for (int64_t r = 0; r < m; r++)
        for (int64_t c = 0; c < nw; c++) y[r * ldy + j + c] += bias[j + c];
  }
  return 0;
}

/* A MoE block's routed experts in one call: x's rows sorted by expert, rows [ends[e - 1], ends[e]) (from 0 for
   e = 0) times expert e's weight w + e * lde ([n, k] rows of stride ldw), plus bias + e * ldb where given; rows
   beyond ends[experts - 1] (another rank's experts) are left alone. Each hit expert's weight is read once, as
   kvsim_linear reads one weight; the (expert, row block) pairs are spread over threads. */
int kvsim_grouped_linear(int64_t experts, const int64_t *ends, int64_t n, int64_t k, const float *x, int64_t ldx,
                         const float *w, int64_t lde, int64_t ldw, const float *bias, int64_t ldb, float *y,
                         int64_t ldy, int64_t threads) {
  if (experts < 1 || n < 1 || k < 1) return -1;
  const int64_t blocks = (n + LIN_NW - 1) / LIN_NW;
  const int64_t rows = ends[experts - 1];
#pragma omp parallel for schedule(dynamic, 8) num_threads((int)threads) if (threads > 1 && rows * n * k >= 65536)
  for (int64_t t = 0; t < experts * blocks; t++) {
    const int64_t e = t / blocks, bj = t % blocks;
    const int64_t start = e ? ends[e - 1] : 0, m = ends[e] - start;
    if (m <= 0) continue;
    const int64_t j = bj * LIN_NW, nw = n - j < LIN_NW ? n - j : LIN_NW;
    lin_rows(x + start * ldx, ldx, m, w + e * lde + j * ldw, ldw, nw, k, y + start * ldy, ldy, j);
    if (bias)
      for (int64_t r = 0; r < m; r++)
        for (int64_t c = 0; c < nw; c++) y[(start + r) * ldy + j + c] += bias[e * ldb + j + c];
  }
  return 0;
}
