//! Declares the `loom` cfg so `#[cfg(loom)]` passes the compiler's check-cfg lint.
fn main() {
    println!("cargo::rustc-check-cfg=cfg(loom)");
}
