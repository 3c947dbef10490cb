//! For the Cortex-M builds (this image's, `../qemu`'s, `../boards/*`) only: puts `memory.x` where `cortex-m-rt`'s link
//! script finds it (the linker's search path) and relinks when it changes.

use std::path::PathBuf;

fn main() {
    println!("cargo:rerun-if-changed=memory.x");
    if std::env::var("CARGO_CFG_TARGET_ARCH").as_deref() != Ok("arm") {
        return;
    }
    let (Some(out), Ok(manifest)) = (
        std::env::var_os("OUT_DIR").map(PathBuf::from),
        std::env::var("CARGO_MANIFEST_DIR"),
    ) else {
        panic!("cargo sets OUT_DIR and CARGO_MANIFEST_DIR for build scripts");
    };
    if let Err(e) = std::fs::copy(
        PathBuf::from(manifest).join("memory.x"),
        out.join("memory.x"),
    ) {
        panic!("copying memory.x to {}: {e}", out.display());
    }
    println!("cargo:rustc-link-search={}", out.display());
}
