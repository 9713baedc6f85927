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
