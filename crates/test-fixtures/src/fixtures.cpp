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
