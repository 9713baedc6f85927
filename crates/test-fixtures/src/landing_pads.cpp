// Exceptions caught where the landing pad is aligned, as `-falign-labels=8` lays it out: the
// padding before the pad (after a `ret` or a `jmp`) is instructions a probe can sit on, and a
// jump written over such padding covers the pad's first bytes, where the unwinder resumes the
// frame. This file is compiled twice (-O0 and -O2), each copy's names ending in FX_SUFFIX.
// Eight copies of one function, the K-th with K + 1 bytes more before its return, give the
// padding before the pad every length from 0 to 7 at -O2 (at -O0 the pad follows the try
// block's jump to the join, and its padding is the same in every copy).
#define FX_NAME2(a, b) a##b
#define FX_NAME(a, b) FX_NAME2(a, b)
#define FX_THROW_ODD FX_NAME(fxeh_throw_odd, FX_SUFFIX)

// x when x is even; throws x when it is odd.
extern "C" __attribute__((noinline)) long FX_THROW_ODD(long x) {
    if (x & 1)
        throw x;
    return x;
}

// catch_K(x) = 3x for an even x, -x for an odd one (thrown by the callee, caught here). Both
// ways join before the K + 1 bytes, so that the bytes before the pad are not those of a label
// aligned of its own.
#define FX_CATCH(K)                                                                                    \
    extern "C" __attribute__((noinline)) long FX_NAME(FX_NAME(fxeh_catch, FX_SUFFIX), _##K)(long x) { \
        long r;                                                                                        \
        try {                                                                                          \
            r = FX_THROW_ODD(x) * 3;                                                                   \
        } catch (long v) {                                                                             \
            r = -v;                                                                                    \
        }                                                                                              \
        asm volatile(".skip " #K " + 1, 0x90" : "+r"(r));                                              \
        return r;                                                                                      \
    }

FX_CATCH(0)
FX_CATCH(1)
FX_CATCH(2)
FX_CATCH(3)
FX_CATCH(4)
FX_CATCH(5)
FX_CATCH(6)
FX_CATCH(7)

typedef long (*fx_catch_fn)(long);

// The K-th copy, or null past the last.
extern "C" fx_catch_fn FX_NAME(fxeh_catch_copy, FX_SUFFIX)(int k) {
#define FX_C(K) FX_NAME(FX_NAME(fxeh_catch, FX_SUFFIX), _##K)
    static const fx_catch_fn all[] = {FX_C(0), FX_C(1), FX_C(2), FX_C(3), FX_C(4), FX_C(5), FX_C(6), FX_C(7)};
    return k >= 0 && k < 8 ? all[k] : nullptr;
}
