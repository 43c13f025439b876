//! The tcp and http checks themselves, and how every check's failure reads. Each takes its
//! timeout and returns the reason it failed; the caller times it with its own clock (see
//! `once.rs` for why that matters inside a group).

use std::{net::SocketAddr, time::Duration};

use super::Check;

/// What a check does, as its failures start: `connect to 10.0.0.2:5432`, `GET http://...`,
/// `` `pg_isready -h db` ``.
pub(super) fn describe(check: &Check) -> String {
    match check {
        Check::Tcp(addr) => format!("connect to {addr}"),
        Check::Http { url, .. } => format!("GET {url}"),
        Check::Exec(argv) => format!("`{}`", argv.join(" ")),
    }
}

/// `connect to 10.0.0.2:5432: timed out after 500ms`.
pub(super) fn timed_out(check: &Check, timeout: Duration) -> String {
    format!(
        "{}: timed out after {}",
        describe(check),
        humantime::format_duration(timeout)
    )
}

/// Whether fault can check `url`: plain `http://` only, since it carries no TLS stack. The
/// policy's validation asks this so an `https://` probe is refused before anything runs.
pub fn http_url_supported(url: &str) -> Result<(), String> {
    let scheme = url.split_once("://").map(|(s, _)| s.to_ascii_lowercase());
    match scheme.as_deref() {
        Some("http") => Ok(()),
        Some("https") => Err(format!(
            "expected an http:// URL, got {url}: fault checks plain HTTP only (no TLS)"
        )),
        _ => Err(format!("expected an http:// URL, got {url}")),
    }
}

/// A TCP connection to `addr` within `timeout`, on the runtime.
pub(super) async fn tcp(addr: SocketAddr, timeout: Duration) -> Result<(), String> {
    let check = Check::Tcp(addr);
    match tokio::time::timeout(timeout, tokio::net::TcpStream::connect(addr)).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(format!("{}: {e}", describe(&check))),
        Err(_) => Err(timed_out(&check, timeout)),
    }
}

/// The same, blocking: what `fault probe-once` runs inside a group.
pub(super) fn tcp_blocking(addr: SocketAddr, timeout: Duration) -> Result<(), String> {
    let check = Check::Tcp(addr);
    match std::net::TcpStream::connect_timeout(&addr, timeout) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::TimedOut => Err(timed_out(&check, timeout)),
        Err(e) => Err(format!("{}: {e}", describe(&check))),
    }
}

/// `GET url` on a connection of its own, answered with `status` within `timeout`. Blocking
/// (ureq): on the runtime it goes through `spawn_blocking`. No proxy from the environment
/// and no redirect followed, so the answer is the service's own.
pub(super) fn http_blocking(url: &str, status: u16, timeout: Duration) -> Result<(), String> {
    let check = Check::Http {
        url: url.to_string(),
        status,
    };
    http_url_supported(url).map_err(|e| format!("{}: {e}", describe(&check)))?;
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(timeout))
        .http_status_as_error(false)
        .max_redirects(0)
        .proxy(None)
        .build()
        .into();
    match agent.get(url).call() {
        Ok(reply) if reply.status().as_u16() == status => Ok(()),
        Ok(reply) => Err(format!(
            "{}: answered {}, expected {status}",
            describe(&check),
            reply.status().as_u16()
        )),
        Err(ureq::Error::Timeout(_)) => Err(timed_out(&check, timeout)),
        Err(ureq::Error::Io(e)) if e.kind() == std::io::ErrorKind::TimedOut => {
            Err(timed_out(&check, timeout))
        }
        Err(e) => Err(format!("{}: {e}", describe(&check))),
    }
}

/// [`http_blocking`] off the runtime's thread, still bounded by `timeout` (the blocking
/// thread ends by ureq's own timeout, the same one).
pub(super) async fn http(url: &str, status: u16, timeout: Duration) -> Result<(), String> {
    let owned = url.to_string();
    let call = tokio::task::spawn_blocking(move || http_blocking(&owned, status, timeout));
    let check = Check::Http {
        url: url.to_string(),
        status,
    };
    match tokio::time::timeout(timeout, call).await {
        Ok(Ok(result)) => result,
        Ok(Err(e)) => Err(format!(
            "{}: the check's thread failed: {e}",
            describe(&check)
        )),
        Err(_) => Err(timed_out(&check, timeout)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read as _, Write as _};

    /// A loopback HTTP server answering every request with `status`, on a thread.
    fn serve(status: u16) -> SocketAddr {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        std::thread::spawn(move || {
            for mut conn in listener.incoming().flatten() {
                let mut buf = [0u8; 1024];
                let _ = conn.read(&mut buf);
                let _ = write!(
                    conn,
                    "HTTP/1.1 {status} X\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"
                );
            }
        });
        addr
    }

    /// A port nothing listens on: bound, then closed.
    fn closed_port() -> SocketAddr {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    }

    const T: Duration = Duration::from_millis(500);

    #[tokio::test]
    async fn tcp_connects_or_says_why() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        assert_eq!(tcp(addr, T).await, Ok(()));
        assert_eq!(tcp_blocking(addr, T), Ok(()));
        let closed = closed_port();
        let e = tcp(closed, T).await.unwrap_err();
        assert!(e.starts_with(&format!("connect to {closed}: ")), "{e}");
        assert!(e.contains("refused"), "{e}");
        assert!(tcp_blocking(closed, T).unwrap_err().contains("refused"));
    }

    #[tokio::test]
    async fn http_compares_the_status() {
        let addr = serve(200);
        let url = format!("http://{addr}/health");
        assert_eq!(http(&url, 200, T).await, Ok(()));
        let e = http(&url, 204, T).await.unwrap_err();
        assert_eq!(e, format!("GET {url}: answered 200, expected 204"));
        let moved = format!("http://{}/", serve(301));
        assert_eq!(http(&moved, 301, T).await, Ok(()), "redirects are answers");
    }

    #[tokio::test]
    async fn http_times_out_on_a_silent_server() {
        // Accepts (the kernel does, from the backlog) and never answers.
        let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/", silent.local_addr().unwrap());
        let begun = std::time::Instant::now();
        let e = http(&url, 200, Duration::from_millis(200))
            .await
            .unwrap_err();
        let took = begun.elapsed();
        assert_eq!(e, format!("GET {url}: timed out after 200ms"));
        assert!(took < Duration::from_millis(400), "bounded: took {took:?}");
    }

    #[tokio::test]
    async fn https_and_other_schemes_are_refused() {
        let e = http("https://127.0.0.1/", 200, T).await.unwrap_err();
        assert!(e.contains("plain HTTP only"), "{e}");
        assert!(http_url_supported("ftp://x/").is_err());
        assert!(http_url_supported("HTTP://x/").is_ok());
    }
}
