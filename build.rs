//! Link-time layout of the gimlet binary on glibc Linux, for start-up and peak RSS (what a
//! ProxyCommand pays per connection; the README's "Compared with the peers" has the figures).
//!
//! - `link/hot.ld` gathers the functions the plain tunnel runs at the start of the code (made by
//!   `link/update` from a profile). The kernel maps code in 64 KiB windows around each page
//!   that runs, so scattered hot code keeps most of the binary resident; gathered, it takes a
//!   few windows. A pattern that matches nothing is no error: the layout only gets worse.
//! - `-z pack-relative-relocs` (DT_RELR) shrinks the table of relocations that a static PIE
//!   applies to itself at every start from 118 KB to 1 KB, read in fewer pages.
//!
//! Only the `gimlet` binary gets these, and only where the linker is GNU-compatible (lld, the
//! default on x86_64 Linux, or GNU ld).

fn main() {
    println!("cargo::rerun-if-changed=link/hot.ld");
    println!("cargo::rerun-if-changed=build.rs");
    let os = std::env::var("CARGO_CFG_TARGET_OS").unwrap_or_default();
    let env = std::env::var("CARGO_CFG_TARGET_ENV").unwrap_or_default();
    if os != "linux" || env != "gnu" {
        return;
    }
    let dir = std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR");
    let script = std::path::Path::new(&dir).join("link").join("hot.ld");
    if script.exists() {
        println!(
            "cargo::rustc-link-arg-bin=gimlet=-Wl,-T,{}",
            script.display()
        );
    }
    println!("cargo::rustc-link-arg-bin=gimlet=-Wl,-z,pack-relative-relocs");
}
