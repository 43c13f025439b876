//! Compiles fault-ebpf for the BPF target (nightly, build-std) and leaves the object in
//! OUT_DIR, where `src/ebpf.rs` embeds it. `cargo xtask setup` installs what this needs.
use anyhow::Context as _;

fn main() -> anyhow::Result<()> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fault-ebpf");
    let root = root
        .canonicalize()
        .context("fault-ebpf not found next to fault-user")?;
    let root = root.to_str().context("non-UTF-8 path to fault-ebpf")?;
    println!("cargo:rerun-if-changed=../fault-common/src");
    aya_build::build_ebpf(
        [aya_build::Package {
            name: "fault-ebpf",
            root_dir: root,
            ..Default::default()
        }],
        aya_build::Toolchain::default(),
    )
}
