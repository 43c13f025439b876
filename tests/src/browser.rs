//! Looking at a page the way a person would: Debian's chromium, headless, takes screenshots
//! and dumps the DOM it built; [`png_stats`] says how much of a screenshot is drawn on.
//!
//! ```no_run
//! use std::path::Path;
//! use fault_tests::browser::{self, Region};
//!
//! let page = Path::new("/run/fault/demo/report.html");
//! browser::screenshot(page, Path::new("/tmp/page.png"), 1200, 1600)?;
//! let dom = browser::dump_dom(page)?;
//! assert!(dom.contains("id=\"timeline\""));
//! browser::screenshot_section(page, "timeline", Path::new("/tmp/timeline.png"), 1200, 400)?;
//! let stats = browser::png_stats(Path::new("/tmp/timeline.png"), None)?;
//! assert!(stats.colored > 0.01, "the timeline has no bars: {stats:?}");
//! # Ok::<(), anyhow::Error>(())
//! ```
//!
//! Each call starts a fresh chromium with its own profile in a temporary directory (removed
//! afterwards), kills it (its whole process group) if it runs over a minute, and never needs
//! root. The flags keep it off the network: no background requests, updates or sync.

use std::fs;
use std::io::Read as _;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context as _, Result};

/// Where Debian's package puts it (`cargo xtask setup` installs it).
pub const CHROMIUM: &str = "/usr/bin/chromium";

/// A run longer than this is killed: a page of ours loads nothing and renders in a second.
const TIMEOUT: Duration = Duration::from_secs(60);

/// A channel below this counts as ink: the page's off-white background (#f6f6f4) and the
/// charts' lightest grid lines (#eeeeee) do not, text, axes and bars do.
const INK_BELOW: u8 = 232;
/// A pixel whose channels spread more than this is coloured (a bar, a line), not grey text.
const COLOUR_SPREAD: u8 = 40;

/// Whether chromium is installed where the helpers look for it.
pub fn chromium_available() -> bool {
    Path::new(CHROMIUM).exists()
}

/// Renders `html` in a `width`×`height` window and writes what it shows (the top of the
/// page) to `png`, which then is exactly that size.
pub fn screenshot(html: &Path, png: &Path, width: u32, height: u32) -> Result<()> {
    let png = absolute(png)?;
    let _ = fs::remove_file(&png);
    run(&[
        format!("--screenshot={}", png.display()),
        format!("--window-size={width},{height}"),
        "--hide-scrollbars".into(),
        file_url(html)?,
    ])?;
    ensure!(
        png.exists(),
        "chromium exited without writing {}",
        png.display()
    );
    Ok(())
}

/// Like [`screenshot`], of section `id` of the page alone: its `<head>` (the styles) and the
/// `<section id="ID">` element, at the top of an otherwise empty page. Headless chromium
/// cannot scroll a screenshot to an anchor, so this is how a chart further down is looked at.
pub fn screenshot_section(
    html: &Path,
    id: &str,
    png: &Path,
    width: u32,
    height: u32,
) -> Result<()> {
    let page = fs::read_to_string(html).with_context(|| format!("read {}", html.display()))?;
    let head = between(&page, "<head>", "</head>").unwrap_or("");
    let section = section(&page, id)
        .with_context(|| format!("{} has no <section id=\"{id}\">", html.display()))?;
    let dir = tempfile::tempdir().context("create a directory for the section's page")?;
    let alone = dir.path().join(format!("{id}.html"));
    fs::write(
        &alone,
        format!("<!DOCTYPE html>\n<html>\n<head>{head}</head>\n<body><main>{section}</main></body>\n</html>\n"),
    )
    .with_context(|| format!("write {}", alone.display()))?;
    screenshot(&alone, png, width, height)
}

/// The DOM chromium built from `html`, serialized (`--dump-dom`): what a browser made of the
/// markup, not the markup itself.
pub fn dump_dom(html: &Path) -> Result<String> {
    let dom = run(&["--dump-dom".into(), file_url(html)?])?;
    ensure!(
        !dom.trim().is_empty(),
        "chromium dumped an empty DOM for {}",
        html.display()
    );
    Ok(dom)
}

/// The markup of `<section id="ID">` up to its `</section>` (sections do not nest in the
/// report), from a page or a dumped DOM.
pub fn section<'a>(page: &'a str, id: &str) -> Option<&'a str> {
    let attr = page.find(&format!("id=\"{id}\""))?;
    let start = page[..attr].rfind("<section")?;
    let len = page[start..].find("</section>")? + "</section>".len();
    Some(&page[start..start + len])
}

/// A rectangle of a screenshot, in pixels from its top left corner.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Region {
    pub x: u32,
    pub y: u32,
    pub width: u32,
    pub height: u32,
}

/// A screenshot's size and how much of a region of it is drawn on.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PngStats {
    pub width: u32,
    pub height: u32,
    /// The share (0 to 1) of the region's pixels that are not white or near it.
    pub inked: f64,
    /// The share of the region's pixels that are coloured (bars and lines, not grey text).
    pub colored: f64,
}

