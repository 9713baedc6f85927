//! C and C++ functions for dprobe's tests (see `fixtures.c`, `fixtures.cpp`).
#![allow(missing_docs)]

extern "C" {
    pub fn fxc_victim(x: i64) -> i64;
    pub fn fxc_jump_out(x: i64) -> i64;
    pub fn fxc_recurse(n: i64) -> i64;
    pub fn fxc_exit_thread(code: i64) -> i64;
    #[allow(clippy::too_many_arguments)]
    pub fn fxc_many_args(a0: i64, a1: i32, a2: i16, a3: i8, a4: u64, a5: i64, a6: i64, a7: i64, x: f64, y: f32) -> f64;
    pub fn fxc_add(a: i64, b: i64) -> i64;
    pub fn fxc_middle(a: i64) -> i64;
    pub fn fxc_outer(a: i64) -> i64;
    pub fn fxc_exit_process(code: i64) -> i64;
    pub fn fxcpp_thrower(x: i64) -> i64;
    pub fn fxcpp_catch(x: i64) -> i64;
    pub fn fxcpp_area(w: i64, h: i64) -> i64;
}

/// A fixture's address.
pub fn addr_of(f: *const ()) -> u64 {
    f as u64
}
