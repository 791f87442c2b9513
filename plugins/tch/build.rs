// Loading the plugin must find libtorch where it was built against: record its folder as rpath.
// A CUDA libtorch (scripts/setup-libtorch.sh --cuda): nothing here calls into libtorch_cuda.so,
// it only registers torch's CUDA hooks when loaded, so the linker's default --as-needed would drop
// it and tch would see no GPU. Linking it --no-as-needed keeps it a NEEDED library.
fn main() {
    println!("cargo:rerun-if-env-changed=LIBTORCH");
    if let Ok(libtorch) = std::env::var("LIBTORCH") {
        let lib = std::path::Path::new(&libtorch).join("lib");
        println!("cargo:rustc-link-arg=-Wl,-rpath,{}", lib.display());
        let target_os = std::env::var("CARGO_CFG_TARGET_OS").unwrap_or_default();
        if target_os == "linux" && lib.join("libtorch_cuda.so").is_file() {
            println!("cargo:rustc-link-arg=-Wl,--no-as-needed");
            println!("cargo:rustc-link-arg=-L{}", lib.display());
            println!("cargo:rustc-link-arg=-ltorch_cuda");
            println!("cargo:rustc-link-arg=-Wl,--as-needed");
        }
    }
}
