//! Servers for probes to check: a TCP listener that accepts and closes, or an HTTP server
//! that answers every request with one status. Each runs on a thread, listening in the
//! test's namespace or in a test [`Netns`], counts the connections it served, and stops on
//! drop.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use crate::Netns;

/// What a [`Server`] does with each connection.
#[derive(Debug, Clone, Copy)]
pub enum Reply {
    /// Accept and close: enough for a TCP probe.
    Close,
    /// Read the request head and answer `HTTP/1.1 <status>` with an empty body.
    Http(u16),
}

/// A listening server on a thread; dropping it stops the thread and closes the socket.
pub struct Server {
    addr: SocketAddr,
    served: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

/// Listens on `bind` (`127.0.0.1:0` picks a free port) in `netns`, or where the test runs.
pub fn serve(netns: Option<&Netns>, bind: &str, reply: Reply) -> Server {
    let listen =
        || TcpListener::bind(bind).unwrap_or_else(|e| panic!("cannot listen on {bind}: {e}"));
    // A socket stays in the namespace it was created in, whichever thread accepts on it.
    let listener = match netns {
        Some(ns) => ns.in_ns(listen),
        None => listen(),
    };
    let addr = listener.local_addr().expect("local_addr");
    listener
        .set_nonblocking(true)
        .expect("a nonblocking listener");
    let served = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let thread = {
        let (served, stop) = (served.clone(), stop.clone());
        std::thread::spawn(move || accept_until(&listener, reply, &served, &stop))
    };
    Server {
        addr,
        served,
        stop,
        thread: Some(thread),
    }
}

impl Server {
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Connections accepted so far.
    pub fn served(&self) -> u64 {
        self.served.load(Ordering::Relaxed)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            if t.join().is_err() {
                eprintln!("cleanup: the server on {} panicked", self.addr);
            }
        }
    }
}

fn accept_until(listener: &TcpListener, reply: Reply, served: &AtomicU64, stop: &AtomicBool) {
    while !stop.load(Ordering::Relaxed) {
        match listener.accept() {
            Ok((conn, _)) => {
                served.fetch_add(1, Ordering::Relaxed);
                if let Reply::Http(status) = reply {
                    answer(conn, status);
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(2));
            }
            Err(e) => eprintln!("server: accept: {e}"),
        }
    }
}

/// Reads up to the end of the request head (or 1 s, or 8 KiB), then answers and closes.
fn answer(mut conn: TcpStream, status: u16) {
    let _ = conn.set_nonblocking(false);
    let _ = conn.set_read_timeout(Some(Duration::from_secs(1)));
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 8192 {
        match conn.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
    let _ = write!(
        conn,
        "HTTP/1.1 {status} Probe\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    );
}
