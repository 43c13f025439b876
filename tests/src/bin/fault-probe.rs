//! fault-probe: traffic with a known shape, for tests run inside namespaces and cgroups.
//!
//! Each command prints one JSON object on stdout when it is done and exits 0; what happened
//! on the network (losses, send errors, timeouts) is in the JSON, not in the exit code. A
//! setup failure (bad address, bind refused) exits 1 with a message on stderr.
//!
//! UDP datagrams carry an 8-byte big-endian sequence number followed by a pattern derived from
//! it, so the receiver tells duplicates (a sequence number seen twice) from corruption (a
//! payload that does not match its sequence number, or a sequence number never sent).

use std::collections::BTreeMap;
use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::AsRawFd;
use std::process::ExitCode;

use fault_tests::monotonic_ns;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "fault-probe",
    about = "Test traffic with checked results, as JSON"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Send numbered UDP datagrams, checking every send
    UdpSend {
        #[arg(long)]
        to: SocketAddr,
        #[arg(long)]
        count: u64,
        /// Datagram size in bytes (at least 8: the sequence number)
        #[arg(long, default_value_t = 64)]
        size: usize,
        /// Pause between datagrams
        #[arg(long, default_value_t = 0)]
        interval_us: u64,
    },
    /// Receive numbered UDP datagrams and count what arrived
    UdpRecv {
        #[arg(long)]
        bind: SocketAddr,
        /// Datagrams sent (sequence numbers 0..expect)
        #[arg(long)]
        expect: u64,
        /// Stop after this long without a datagram
        #[arg(long, default_value_t = 2000)]
        timeout_ms: u64,
        /// Once all `expect` arrived, keep listening this long for duplicates
        #[arg(long, default_value_t = 0)]
        linger_ms: u64,
        /// Receive buffer (root may exceed net.core.rmem_max); large so a burst is not dropped
        /// by the socket itself
        #[arg(long, default_value_t = 8 << 20)]
        rcvbuf: usize,
    },
    /// Send N bytes over TCP, then wait for the receiver to close
    TcpSend {
        #[arg(long)]
        to: SocketAddr,
        #[arg(long)]
        bytes: u64,
        /// Bytes per write; below 64 KiB the socket sends without Nagle's delay
        #[arg(long, default_value_t = 65_536)]
        chunk: usize,
        /// Pause between writes (0: none)
        #[arg(long, default_value_t = 0)]
        interval_us: u64,
        /// Limit on connecting and on any single write or read
        #[arg(long, default_value_t = 30_000)]
        timeout_ms: u64,
    },
    /// Accept one TCP connection and read it to the end
    TcpRecv {
        #[arg(long)]
        bind: SocketAddr,
        /// Limit on waiting for the connection and on any single read
        #[arg(long, default_value_t = 30_000)]
        timeout_ms: u64,
    },
    /// Measure UDP round trips to an `echo` server
    Ping {
        #[arg(long)]
        to: SocketAddr,
        #[arg(long)]
        count: u64,
        /// Pause between a reply (or timeout) and the next request
        #[arg(long, default_value_t = 1000)]
        interval_us: u64,
        /// How long to wait for each reply
        #[arg(long, default_value_t = 1000)]
        timeout_ms: u64,
    },
    /// Send every UDP datagram back to where it came from, until killed
    Echo {
        #[arg(long)]
        bind: SocketAddr,
    },
    /// Append CLOCK_MONOTONIC nanoseconds as a line to a file every interval, until killed:
    /// a pause shows as a gap between two lines
    Ticks {
        #[arg(long)]
        out: std::path::PathBuf,
        #[arg(long, default_value_t = 10)]
        interval_ms: u64,
    },
    /// Print `<realtime ns through the vDSO> <realtime ns by the raw system call>` as a line
    /// every interval, until killed: each line carries its own clock skew
    ClockPair {
        #[arg(long, default_value_t = 20)]
        interval_ms: u64,
        /// Threads in all: the others only sleep
        #[arg(long, default_value_t = 1)]
        threads: u32,
        /// Count SIGRTMIN in a handler (SA_RESTART) and print the count as a third field
        #[arg(long)]
        count_signals: bool,
    },
    /// Once `--go` exists, read CLOCK_MONOTONIC `--reads` times, every other read by the
    /// raw system call and the rest through the vDSO, and print
    /// `<steps backwards> <reads> <largest step back in ns>`
    MonoMixed {
        #[arg(long)]
        go: std::path::PathBuf,
        #[arg(long, default_value_t = 1_000_000)]
        reads: u64,
    },
    /// Wait until "now + interval" by an absolute CLOCK_REALTIME deadline ("now" read
    /// through the vDSO), over and over, printing how long each wait took by
    /// CLOCK_MONOTONIC, until killed
    AbsWait {
        #[arg(long, default_value_t = 100)]
        interval_ms: u64,
        /// How: clock_nanosleep, a realtime futex wait, a timerfd or a POSIX timer
        #[arg(long, value_enum, default_value = "nanosleep")]
        via: fault_tests::abs_wait::Via,
    },
    /// Send numbered UDP datagrams on a fixed schedule, datagram k at start + k x interval
    /// however long each send takes, and report the start (CLOCK_MONOTONIC ns): with it a
    /// receiver's arrival times can be set against send times
    UdpPaced {
        #[arg(long)]
        to: SocketAddr,
        #[arg(long)]
        count: u64,
        /// Datagram size in bytes (at least 8: the sequence number)
        #[arg(long, default_value_t = 64)]
        size: usize,
        #[arg(long)]
        interval_us: u64,
    },
    /// Receive numbered UDP datagrams and record when each first arrived (CLOCK_MONOTONIC
    /// ns), until the last one (expect - 1) or all arrived, or nothing did for a while
    UdpArrivals {
        #[arg(long)]
        bind: SocketAddr,
        /// Datagrams sent (sequence numbers 0..expect)
        #[arg(long)]
        expect: u64,
        /// Stop after this long without a datagram
        #[arg(long, default_value_t = 3000)]
        timeout_ms: u64,
        /// Receive buffer, as for udp-recv
        #[arg(long, default_value_t = 8 << 20)]
        rcvbuf: usize,
    },
    /// Count intact numbered UDP datagrams by source address until SIGTERM (or --max-ms):
    /// who reaches this host
    UdpTally {
        #[arg(long)]
        bind: SocketAddr,
        #[arg(long, default_value_t = 60_000)]
        max_ms: u64,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Cmd::UdpSend {
            to,
            count,
            size,
            interval_us,
        } => udp_send(to, count, size, Duration::from_micros(interval_us)),
        Cmd::UdpRecv {
            bind,
            expect,
            timeout_ms,
            linger_ms,
            rcvbuf,
        } => udp_recv(
            bind,
            expect,
            Duration::from_millis(timeout_ms),
            Duration::from_millis(linger_ms),
            rcvbuf,
        ),
        Cmd::TcpSend {
            to,
            bytes,
            chunk,
            interval_us,
            timeout_ms,
        } => tcp_send(
            to,
            bytes,
            chunk,
            Duration::from_micros(interval_us),
            Duration::from_millis(timeout_ms),
        ),
        Cmd::TcpRecv { bind, timeout_ms } => tcp_recv(bind, Duration::from_millis(timeout_ms)),
        Cmd::Ping {
            to,
            count,
            interval_us,
            timeout_ms,
        } => ping(
            to,
            count,
            Duration::from_micros(interval_us),
            Duration::from_millis(timeout_ms),
        ),
        Cmd::Echo { bind } => echo(bind),
        Cmd::Ticks { out, interval_ms } => ticks(&out, Duration::from_millis(interval_ms)),
        Cmd::ClockPair {
            interval_ms,
            threads,
            count_signals,
        } => clock_pair(Duration::from_millis(interval_ms), threads, count_signals),
        Cmd::MonoMixed { go, reads } => mono_mixed(&go, reads),
        Cmd::AbsWait { interval_ms, via } => {
            fault_tests::abs_wait::run(Duration::from_millis(interval_ms), via)
        }
        Cmd::UdpPaced {
            to,
            count,
            size,
            interval_us,
        } => udp_paced(to, count, size, Duration::from_micros(interval_us)),
        Cmd::UdpArrivals {
            bind,
            expect,
            timeout_ms,
            rcvbuf,
        } => udp_arrivals(bind, expect, Duration::from_millis(timeout_ms), rcvbuf),
        Cmd::UdpTally { bind, max_ms } => udp_tally(bind, Duration::from_millis(max_ms)),
    };
    match result {
        Ok(json) => {
            println!("{json}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("fault-probe: {e}");
            ExitCode::FAILURE
        }
    }
}

