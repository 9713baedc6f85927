//! Compile the C and C++ fixtures (gcc/g++ or whatever `CC`/`CXX` name).
fn main() {
    println!("cargo:rerun-if-changed=src/fixtures.c");
    println!("cargo:rerun-if-changed=src/fixtures.cpp");
    cc::Build::new().file("src/fixtures.c").opt_level(2).flag("-fno-omit-frame-pointer").compile("dprobe_fixtures_c");
    cc::Build::new().cpp(true).file("src/fixtures.cpp").opt_level(2).compile("dprobe_fixtures_cpp");
}
