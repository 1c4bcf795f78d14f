/* int8 matrix product: C = A x B with int32 results, one band of C's rows per chunk.
 *
 * Input (little-endian): u32 m, u32 k, u32 n, then A (m*k int8, row-major), then B
 * (k*n int8, row-major). Chunk i of c computes rows [i*m/c, (i+1)*m/c) of C; its output
 * is those rows as int32, row-major, little-endian. Integer arithmetic only: the same
 * bytes on every machine, in any order of summation.
 */
#include "aeamc_kernel.h"

#define MAX_INPUT (8 << 20)
#define MAX_BAND (1 << 20)

static uint8_t input[MAX_INPUT];
static uint8_t band[MAX_BAND];

uint8_t *aeamc_input(int32_t len) { return len <= MAX_INPUT ? input : 0; }
uint8_t *aeamc_output(void) { return band; }

int32_t aeamc_run(int32_t index, int32_t count, int32_t len) {
    if (len < 12 || count <= 0 || index < 0 || index >= count) return -1;
    uint32_t m = aeamc_u32(input), k = aeamc_u32(input + 4), n = aeamc_u32(input + 8);
    if (m == 0 || k == 0 || n == 0 || m > 65536 || k > 65536 || n > 65536) return -1;
    if (12 + (uint64_t)m * k + (uint64_t)k * n != (uint64_t)len) return -1;
    const int8_t *a = (const int8_t *)(input + 12);
    const int8_t *b = a + (uint64_t)m * k;
    uint32_t first = (uint32_t)((uint64_t)index * m / (uint32_t)count);
    uint32_t last = (uint32_t)((uint64_t)(index + 1) * m / (uint32_t)count);
    if ((uint64_t)(last - first) * n * 4 > MAX_BAND) return -2;
    static int32_t acc[65536];
    uint8_t *out = band;
    for (uint32_t i = first; i < last; i++) {
        for (uint32_t j = 0; j < n; j++) acc[j] = 0;
        for (uint32_t p = 0; p < k; p++) {
            int32_t av = a[(uint64_t)i * k + p];
            const int8_t *brow = b + (uint64_t)p * n;
            for (uint32_t j = 0; j < n; j++) acc[j] += av * brow[j];
        }
        for (uint32_t j = 0; j < n; j++, out += 4) aeamc_put_i32(out, acc[j]);
    }
    return (int32_t)(out - band);
}
