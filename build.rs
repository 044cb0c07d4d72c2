//! Link flags the daemon's memory figures depend on (BENCHMARKS.md "Cost
//! per call: what changed on 2026-12-03 (evening)").
//!
//! A position-independent executable carries a 24-byte relocation record
//! for every pointer in its data that the loader must adjust at start
//! (mostly pointers into `.rodata`: chrono-tz's table of every time zone
//! alone holds ~35 000). The loader reads them all, and their pages stay
//! resident: 1 MB here. `-z pack-relative-relocs` (DT_RELR) packs them
//! into a 19 kB bitmap. The executable stays position-independent, so
//! address randomisation is kept. GNU ld ≥ 2.38 and lld understand the
//! flag on x86_64 (GNU ld on aarch64 only from 2.43, hence the check), and
//! the binary then needs glibc ≥ 2.36 (Debian 12) to load.

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    let var = |name: &str| std::env::var(name).unwrap_or_default();
    if var("CARGO_CFG_TARGET_OS") == "linux"
        && var("CARGO_CFG_TARGET_ENV") == "gnu"
        && var("CARGO_CFG_TARGET_ARCH") == "x86_64"
    {
        println!("cargo:rustc-link-arg=-Wl,-z,pack-relative-relocs");
    }
}
