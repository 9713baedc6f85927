//! Compile the C and C++ fixtures (gcc/g++ or whatever `CC`/`CXX` name).
fn main() {
    println!("cargo:rerun-if-changed=src/fixtures.c");
    println!("cargo:rerun-if-changed=src/fixtures.cpp");
    println!("cargo:rerun-if-changed=src/landing_pads.cpp");
    cc::Build::new().file("src/fixtures.c").opt_level(2).flag("-fno-omit-frame-pointer").compile("dprobe_fixtures_c");
    cc::Build::new().cpp(true).file("src/fixtures.cpp").opt_level(2).compile("dprobe_fixtures_cpp");
    // The same exceptions unoptimized and optimized, with aligned landing pads.
    for (level, suffix) in [(0, "_o0"), (2, "_o2")] {
        cc::Build::new()
            .cpp(true)
            .file("src/landing_pads.cpp")
            .opt_level(level)
            .flag("-falign-labels=8")
            .define("FX_SUFFIX", suffix)
            .compile(&format!("dprobe_fixtures_landing_pads{suffix}"));
    }
}
