//! Link flags the daemon's memory figures depend on (BENCHMARKS.md "Cost
//! per call").
//!
//! A position-independent executable carries one relocation record per
//! pointer in its read-only data, 24 bytes each, and the loader reads every
//! one at start: about 42 000 here, 1 MB of the process's resident pages
//! for as long as it runs. `-z pack-relative-relocs` (DT_RELR; GNU ld ≥
//! 2.38 and lld both understand it, glibc ≥ 2.36 loads it) packs them into
//! a bitmap of a few kB. The executable stays position-independent, so
//! address randomisation is kept.

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    let os = std::env::var("CARGO_CFG_TARGET_OS").unwrap_or_default();
    let env = std::env::var("CARGO_CFG_TARGET_ENV").unwrap_or_default();
    if os == "linux" && env == "gnu" {
        println!("cargo:rustc-link-arg=-Wl,-z,pack-relative-relocs");
    }
}