// ---- payloads -------------------------------------------------------------------------------

const SEQ_LEN: usize = 8;

/// Byte `i` (past the sequence number) of datagram `seq`: every byte depends on the whole
/// sequence number, so a flipped bit anywhere shows as a mismatch.
fn pattern_byte(seq: u64, i: usize) -> u8 {
    let mixed = seq.wrapping_add(1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    (mixed >> ((i % 8) * 8)) as u8 ^ (i as u8).wrapping_mul(31)
}

fn fill_datagram(buf: &mut [u8], seq: u64) {
    buf[..SEQ_LEN].copy_from_slice(&seq.to_be_bytes());
    for (i, b) in buf.iter_mut().enumerate().skip(SEQ_LEN) {
        *b = pattern_byte(seq, i);
    }
}

/// The sequence number if the datagram is intact.
fn check_datagram(buf: &[u8]) -> Option<u64> {
    let seq = u64::from_be_bytes(buf.get(..SEQ_LEN)?.try_into().ok()?);
    let intact = buf
        .iter()
        .enumerate()
        .skip(SEQ_LEN)
        .all(|(i, b)| *b == pattern_byte(seq, i));
    intact.then_some(seq)
}

/// Byte at `offset` of a TCP stream.
fn stream_byte(offset: u64) -> u8 {
    (offset % 251) as u8
}

// ---- UDP ------------------------------------------------------------------------------------

/// An unbound-port socket of the same family as `peer`. Deliberately not connected: a connected
/// UDP socket reports ICMP errors on later sends, which would count network-side effects as
/// local send errors.
fn udp_socket_for(peer: SocketAddr) -> io::Result<UdpSocket> {
    let any: SocketAddr = match peer {
        SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        SocketAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    UdpSocket::bind(any)
}

fn udp_send(to: SocketAddr, count: u64, size: usize, interval: Duration) -> io::Result<String> {
    if size < SEQ_LEN {
        return Err(io::Error::other(format!(
            "--size {size} is below the {SEQ_LEN}-byte sequence number"
        )));
    }
    let socket = udp_socket_for(to)?;
    let mut buf = vec![0u8; size];
    let (mut sent, mut errors) = (0u64, 0u64);
    let mut first_error: Option<String> = None;
    let mut error_codes: BTreeMap<i32, u64> = BTreeMap::new();
    let start = Instant::now();
    for seq in 0..count {
        fill_datagram(&mut buf, seq);
        match socket.send_to(&buf, to) {
            Ok(n) if n == size => sent += 1,
            Ok(n) => {
                errors += 1;
                first_error.get_or_insert_with(|| format!("short send: {n} of {size} bytes"));
            }
            Err(e) => {
                errors += 1;
                *error_codes
                    .entry(e.raw_os_error().unwrap_or(-1))
                    .or_default() += 1;
                first_error.get_or_insert_with(|| e.to_string());
            }
        }
        if !interval.is_zero() {
            std::thread::sleep(interval);
        }
    }
    let codes: Vec<String> = error_codes
        .iter()
        .map(|(code, n)| format!("\"{code}\":{n}"))
        .collect();
    Ok(format!(
        "{{\"attempted\":{count},\"sent\":{sent},\"errors\":{errors},\"first_error\":{},\
         \"error_codes\":{{{}}},\"elapsed_ms\":{:.3}}}",
        json_opt_str(first_error.as_deref()),
        codes.join(","),
        ms(start.elapsed()),
    ))
}

/// Raises the receive buffer: SO_RCVBUFFORCE (root, past rmem_max), else SO_RCVBUF.
/// std has no setter for it, hence libc.
fn set_rcvbuf(socket: &UdpSocket, bytes: usize) {
    let value = libc::c_int::try_from(bytes).unwrap_or(libc::c_int::MAX);
    for option in [libc::SO_RCVBUFFORCE, libc::SO_RCVBUF] {
        // SAFETY: a valid socket fd and a pointer to a c_int of the stated size.
        let rc = unsafe {
            libc::setsockopt(
                socket.as_raw_fd(),
                libc::SOL_SOCKET,
                option,
                (&value as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if rc == 0 {
            return;
        }
    }
}

fn udp_recv(
    bind: SocketAddr,
    expect: u64,
    idle: Duration,
    linger: Duration,
    rcvbuf: usize,
) -> io::Result<String> {
    let socket = UdpSocket::bind(bind)?;
    set_rcvbuf(&socket, rcvbuf);
    socket.set_read_timeout(Some(idle))?;
    let mut seen = vec![false; usize::try_from(expect).map_err(io::Error::other)?];
    let mut buf = vec![0u8; 65536];
    let (mut received, mut unique, mut duplicates, mut corrupted, mut reordered) =
        (0u64, 0u64, 0u64, 0u64, 0u64);
    let mut highest: Option<u64> = None;
    let mut first_at: Option<Instant> = None;
    let mut last_at: Option<Instant> = None;
    let mut lingering = false;
    let mut arrivals: Vec<u64> = Vec::new();
    loop {
        let n = match socket.recv_from(&mut buf) {
            Ok((n, _)) => n,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                break;
            }
            Err(e) => return Err(e),
        };
        let now = Instant::now();
        first_at.get_or_insert(now);
        last_at = Some(now);
        received += 1;
        match check_datagram(&buf[..n]).filter(|seq| *seq < expect) {
            None => corrupted += 1,
            Some(seq) => {
                let slot = &mut seen[seq as usize];
                if *slot {
                    duplicates += 1;
                } else {
                    *slot = true;
                    unique += 1;
                }
                if highest.is_some_and(|h| seq < h) {
                    reordered += 1;
                }
                arrivals.push(seq);
                highest = highest.max(Some(seq));
            }
        }
        if unique == expect && !lingering {
            if linger.is_zero() {
                break;
            }
            lingering = true;
            socket.set_read_timeout(Some(linger))?;
        }
    }
    let span = match (first_at, last_at) {
        (Some(first), Some(last)) => ms(last - first),
        _ => 0.0,
    };
    // Maximal runs of consecutive missing sequence numbers: lost / loss_runs is the mean
    // burst length (about 1 / (1 - p) for independent loss, longer when losses cluster).
    let loss_runs = seen
        .iter()
        .zip(std::iter::once(&true).chain(seen.iter()))
        .filter(|(here, before)| !**here && **before)
        .count();
    // Packets that overtook: arrived while a lower sequence number was still to come. One
    // packet sent early counts once here, where `reordered` counts every packet it passed.
    let mut overtakers = 0u64;
    let mut lowest_after = u64::MAX;
    for &seq in arrivals.iter().rev() {
        if lowest_after < seq {
            overtakers += 1;
        }
        lowest_after = lowest_after.min(seq);
    }
    Ok(format!(
        "{{\"expected\":{expect},\"received\":{received},\"unique\":{unique},\
         \"duplicates\":{duplicates},\"corrupted\":{corrupted},\"reordered\":{reordered},\
         \"overtakers\":{overtakers},\"lost\":{},\"loss_runs\":{loss_runs},\
         \"span_ms\":{span:.3}}}",
        expect - unique
    ))
}

// ---- TCP ------------------------------------------------------------------------------------

fn tcp_send(
    to: SocketAddr,
    bytes: u64,
    chunk: usize,
    interval: Duration,
    timeout: Duration,
) -> io::Result<String> {
    let start = Instant::now();
    let mut written = 0u64;
    let result = (|| -> io::Result<()> {
        let mut stream = TcpStream::connect_timeout(&to, timeout)?;
        stream.set_write_timeout(Some(timeout))?;
        stream.set_read_timeout(Some(timeout))?;
        stream.set_nodelay(chunk < 64 * 1024)?;
        let mut chunk = vec![0u8; chunk.max(1)];
        let mut next = Instant::now();
        while written < bytes {
            if !interval.is_zero() {
                next += interval;
                if let Some(wait) = next.checked_duration_since(Instant::now()) {
                    std::thread::sleep(wait);
                }
            }
            let len = (bytes - written).min(chunk.len() as u64) as usize;
            for (i, b) in chunk[..len].iter_mut().enumerate() {
                *b = stream_byte(written + i as u64);
            }
            stream.write_all(&chunk[..len])?;
            written += len as u64;
        }
        stream.shutdown(std::net::Shutdown::Write)?;
        // The receiver closes once it has read everything: the time includes delivery.
        let mut sink = [0u8; 64];
        while stream.read(&mut sink)? > 0 {}
        Ok(())
    })();
    Ok(format!(
        "{{\"sent\":{written},\"elapsed_ms\":{:.3},\"error\":{}}}",
        ms(start.elapsed()),
        json_opt_str(result.err().map(|e| e.to_string()).as_deref()),
    ))
}

fn tcp_recv(bind: SocketAddr, timeout: Duration) -> io::Result<String> {
    let listener = TcpListener::bind(bind)?;
    // std has no accept timeout: poll a non-blocking listener.
    listener.set_nonblocking(true)?;
    let deadline = Instant::now() + timeout;
    let mut stream = loop {
        match listener.accept() {
            Ok((stream, _)) => break stream,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                if Instant::now() > deadline {
                    return Ok(format!(
                        "{{\"bytes\":0,\"mismatched\":0,\"elapsed_ms\":0,\"error\":{}}}",
                        json_str("no connection before the timeout")
                    ));
                }
                std::thread::sleep(Duration::from_millis(1));
            }
            Err(e) => return Err(e),
        }
    };
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(timeout))?;
    let start = Instant::now();
    let (mut total, mut mismatched) = (0u64, 0u64);
    let mut buf = vec![0u8; 64 * 1024];
    let error = loop {
        match stream.read(&mut buf) {
            Ok(0) => break None,
            Ok(n) => {
                mismatched += buf[..n]
                    .iter()
                    .enumerate()
                    .filter(|(i, b)| **b != stream_byte(total + *i as u64))
                    .count() as u64;
                total += n as u64;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => break Some(e.to_string()),
        }
    };
    let elapsed = start.elapsed();
    drop(stream);
    Ok(format!(
        "{{\"bytes\":{total},\"mismatched\":{mismatched},\"elapsed_ms\":{:.3},\"error\":{}}}",
        ms(elapsed),
        json_opt_str(error.as_deref()),
    ))
}

// ---- ping / echo ----------------------------------------------------------------------------

fn ping(to: SocketAddr, count: u64, interval: Duration, timeout: Duration) -> io::Result<String> {
    let socket = udp_socket_for(to)?;
    let mut rtts_us: Vec<f64> = Vec::new();
    let mut send_errors = 0u64;
    let mut buf = [0u8; 64];
    for seq in 0..count {
        let sent_at = Instant::now();
        if socket.send_to(&seq.to_be_bytes(), to).is_err() {
            send_errors += 1;
        } else {
            // Late replies to earlier requests are skipped by their sequence number.
            let deadline = sent_at + timeout;
            loop {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    break;
                }
                socket.set_read_timeout(Some(left))?;
                match socket.recv_from(&mut buf) {
                    Ok((n, _)) if n >= SEQ_LEN && buf[..SEQ_LEN] == seq.to_be_bytes() => {
                        rtts_us.push(sent_at.elapsed().as_secs_f64() * 1e6);
                        break;
                    }
                    Ok(_) => {}
                    Err(e)
                        if matches!(
                            e.kind(),
                            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                        ) =>
                    {
                        break;
                    }
                    // e.g. ECONNREFUSED from an ICMP error: this request is lost.
                    Err(_) => break,
                }
            }
        }
        if !interval.is_zero() {
            std::thread::sleep(interval);
        }
    }
    let replies = rtts_us.len();
    let stats = if rtts_us.is_empty() {
        "\"min_us\":null,\"p50_us\":null,\"p90_us\":null,\"p99_us\":null,\"max_us\":null,\
         \"mean_us\":null,\"stdev_us\":null"
            .to_string()
    } else {
        rtts_us.sort_by(f64::total_cmp);
        let mean = rtts_us.iter().sum::<f64>() / replies as f64;
        let var = rtts_us.iter().map(|r| (r - mean).powi(2)).sum::<f64>() / replies as f64;
        format!(
            "\"min_us\":{:.1},\"p50_us\":{:.1},\"p90_us\":{:.1},\"p99_us\":{:.1},\
             \"max_us\":{:.1},\"mean_us\":{mean:.1},\"stdev_us\":{:.1}",
            rtts_us[0],
            percentile(&rtts_us, 0.50),
            percentile(&rtts_us, 0.90),
            percentile(&rtts_us, 0.99),
            rtts_us[replies - 1],
            var.sqrt(),
        )
    };
    Ok(format!(
        "{{\"count\":{count},\"replies\":{replies},\"send_errors\":{send_errors},{stats}}}"
    ))
}

/// Nearest-rank percentile of sorted, non-empty data.
fn percentile(sorted: &[f64], q: f64) -> f64 {
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn echo(bind: SocketAddr) -> io::Result<String> {
    let socket = UdpSocket::bind(bind)?;
    let mut buf = vec![0u8; 65536];
    loop {
        // A failed reply is the client's loss to count, not ours to report.
        if let Ok((n, from)) = socket.recv_from(&mut buf) {
            let _ = socket.send_to(&buf[..n], from);
        }
    }
}

// ---- time -----------------------------------------------------------------------------------

/// One write per line, so what a reader finds is whole lines up to the moment it reads (or
/// the process stopped).
fn ticks(out: &std::path::Path, interval: Duration) -> io::Result<String> {
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(out)?;
    loop {
        file.write_all(format!("{}\n", monotonic_ns()).as_bytes())?;
        std::thread::sleep(interval);
    }
}

/// SIGRTMIN taken by `clock-pair --count-signals`.
static SIGNALS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

extern "C" fn count_signal(_: libc::c_int) {
    SIGNALS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
}

fn count_signals() -> io::Result<()> {
    // SAFETY: the handler only adds to an atomic; the sigaction is fully initialised.
    unsafe {
        let mut act: libc::sigaction = std::mem::zeroed();
        act.sa_sigaction = count_signal as *const () as usize;
        act.sa_flags = libc::SA_RESTART;
        libc::sigemptyset(&mut act.sa_mask);
        if libc::sigaction(libc::SIGRTMIN(), &act, std::ptr::null_mut()) != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

fn clock_pair(interval: Duration, threads: u32, counting: bool) -> io::Result<String> {
    if counting {
        count_signals()?;
    }
    for _ in 1..threads {
        std::thread::spawn(|| loop {
            std::thread::sleep(Duration::from_secs(1));
        });
    }
    let mut out = io::stdout().lock();
    loop {
        let mut raw = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: a valid timespec to write; the raw system call never goes through the vDSO.
        unsafe { libc::syscall(libc::SYS_clock_gettime, libc::CLOCK_REALTIME, &mut raw) };
        let seen = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_err(io::Error::other)?
            .as_nanos();
        let truth = raw.tv_sec as i128 * 1_000_000_000 + raw.tv_nsec as i128;
        match counting {
            true => writeln!(
                out,
                "{seen} {truth} {}",
                SIGNALS.load(std::sync::atomic::Ordering::Relaxed)
            )?,
            false => writeln!(out, "{seen} {truth}")?,
        }
        out.flush()?;
        std::thread::sleep(interval);
    }
}

fn mono_mixed(go: &std::path::Path, reads: u64) -> io::Result<String> {
    while !go.exists() {
        std::thread::sleep(Duration::from_millis(10));
    }
    let read = |raw: bool| {
        let mut t = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: a valid timespec to write, by either path.
        unsafe {
            match raw {
                true => libc::syscall(libc::SYS_clock_gettime, libc::CLOCK_MONOTONIC, &mut t),
                false => libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut t) as libc::c_long,
            }
        };
        t.tv_sec * 1_000_000_000 + t.tv_nsec
    };
    let (mut back, mut worst, mut last) = (0u64, 0i64, read(false));
    for i in 1..reads {
        let now = read(i % 2 == 1);
        if now < last {
            back += 1;
            worst = worst.max(last - now);
        }
        last = now;
    }
    Ok(format!("{back} {reads} {worst}"))
}

fn sleep_until_monotonic(ns: u64) {
    let due = libc::timespec {
        tv_sec: (ns / 1_000_000_000) as libc::time_t,
        tv_nsec: (ns % 1_000_000_000) as libc::c_long,
    };
    loop {
        // SAFETY: a valid timespec to read; no remainder is asked for with TIMER_ABSTIME.
        let rc = unsafe {
            libc::clock_nanosleep(
                libc::CLOCK_MONOTONIC,
                libc::TIMER_ABSTIME,
                &due,
                std::ptr::null_mut(),
            )
        };
        // clock_nanosleep returns the error number itself; a signal only interrupts it.
        if rc != libc::EINTR {
            return;
        }
    }
}

fn udp_paced(to: SocketAddr, count: u64, size: usize, interval: Duration) -> io::Result<String> {
    if size < SEQ_LEN {
        return Err(io::Error::other(format!(
            "--size {size} is below the {SEQ_LEN}-byte sequence number"
        )));
    }
    let step = u64::try_from(interval.as_nanos()).map_err(io::Error::other)?;
    if step == 0 {
        return Err(io::Error::other("--interval-us must be above zero"));
    }
    let socket = udp_socket_for(to)?;
    let mut buf = vec![0u8; size];
    let (mut sent, mut errors, mut late_max) = (0u64, 0u64, 0u64);
    let mut first_error: Option<String> = None;
    // The datagrams that left 1 ms or more behind their schedule, as "[seq,late_ns]": a
    // stalled sender moves them, and the receiver's judge needs their real send times.
    let mut late_ones: Vec<String> = Vec::new();
    let start = monotonic_ns();
    for seq in 0..count {
        let due = start + seq * step;
        sleep_until_monotonic(due);
        let late = monotonic_ns().saturating_sub(due);
        late_max = late_max.max(late);
        if late >= 1_000_000 && late_ones.len() < 100_000 {
            late_ones.push(format!("[{seq},{late}]"));
        }
        fill_datagram(&mut buf, seq);
        // A send the host refuses (a drop at the socket reads as congestion) is counted and
        // the schedule goes on: the receiver judges what arrived.
        match socket.send_to(&buf, to) {
            Ok(n) if n == size => sent += 1,
            Ok(n) => {
                errors += 1;
                first_error.get_or_insert_with(|| format!("short send: {n} of {size} bytes"));
            }
            Err(e) => {
                errors += 1;
                first_error.get_or_insert_with(|| e.to_string());
            }
        }
    }
    Ok(format!(
        "{{\"attempted\":{count},\"sent\":{sent},\"errors\":{errors},\"first_error\":{},\
         \"start_ns\":{start},\"interval_ns\":{step},\"late_max_us\":{:.1},\"late\":[{}]}}",
        json_opt_str(first_error.as_deref()),
        late_max as f64 / 1e3,
        late_ones.join(","),
    ))
}

fn udp_arrivals(
    bind: SocketAddr,
    expect: u64,
    idle: Duration,
    rcvbuf: usize,
) -> io::Result<String> {
    let socket = UdpSocket::bind(bind)?;
    set_rcvbuf(&socket, rcvbuf);
    socket.set_read_timeout(Some(idle))?;
    let mut seen = vec![false; usize::try_from(expect).map_err(io::Error::other)?];
    let mut buf = vec![0u8; 65536];
    // (sequence number, CLOCK_MONOTONIC ns when it was read), first copies in arrival order.
    let mut arrivals: Vec<(u64, u64)> = Vec::new();
    let (mut duplicates, mut corrupted) = (0u64, 0u64);
    loop {
        let n = match socket.recv_from(&mut buf) {
            Ok((n, _)) => n,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                break;
            }
            Err(e) => return Err(e),
        };
        let now = monotonic_ns();
        match check_datagram(&buf[..n]).filter(|seq| *seq < expect) {
            None => corrupted += 1,
            Some(seq) if seen[seq as usize] => duplicates += 1,
            Some(seq) => {
                seen[seq as usize] = true;
                arrivals.push((seq, now));
                // The last one sent ends the wait: nothing later is coming.
                if seq + 1 == expect || arrivals.len() as u64 == expect {
                    break;
                }
            }
        }
    }
    let list: Vec<String> = arrivals
        .iter()
        .map(|(seq, at)| format!("[{seq},{at}]"))
        .collect();
    Ok(format!(
        "{{\"expected\":{expect},\"unique\":{},\"duplicates\":{duplicates},\
         \"corrupted\":{corrupted},\"arrivals\":[{}]}}",
        arrivals.len(),
        list.join(",")
    ))
}

/// Set by SIGTERM: `udp-tally` reports and exits.
static TERMINATED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

extern "C" fn on_sigterm(_: libc::c_int) {
    TERMINATED.store(true, std::sync::atomic::Ordering::Relaxed);
}

fn udp_tally(bind: SocketAddr, max: Duration) -> io::Result<String> {
    // In place before the socket is bound, so a SIGTERM sent once the port shows up always
    // gets the report.
    // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
    unsafe {
        libc::signal(
            libc::SIGTERM,
            on_sigterm as extern "C" fn(libc::c_int) as libc::sighandler_t,
        )
    };
    let socket = UdpSocket::bind(bind)?;
    // The flag is looked at between reads; glibc's signal() restarts an interrupted read.
    socket.set_read_timeout(Some(Duration::from_millis(20)))?;
    let deadline = Instant::now() + max;
    let mut from: BTreeMap<std::net::IpAddr, u64> = BTreeMap::new();
    let mut corrupted = 0u64;
    let mut buf = vec![0u8; 65536];
    let mut count = |datagram: &[u8], peer: SocketAddr| match check_datagram(datagram) {
        Some(_) => *from.entry(peer.ip()).or_default() += 1,
        None => corrupted += 1,
    };
    let quiet = |e: &io::Error| {
        matches!(
            e.kind(),
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut | io::ErrorKind::Interrupted
        )
    };
    while !TERMINATED.load(std::sync::atomic::Ordering::Relaxed) && Instant::now() < deadline {
        match socket.recv_from(&mut buf) {
            Ok((n, peer)) => count(&buf[..n], peer),
            Err(e) if quiet(&e) => {}
            Err(e) => return Err(e),
        }
    }
    // Datagrams queued when the signal came still count.
    socket.set_nonblocking(true)?;
    loop {
        match socket.recv_from(&mut buf) {
            Ok((n, peer)) => count(&buf[..n], peer),
            Err(e) if quiet(&e) => break,
            Err(e) => return Err(e),
        }
    }
    let received: u64 = from.values().sum();
    let by_source: Vec<String> = from
        .iter()
        .map(|(ip, n)| format!("{}:{n}", json_str(&ip.to_string())))
        .collect();
    Ok(format!(
        "{{\"received\":{received},\"corrupted\":{corrupted},\"from\":{{{}}}}}",
        by_source.join(",")
    ))
}

// ---- output ---------------------------------------------------------------------------------

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn json_str(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn json_opt_str(s: Option<&str>) -> String {
    s.map_or_else(|| "null".to_string(), json_str)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn intact_datagrams_check_and_damaged_ones_do_not() {
        let mut buf = vec![0u8; 64];
        fill_datagram(&mut buf, 41);
        assert_eq!(check_datagram(&buf), Some(41));
        for i in 0..buf.len() {
            let mut damaged = buf.clone();
            damaged[i] ^= 0x01;
            assert_eq!(
                check_datagram(&damaged),
                None,
                "flip at byte {i} went unseen"
            );
        }
        assert_eq!(check_datagram(&buf[..7]), None);
    }

    #[test]
    fn percentiles_use_nearest_rank() {
        let data: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&data, 0.50), 50.0);
        assert_eq!(percentile(&data, 0.99), 99.0);
        assert_eq!(percentile(&[7.0], 0.5), 7.0);
    }

    #[test]
    fn json_strings_are_escaped() {
        assert_eq!(json_str("a\"b\\c\n"), r#""a\"b\\c\n""#);
        assert_eq!(json_opt_str(None), "null");
    }
}