/// Reads `png` and measures `region` of it (the whole image with `None`; a region reaching
/// past the image is cut to it).
pub fn png_stats(png: &Path, region: Option<Region>) -> Result<PngStats> {
    let file = fs::File::open(png).with_context(|| format!("open {}", png.display()))?;
    let mut decoder = png::Decoder::new(file);
    decoder.set_transformations(png::Transformations::normalize_to_color8());
    let mut reader = decoder
        .read_info()
        .with_context(|| format!("decode {}", png.display()))?;
    let mut pixels = vec![0; reader.output_buffer_size()];
    let frame = reader
        .next_frame(&mut pixels)
        .with_context(|| format!("decode {}", png.display()))?;
    let channels = frame.color_type.samples();
    let (width, height) = (frame.width, frame.height);
    let r = region.unwrap_or(Region {
        x: 0,
        y: 0,
        width,
        height,
    });
    let (x1, y1) = ((r.x + r.width).min(width), (r.y + r.height).min(height));
    let (mut total, mut inked, mut colored) = (0u64, 0u64, 0u64);
    for y in r.y.min(y1)..y1 {
        for x in r.x.min(x1)..x1 {
            let at = (y as usize * width as usize + x as usize) * channels;
            // Grey and grey-alpha images have one colour channel; alpha is not looked at.
            let rgb = if channels >= 3 {
                [pixels[at], pixels[at + 1], pixels[at + 2]]
            } else {
                [pixels[at]; 3]
            };
            let (lo, hi) = (*rgb.iter().min().unwrap(), *rgb.iter().max().unwrap());
            total += 1;
            inked += u64::from(lo < INK_BELOW);
            colored += u64::from(hi - lo > COLOUR_SPREAD);
        }
    }
    let share = |n: u64| {
        if total == 0 {
            0.0
        } else {
            n as f64 / total as f64
        }
    };
    Ok(PngStats {
        width,
        height,
        inked: share(inked),
        colored: share(colored),
    })
}

/// Runs chromium headless with these arguments after the common ones, in a fresh profile;
/// returns its standard output.
fn run(args: &[String]) -> Result<String> {
    if !chromium_available() {
        bail!("{CHROMIUM} not found: `cargo xtask setup` installs chromium");
    }
    let profile = tempfile::Builder::new()
        .prefix("fault-chromium-")
        .tempdir()
        .context("create a profile directory for chromium")?;
    let stdout_path = profile.path().join("stdout");
    let stderr_path = profile.path().join("stderr");
    let stdout = fs::File::create(&stdout_path).context("create chromium's stdout file")?;
    let stderr = fs::File::create(&stderr_path).context("create chromium's stderr file")?;
    let mut cmd = Command::new(CHROMIUM);
    cmd.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-extensions",
        "--disable-default-apps",
    ])
    .arg(format!(
        "--user-data-dir={}",
        profile.path().join("profile").display()
    ))
    .args(args)
    .stdin(Stdio::null())
    .stdout(stdout)
    .stderr(stderr)
    // Its own process group: chromium forks helpers, and a timeout must kill them too.
    .process_group(0);
    let mut child = cmd.spawn().with_context(|| format!("start {CHROMIUM}"))?;
    let group = child.id() as i32;
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().context("wait for chromium")? {
            break Some(status);
        }
        if started.elapsed() > TIMEOUT {
            break None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    if status.is_none() {
        // SAFETY: kill(2) on the process group this function created, whose leader is
        // still running (not yet reaped), so the group cannot be anyone else's.
        unsafe { libc::kill(-group, libc::SIGKILL) };
        let _ = child.wait();
    }
    let mut out = String::new();
    fs::File::open(&stdout_path)
        .and_then(|mut f| f.read_to_string(&mut out))
        .context("read chromium's output")?;
    let err = fs::read_to_string(&stderr_path).unwrap_or_default();
    match status {
        None => bail!(
            "chromium ran over {TIMEOUT:?} and was killed; stderr:\n{}",
            tail(&err)
        ),
        Some(s) if !s.success() => bail!("chromium failed ({s}); stderr:\n{}", tail(&err)),
        Some(_) => Ok(out),
    }
}

/// `file:///abs/path`, with the bytes a URL path cannot hold percent-encoded.
fn file_url(path: &Path) -> Result<String> {
    let path = path
        .canonicalize()
        .with_context(|| format!("{} not found", path.display()))?;
    let mut url = String::from("file://");
    for b in path.as_os_str().as_encoded_bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'/' | b'-' | b'_' | b'.' | b'~' => {
                url.push(*b as char)
            }
            _ => url.push_str(&format!("%{b:02X}")),
        }
    }
    Ok(url)
}

fn absolute(path: &Path) -> Result<PathBuf> {
    if path.is_absolute() {
        return Ok(path.to_path_buf());
    }
    Ok(std::env::current_dir()
        .context("the current directory")?
        .join(path))
}

fn between<'a>(text: &'a str, open: &str, close: &str) -> Option<&'a str> {
    let start = text.find(open)? + open.len();
    let len = text[start..].find(close)?;
    Some(&text[start..start + len])
}

/// The last lines of chromium's stderr, which is mostly noise about D-Bus before them.
fn tail(stderr: &str) -> String {
    let lines: Vec<&str> = stderr.lines().collect();
    lines[lines.len().saturating_sub(15)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_urls_escape_what_a_path_may_hold() {
        let dir = tempfile::tempdir().unwrap();
        let page = dir.path().join("a b#c.html");
        fs::write(&page, "").unwrap();
        let url = file_url(&page).unwrap();
        assert!(url.starts_with("file:///"), "{url}");
        assert!(url.ends_with("/a%20b%23c.html"), "{url}");
    }

    #[test]
    fn finds_a_section_by_id() {
        let page = "<main><section id=\"a\"><p>1</p></section>\n<section id=\"b\">2</section>";
        assert_eq!(section(page, "b"), Some("<section id=\"b\">2</section>"));
        assert_eq!(
            section(page, "a"),
            Some("<section id=\"a\"><p>1</p></section>")
        );
        assert_eq!(section(page, "c"), None);
    }
}
