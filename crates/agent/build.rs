//! The agent's library calls its own memory functions, not the traced program's C library's
//! (see `src/own_memory_functions.rs`): each reference is wrapped at link time.

fn main() {
    for function in ["memcpy", "memmove", "memset", "memcmp", "bcmp"] {
        println!("cargo:rustc-cdylib-link-arg=-Wl,--wrap={function}");
    }
    println!("cargo:rerun-if-changed=build.rs");
}
