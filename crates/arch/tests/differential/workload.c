/* Varied C, compiled at -O0..-O3 by the differential test to harvest the instruction forms
 * that compilers emit in prologues and bodies. Never linked or run. */
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <math.h>

struct point { double x, y; int tag; char name[24]; };
static int table[64];
static volatile long counter;
extern int external_fn(int);
_Thread_local int tls_value;

int sum_ints(const int *a, size_t n) { int s = 0; for (size_t i = 0; i < n; i++) s += a[i]; return s; }
long mix(long a, long b, long c, long d, long e, long f, long g, long h) { return a * b - c / (d | 1) + (e << 3) - (f >> 2) + (g ^ h) % 7; }
double norm(const struct point *p) { return sqrt(p->x * p->x + p->y * p->y); }
float lerp(float a, float b, float t) { return a + (b - a) * t; }
void copy_point(struct point *dst, const struct point *src) { *dst = *src; }
int classify(int c) {
    switch (c) {
    case 0: return 10; case 1: return external_fn(c); case 2: return table[c];
    case 3: return -1; case 4: return table[c * 3] + 7; case 5: return c << 4;
    case 6: return (int)counter; case 7: return tls_value; default: return c;
    }
}
size_t my_strlen(const char *s) { const char *p = s; while (*p) p++; return (size_t)(p - s); }
void fill(unsigned char *p, size_t n, unsigned char v) { memset(p, v, n); }
void move(void *d, const void *s, size_t n) { memmove(d, s, n); }
int compare(const char *a, const char *b) { return strcmp(a, b); }
unsigned long long bits(unsigned long long x) { return __builtin_popcountll(x) + __builtin_ctzll(x | 1) + __builtin_clzll(x | 1); }
int atomic_inc(int *p) { return __atomic_add_fetch(p, 1, __ATOMIC_SEQ_CST); }
int atomic_cas(long *p, long old, long new_) { return __atomic_compare_exchange_n(p, &old, new_, 0, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST); }
long atomic_xchg(long *p, long v) { return __atomic_exchange_n(p, v, __ATOMIC_SEQ_CST); }
double dot(const double *a, const double *b, int n) { double s = 0; for (int i = 0; i < n; i++) s += a[i] * b[i]; return s; }
void scale(float *a, int n, float k) { for (int i = 0; i < n; i++) a[i] *= k; }
int recurse(int n) { return n <= 1 ? 1 : n * recurse(n - 1) + table[n & 63]; }
int indirect(int (*f)(int), int x) { return f(x) + f(x + 1); }
int64_t divmod(int64_t a, int64_t b, int64_t *rem) { *rem = a % b; return a / b; }
uint32_t rotate(uint32_t x, int r) { return (x << r) | (x >> (32 - r)); }
int varargs_like(int n, ...) { return n; }
unsigned char clamp(int v) { return v < 0 ? 0 : v > 255 ? 255 : (unsigned char)v; }
long double ld_ops(long double a, long double b) { return a * b + a / (b + 1.0L); }
int bool_logic(int a, int b, int c) { return (a && b) || (!c && a > b); }
void bubble(int *a, int n) { for (int i = 0; i < n; i++) for (int j = 0; j + 1 < n - i; j++) if (a[j] > a[j + 1]) { int t = a[j]; a[j] = a[j + 1]; a[j + 1] = t; } }
char *find(char *s, char c) { for (; *s; s++) if (*s == c) return s; return NULL; }
int big_frame(int x) { volatile char buf[8192]; buf[x & 8191] = (char)x; return buf[(x * 7) & 8191]; }
