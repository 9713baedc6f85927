// A C++ exception thrown through a probed function.
extern "C" __attribute__((noinline)) long fxcpp_thrower(long x) {
    if (x >= 0)
        throw x;
    return x;
}

extern "C" long fxcpp_catch(long x) {
    try {
        return fxcpp_thrower(x);
    } catch (long v) {
        return -v - 1;
    }
}

// A C++ function with a mangled name, for demangled-name lookups.
namespace dprobe_fixtures {
__attribute__((noinline)) long widget_area(long w, long h) {
    return w * h;
}
}  // namespace dprobe_fixtures

extern "C" long fxcpp_area(long w, long h) {
    return dprobe_fixtures::widget_area(w, h);
}

// A C++ operator, whose name has a `+` in it (`operator+(FxMoney, FxMoney)`).
struct FxMoney {
    long cents;
};

__attribute__((noinline)) FxMoney operator+(FxMoney a, FxMoney b) {
    asm volatile("" ::: "memory");
    return FxMoney{a.cents + b.cents};
}

extern "C" long fxcpp_add_money(long a, long b) {
    return (FxMoney{a} + FxMoney{b}).cents;
}

// An exception thrown through two probed frames (fxcpp_pass, then fxcpp_thrower) into a probed
// function that catches it: fxcpp_catch_two(x) = x + 1 when nothing is thrown (x < 0), else
// -x - 1.
extern "C" __attribute__((noinline)) long fxcpp_pass(long x) {
    long r = fxcpp_thrower(x);
    asm volatile("" ::: "memory");
    return r + 1;
}

extern "C" __attribute__((noinline)) long fxcpp_catch_two(long x) {
    try {
        return fxcpp_pass(x);
    } catch (long v) {
        return -v - 1;
    }
}

// A tail call into a function that throws: fxcpp_tail_throw ends in `jmp fxcpp_thrower` (it
// has no frame of its own there); fxcpp_catch_tail(x) = x + 1 when nothing is thrown
// (x < 0), else -x - 1.
__asm__(".globl fxcpp_tail_throw\n.type fxcpp_tail_throw,@function\nfxcpp_tail_throw:\n"
        "jmp fxcpp_thrower@PLT\n.size fxcpp_tail_throw, .-fxcpp_tail_throw\n");
extern "C" long fxcpp_tail_throw(long x);

extern "C" __attribute__((noinline)) long fxcpp_catch_tail(long x) {
    try {
        return fxcpp_tail_throw(x) + 1;
    } catch (long v) {
        return -v - 1;
    }
}

// Recursion n deep whose innermost call throws n's depth back to the top: fxcpp_deep_catch(n)
// = -n - 1 when it threw (n >= 0), else n.
extern "C" long fxcpp_deep_thrower(long n, long depth);
static long (*volatile deep_thrower_ptr)(long, long) = fxcpp_deep_thrower;
extern "C" __attribute__((noinline)) long fxcpp_deep_thrower(long n, long depth) {
    if (n == 0)
        throw depth;
    if (n < 0)
        return n;
    long r = deep_thrower_ptr(n - 1, depth + 1);
    asm volatile("" ::: "memory");
    return r + 1;
}

extern "C" long fxcpp_deep_catch(long n) {
    try {
        return fxcpp_deep_thrower(n, 0);
    } catch (long depth) {
        return -depth - 1;
    }
}
