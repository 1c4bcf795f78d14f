/* Mandelbrot tile renderer: each chunk renders one band of rows of a grey-scale image.
 *
 * Input (48 bytes, little-endian): u32 width, u32 height, u32 max_iter, u32 reserved (0),
 * f64 x_min, f64 y_min, f64 x_max, f64 y_max. Chunk i of n renders rows
 * [i*height/n, (i+1)*height/n); its output is one byte per pixel of those rows, row by
 * row: 255 inside the set, else the escape iteration scaled to 0..254.
 */
#include "aeamc_kernel.h"

#define MAX_BAND (1 << 20) /* the protocol's largest chunk output */

static uint8_t input[48];
static uint8_t band[MAX_BAND];

uint8_t *aeamc_input(int32_t len) { return len == (int32_t)sizeof input ? input : 0; }
uint8_t *aeamc_output(void) { return band; }

int32_t aeamc_run(int32_t index, int32_t count, int32_t len) {
    uint32_t width = aeamc_u32(input), height = aeamc_u32(input + 4);
    uint32_t max_iter = aeamc_u32(input + 8);
    double x_min = aeamc_f64(input + 16), y_min = aeamc_f64(input + 24);
    double x_max = aeamc_f64(input + 32), y_max = aeamc_f64(input + 40);
    if (len != 48 || width == 0 || height == 0 || width > 65536 || height > 65536 ||
        max_iter == 0 || max_iter > 1000000 || count <= 0 || index < 0 || index >= count)
        return -1;
    uint32_t first = (uint32_t)((uint64_t)index * height / (uint32_t)count);
    uint32_t last = (uint32_t)((uint64_t)(index + 1) * height / (uint32_t)count);
    if ((uint64_t)(last - first) * width > MAX_BAND) return -2;
    double dx = (x_max - x_min) / width, dy = (y_max - y_min) / height;
    uint8_t *out = band;
    for (uint32_t row = first; row < last; row++) {
        double ci = y_min + (row + 0.5) * dy;
        for (uint32_t col = 0; col < width; col++) {
            double cr = x_min + (col + 0.5) * dx;
            double zr = 0, zi = 0, zr2 = 0, zi2 = 0;
            uint32_t it = 0;
            while (it < max_iter && zr2 + zi2 <= 4.0) {
                zi = 2 * zr * zi + ci;
                zr = zr2 - zi2 + cr;
                zr2 = zr * zr;
                zi2 = zi * zi;
                it++;
            }
            *out++ = it == max_iter ? 255 : (uint8_t)((uint64_t)it * 255 / max_iter);
        }
    }
    return (int32_t)(out - band);
}
