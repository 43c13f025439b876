//! The programs' rare events (fault-ebpf/src/events.rs), read from their aya-log ring and
//! shown with `fault apply -v`.

use aya::Ebpf;
use aya_log::EbpfLogger;
use tokio::io::unix::AsyncFd;

/// Prints the programs' messages when `verbose`, and drops them otherwise.
pub struct ProgramLog {
    pub verbose: bool,
}

impl log::Log for ProgramLog {
    fn enabled(&self, _: &log::Metadata) -> bool {
        self.verbose
    }

    fn log(&self, record: &log::Record) {
        if self.verbose {
            eprintln!("fault: program: {}", record.args());
        }
    }

    fn flush(&self) {}
}

/// The reader of one loaded object's log ring.
pub struct LogReader(AsyncFd<EbpfLogger<ProgramLog>>);

impl LogReader {
    /// Takes the object's log ring; `None` (with the reason) if it has none or it cannot be
    /// polled, which costs only the messages.
    pub fn start(ebpf: &mut Ebpf, verbose: bool) -> Result<Self, String> {
        let logger = EbpfLogger::init_with_logger(ebpf, ProgramLog { verbose })
            .map_err(|e| format!("the programs' log: {e}"))?;
        // SAFETY: the AsyncFd owns the logger, which owns the ring's fd, so the fd stays open
        // (and is the same file) for as long as it is registered.
        unsafe { AsyncFd::register(logger) }
            .map(LogReader)
            .map_err(|e| format!("poll the programs' log: {e}"))
    }

    /// Waits for messages and prints them (cancel-safe: nothing is read before the ring is
    /// readable, and then everything).
    pub async fn next(&mut self) {
        let Ok(mut guard) = self.0.readable_mut().await else {
            return std::future::pending().await;
        };
        guard.get_inner_mut().flush();
        guard.clear_ready();
    }
}
