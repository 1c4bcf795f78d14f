/* The AEAMC kernel ABI (docs/workloads.md): include this once in a kernel's C file.
 *
 * A kernel is built freestanding for wasm32 — no libc, no WASI, no imports:
 *   clang --target=wasm32 -O2 -msimd128 -nostdlib -ffreestanding -Wl,--no-entry \
 *         -Wl,--strip-all -o kernel.wasm kernel.c
 * and defines the three functions below with AEAMC_EXPORT. Each chunk runs in a fresh
 * instance: static data starts as the module declares it, every time.
 */
#ifndef AEAMC_KERNEL_H
#define AEAMC_KERNEL_H

#include <stddef.h>
#include <stdint.h>

#ifdef __wasm__
#define AEAMC_EXPORT(name) __attribute__((export_name(#name)))
#else
#define AEAMC_EXPORT(name)
#endif

/* Where the host writes `len` input bytes; 0 if the kernel has no room for them. */
AEAMC_EXPORT(aeamc_input) uint8_t *aeamc_input(int32_t len);
/* Compute chunk `index` of `count` from the `len` input bytes; return the output's
 * length, or a negative number to refuse the input (the task fails, no device is blamed). */
AEAMC_EXPORT(aeamc_run) int32_t aeamc_run(int32_t index, int32_t count, int32_t len);
/* Where the output of the last aeamc_run starts. */
AEAMC_EXPORT(aeamc_output) uint8_t *aeamc_output(void);

#ifdef __wasm__
/* The compiler may turn loops into calls to these: a freestanding module defines them. */
void *memcpy(void *restrict dst, const void *restrict src, size_t n) {
    uint8_t *d = dst;
    const uint8_t *s = src;
    while (n--) *d++ = *s++;
    return dst;
}
void *memset(void *dst, int c, size_t n) {
    uint8_t *d = dst;
    while (n--) *d++ = (uint8_t)c;
    return dst;
}
void *memmove(void *dst, const void *src, size_t n) {
    uint8_t *d = dst;
    const uint8_t *s = src;
    if (d < s) {
        while (n--) *d++ = *s++;
    } else {
        while (n--) d[n] = s[n];
    }
    return dst;
}
#endif

/* Little-endian reads of the input (wasm32 is little-endian; so is every native target
 * the benchmark runs on). */
static inline uint32_t aeamc_u32(const uint8_t *p) {
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}
static inline double aeamc_f64(const uint8_t *p) {
    double d;
    __builtin_memcpy(&d, p, sizeof d);
    return d;
}
static inline void aeamc_put_i32(uint8_t *p, int32_t v) {
    uint32_t u = (uint32_t)v;
    p[0] = (uint8_t)u; p[1] = (uint8_t)(u >> 8); p[2] = (uint8_t)(u >> 16); p[3] = (uint8_t)(u >> 24);
}

#endif
