//! Where the kernel's filesystems are mounted on this host, read from /proc/self/mountinfo.
//!
//! cgroup2 sits at /sys/fs/cgroup on unified hosts and at /sys/fs/cgroup/unified on hybrid
//! ones (systemd's legacy layout); bpffs is usually at /sys/fs/bpf but need not be mounted.

use std::path::PathBuf;

/// Mount points of a given filesystem type, in mountinfo order.
pub fn mounts_of(fstype: &str) -> std::io::Result<Vec<PathBuf>> {
    let text = std::fs::read_to_string("/proc/self/mountinfo")?;
    Ok(parse_mountinfo(&text, fstype))
}

fn parse_mountinfo(text: &str, fstype: &str) -> Vec<PathBuf> {
    text.lines()
        .filter_map(|line| {
            // "id parent maj:min root mountpoint options [optional...] - fstype source opts"
            let (left, right) = line.split_once(" - ")?;
            let mount_point = left.split(' ').nth(4)?;
            (right.split(' ').next()? == fstype).then(|| PathBuf::from(unescape(mount_point)))
        })
        .collect()
}

/// mountinfo escapes space, tab, newline and backslash as \ooo octal.
fn unescape(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' && i + 3 < bytes.len() {
            let digits = std::str::from_utf8(&bytes[i + 1..i + 4]).unwrap_or("");
            if let Ok(v) = u8::from_str_radix(digits, 8) {
                out.push(v);
                i += 4;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The cgroup2 mount point.
pub fn cgroup2_mount() -> std::io::Result<PathBuf> {
    mounts_of("cgroup2")?.into_iter().next().ok_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::NotFound,
            "no cgroup2 filesystem is mounted",
        )
    })
}

/// The bpffs mount point, mounting it at /sys/fs/bpf if none is mounted (that is where every
/// BPF tool expects it, and systemd mounts it there on boot).
pub fn bpffs_mount() -> std::io::Result<PathBuf> {
    if let Some(p) = mounts_of("bpf")?.into_iter().next() {
        return Ok(p);
    }
    let target = PathBuf::from("/sys/fs/bpf");
    nix::mount::mount(
        Some("bpf"),
        &target,
        Some("bpf"),
        nix::mount::MsFlags::empty(),
        None::<&str>,
    )
    .map_err(std::io::Error::from)?;
    Ok(target)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "\
24 30 0:22 / /sys rw,nosuid - sysfs sysfs rw
35 24 0:30 / /sys/fs/cgroup ro - tmpfs tmpfs ro,mode=755
45 35 0:40 / /sys/fs/cgroup/unified rw,relatime shared:9 - cgroup2 cgroup2 rw
46 24 0:41 / /sys/fs/bpf rw - bpf bpf rw
47 24 0:42 / /mnt/with\\040space rw - cgroup2 none rw
";

    #[test]
    fn finds_cgroup2_in_hybrid_layout() {
        let found = parse_mountinfo(SAMPLE, "cgroup2");
        assert_eq!(
            found,
            vec![
                PathBuf::from("/sys/fs/cgroup/unified"),
                PathBuf::from("/mnt/with space")
            ]
        );
        assert_eq!(
            parse_mountinfo(SAMPLE, "bpf"),
            vec![PathBuf::from("/sys/fs/bpf")]
        );
    }
}
