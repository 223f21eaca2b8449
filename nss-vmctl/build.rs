//! Gives the cdylib the soname glibc expects of an NSS module
//! (`libnss_<service>.so.2`), so the installed file and its DT_SONAME agree.

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    if std::env::var("CARGO_CFG_TARGET_OS").as_deref() == Ok("linux") {
        println!("cargo:rustc-cdylib-link-arg=-Wl,-soname,libnss_vmctl.so.2");
    }
}
