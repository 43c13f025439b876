//! Clock faults on real processes: C (glibc), Python, Rust and Go programs in a target
//! cgroup print what their clock reads next to what the raw `clock_gettime` system call
//! says (never faulted), so each line carries its own skew. Each test leaves nothing behind
//! (checked at its end); run one at a time (`--test-threads=1`).

use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use fault_tests::{
    assert_no_leftovers, fault, fault_ok, podman_available, probe, probe_json, require_root,
    run_in, spawn_in, vdso_of, write_policy, Cgroup, ChildGuard, Container, FaultApply, Netns,
    IMAGE_PYTHON,
};

const SEC: i64 = 1_000_000_000;
const MS: i64 = 1_000_000;

// ---- the target programs ----------------------------------------------------------------------

/// Prints `<label> <faultable ns> <true ns>` every 20 ms: clock_gettime(CLOCK) through libc
/// (the vDSO) against the raw system call. `gtod` lines do the same for gettimeofday.
const C_READER: &str = r#"
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>
#include <sys/syscall.h>
#include <sys/time.h>
int main(int argc, char **argv) {
    int clk = argc > 1 ? atoi(argv[1]) : CLOCK_REALTIME;
    int every_ms = argc > 2 ? atoi(argv[2]) : 20;
    for (;;) {
        struct timespec t, v; struct timeval tv;
        syscall(SYS_clock_gettime, clk, &t);
        clock_gettime(clk, &v);
        printf("c %lld %lld\n", v.tv_sec * 1000000000LL + v.tv_nsec, t.tv_sec * 1000000000LL + t.tv_nsec);
        if (clk == CLOCK_REALTIME) {
            syscall(SYS_clock_gettime, CLOCK_REALTIME, &t);
            gettimeofday(&tv, 0);
            printf("gtod %lld %lld\n", tv.tv_sec * 1000000000LL + tv.tv_usec * 1000LL, t.tv_sec * 1000000000LL + t.tv_nsec);
        }
        if (clk == CLOCK_REALTIME && argc > 3) {
            syscall(SYS_clock_gettime, CLOCK_REALTIME, &t);
            long long s = time(0);
            printf("time %lld %lld\n", s * 1000000000LL, t.tv_sec * 1000000000LL + t.tv_nsec);
        }
        fflush(stdout);
        usleep(every_ms * 1000);
    }
}
"#;

const PY_READER: &str = r#"
import ctypes, time
libc = ctypes.CDLL(None)
class Timespec(ctypes.Structure):
    _fields_ = [("sec", ctypes.c_long), ("nsec", ctypes.c_long)]
ts = Timespec()
while True:
    libc.syscall(228, 0, ctypes.byref(ts))
    true = ts.sec * 10**9 + ts.nsec
    print("py", time.time_ns(), true, flush=True)
    time.sleep(0.02)
"#;

const RUST_READER: &str = r#"
use std::time::{Duration, SystemTime, UNIX_EPOCH};
#[repr(C)]
struct Timespec { sec: i64, nsec: i64 }
extern "C" { fn syscall(n: i64, ...) -> i64; }
fn main() {
    loop {
        let mut ts = Timespec { sec: 0, nsec: 0 };
        unsafe { syscall(228, 0i64, &mut ts as *mut Timespec) };
        let v = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos();
        println!("rust {v} {}", ts.sec * 1_000_000_000 + ts.nsec);
        std::thread::sleep(Duration::from_millis(20));
    }
}
"#;

const GO_READER: &str = r#"
package main

import (
	"fmt"
	"syscall"
	"time"
	"unsafe"
)

func main() {
	for {
		var ts syscall.Timespec
		syscall.RawSyscall(syscall.SYS_CLOCK_GETTIME, 0, uintptr(unsafe.Pointer(&ts)), 0)
		fmt.Printf("go %d %d\n", time.Now().UnixNano(), ts.Nano())
		time.Sleep(20 * time.Millisecond)
	}
}
"#;

/// Waits until fault has mapped its stub here, then: two threads read CLOCK_MONOTONIC
/// 500,000 times each, counting reads that went backwards; then realtime's skew range.
const C_HAMMER: &str = r#"
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <sys/syscall.h>
static long long ns(struct timespec t) { return t.tv_sec * 1000000000LL + t.tv_nsec; }
static int patched(void) {
    char line[512]; int found = 0; FILE *f = fopen("/proc/self/maps", "r");
    while (fgets(line, sizeof line, f)) if (strstr(line, "fault-clock")) found = 1;
    fclose(f); return found;
}
static void *mono(void *out) {
    long long prev = 0, back = 0; struct timespec t;
    for (int i = 0; i < 500000; i++) {
        clock_gettime(CLOCK_MONOTONIC, &t);
        if (ns(t) < prev) back++;
        prev = ns(t);
    }
    *(long long *)out = back; return 0;
}
int main(void) {
    while (!patched()) usleep(1000);
    pthread_t a, b; long long ba = 0, bb = 0;
    pthread_create(&a, 0, mono, &ba); pthread_create(&b, 0, mono, &bb);
    pthread_join(a, 0); pthread_join(b, 0);
    long long lo = 1LL << 62, hi = -(1LL << 62), mlo = 1LL << 62, mhi = -(1LL << 62);
    /* True time read before and after each faulted read: the lowest skew counts against the
       read before, the highest against the one after, so an interrupt between the two calls
       cannot pass for noise. */
    for (int i = 0; i < 20000; i++) {
        struct timespec t, v, u;
        syscall(SYS_clock_gettime, CLOCK_REALTIME, &t); clock_gettime(CLOCK_REALTIME, &v);
        syscall(SYS_clock_gettime, CLOCK_REALTIME, &u);
        if (ns(v) - ns(t) < lo) lo = ns(v) - ns(t);
        if (ns(v) - ns(u) > hi) hi = ns(v) - ns(u);
        syscall(SYS_clock_gettime, CLOCK_MONOTONIC, &t); clock_gettime(CLOCK_MONOTONIC, &v);
        syscall(SYS_clock_gettime, CLOCK_MONOTONIC, &u);
        if (ns(v) - ns(t) < mlo) mlo = ns(v) - ns(t);
        if (ns(v) - ns(u) > mhi) mhi = ns(v) - ns(u);
        usleep(50);
    }
    printf("backwards %lld reads 1000000 rt_min %lld rt_max %lld mono_min %lld mono_max %lld\n",
           ba + bb, lo, hi, mlo, mhi);
    return 0;
}
"#;

/// Four threads read CLOCK_REALTIME through the vDSO between two raw system calls, and a
/// 1 kHz SIGALRM handler does the same: every value must lie within [t1, t2] (unfaulted) or
/// [t1 - 2 s, t2 - 2 s] (faulted). SIGUSR1 prints the counts and ends it.
const C_STRESS: &str = r#"
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <sys/syscall.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>
static atomic_long checks, bad, faulted, alarms; static volatile sig_atomic_t done;
static long long ns(struct timespec t) { return t.tv_sec * 1000000000LL + t.tv_nsec; }
static void check(void) {
    struct timespec a, v, b;
    syscall(SYS_clock_gettime, CLOCK_REALTIME, &a);
    clock_gettime(CLOCK_REALTIME, &v);
    syscall(SYS_clock_gettime, CLOCK_REALTIME, &b);
    long long x = ns(v), lo = ns(a), hi = ns(b), off = 2000000000LL;
    atomic_fetch_add(&checks, 1);
    if (x >= lo - off && x <= hi - off) atomic_fetch_add(&faulted, 1);
    else if (x < lo || x > hi) atomic_fetch_add(&bad, 1);
}
static void on_alarm(int s) { (void)s; check(); atomic_fetch_add(&alarms, 1); }
static void on_usr1(int s) { (void)s; done = 1; }
static void *hammer(void *p) { (void)p; while (!done) check(); return 0; }
int main(void) {
    signal(SIGUSR1, on_usr1);
    struct sigaction sa = { .sa_handler = on_alarm, .sa_flags = SA_RESTART };
    sigaction(SIGALRM, &sa, 0);
    struct itimerval it = { { 0, 1000 }, { 0, 1000 } };
    setitimer(ITIMER_REAL, &it, 0);
    pthread_t t[4];
    for (int i = 0; i < 4; i++) pthread_create(&t[i], 0, hammer, 0);
    printf("started\n"); fflush(stdout);
    for (int i = 0; i < 4; i++) pthread_join(t[i], 0);
    printf("checks %ld bad %ld faulted %ld alarms %ld\n", (long)checks, (long)bad, (long)faulted, (long)alarms);
    return 0;
}
"#;

/// Holds PID under ptrace (seized, not stopped), as a debugger would.
const C_TRACER: &str = r#"
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>
#include <sys/ptrace.h>
int main(int argc, char **argv) {
    if (ptrace(PTRACE_SEIZE, atoi(argv[1]), 0, 0) != 0) { perror("PTRACE_SEIZE"); return 1; }
    printf("tracing\n"); fflush(stdout);
    for (;;) pause();
}
"#;

/// Runs a program under a seccomp filter that refuses memfd_create with EPERM.
const C_SECCOMP: &str = r#"
#include <stddef.h>
#include <stdio.h>
#include <unistd.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
int main(int argc, char **argv) {
    struct sock_filter f[] = {
        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, SYS_memfd_create, 0, 1),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | 1),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
    };
    struct sock_fprog prog = { sizeof f / sizeof f[0], f };
    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) || prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &prog)) {
        perror("seccomp"); return 1;
    }
    execv(argv[1], argv + 1);
    perror("execv"); return 1;
}
"#;

/// Reads CLOCK_REALTIME once through libc (the vDSO) as its very first act, then by the raw
/// system call, and prints both: `first <faultable ns> <true ns>`.
const C_FIRST_READ: &str = r#"
#include <stdio.h>
#include <time.h>
#include <unistd.h>
#include <sys/syscall.h>
int main(void) {
    struct timespec v, t;
    clock_gettime(CLOCK_REALTIME, &v);
    syscall(SYS_clock_gettime, CLOCK_REALTIME, &t);
    printf("first %lld %lld\n", v.tv_sec * 1000000000LL + v.tv_nsec, t.tv_sec * 1000000000LL + t.tv_nsec);
    return 0;
}
"#;

/// The first read of a Go program, through the vDSO as Go's runtime makes it.
const GO_FIRST_READ: &str = r#"
package main

import (
	"fmt"
	"time"
)

func main() {
	fmt.Println(time.Now().UnixNano())
}
"#;

/// The first read of a Java program's main (the JVM has read clocks before it); with an
/// argument, a read every 50 ms.
const JAVA_FIRST_READ: &str = r#"
public class First {
    public static void main(String[] args) throws Exception {
        do {
            java.time.Instant t = java.time.Instant.now();
            System.out.println(t.getEpochSecond() * 1000000000L + t.getNano());
            if (args.length > 0) Thread.sleep(50);
        } while (args.length > 0);
    }
}
"#;

/// The built programs, once per test binary.
struct Programs {
    dir: PathBuf,
}

fn programs() -> &'static Programs {
    static BUILT: OnceLock<Programs> = OnceLock::new();
    BUILT.get_or_init(|| {
        // Under target/, where builds belong: kept between runs (Go's cache makes the
        // second build fast) and left out of the host's state.
        let dir = fault_tests::workspace_root().join("target/clock-test-programs");
        std::fs::create_dir_all(&dir).expect("temp dir");
        let write = |name: &str, text: &str| {
            let p = dir.join(name);
            std::fs::write(&p, text).expect("write source");
            p
        };
        for (name, src, extra) in [
            ("clockread", C_READER, &[][..]),
            ("hammer", C_HAMMER, &["-pthread"][..]),
            ("tracer", C_TRACER, &[][..]),
            ("seccomp-wrap", C_SECCOMP, &[][..]),
            ("stress", C_STRESS, &["-pthread"][..]),
            ("firstread", C_FIRST_READ, &[][..]),
        ] {
            let c = write(&format!("{name}.c"), src);
            run_ok(
                Command::new("gcc")
                    .args(["-O2", "-o"])
                    .arg(dir.join(name))
                    .arg(&c)
                    .args(extra),
            );
        }
        let first = dir.join("firstread.c");
        run_ok(
            Command::new("gcc")
                .args(["-O2", "-static", "-o"])
                .arg(dir.join("firstread-static"))
                .arg(&first),
        );
        run_ok(
            Command::new("gcc")
                .args(["-O2", "-static", "-o"])
                .arg(dir.join("clockread-static"))
                .arg(dir.join("clockread.c")),
        );
        let musl = which("musl-gcc").unwrap_or_else(|| {
            panic!("musl-gcc not found: `cargo xtask setup` installs musl-tools for this test")
        });
        run_ok(
            Command::new(&musl)
                .args(["-O2", "-static", "-o"])
                .arg(dir.join("firstread-musl"))
                .arg(&first),
        );
        run_ok(
            Command::new(&musl)
                .args(["-O2", "-static", "-o"])
                .arg(dir.join("clockread-musl"))
                .arg(dir.join("clockread.c")),
        );
        let java = write("First.java", JAVA_FIRST_READ);
        run_ok(Command::new("javac").arg("-d").arg(&dir).arg(java));
        write("reader.py", PY_READER);
        let rs = write("reader.rs", RUST_READER);
        run_ok(
            Command::new("rustc")
                .args(["-O", "--edition", "2021", "-o"])
                .arg(dir.join("rustread"))
                .arg(rs),
        );
        let go = write("reader.go", GO_READER);
        let go_bin = which("go").unwrap_or_else(|| {
            panic!("go not found: `cargo xtask setup` installs golang-go for this test")
        });
        run_ok(
            Command::new(go_bin)
                .args(["build", "-o"])
                .arg(dir.join("goread"))
                .arg(go)
                .env("GOCACHE", dir.join("gocache"))
                .env("GOPATH", dir.join("gopath"))
                .env("GO111MODULE", "off"),
        );
        let go_first = write("first.go", GO_FIRST_READ);
        run_ok(
            Command::new(which("go").expect("go, as above"))
                .args(["build", "-o"])
                .arg(dir.join("firstread-go"))
                .arg(go_first)
                .env("GOCACHE", dir.join("gocache"))
                .env("GOPATH", dir.join("gopath"))
                .env("GO111MODULE", "off"),
        );
        Programs { dir }
    })
}

impl Programs {
    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }
}

fn which(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|d| Path::new(d).join(name))
        .find(|p| p.is_file())
}

fn run_ok(cmd: &mut Command) {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

// ---- readers ----------------------------------------------------------------------------------

/// One printed reading: when it arrived, its label, the faultable and the true ns.
#[derive(Debug, Clone)]
struct Reading {
    at: Instant,
    label: String,
    seen: i64,
    truth: i64,
}

impl Reading {
    fn skew(&self) -> i64 {
        self.seen - self.truth
    }
}

/// A running reader and everything it printed so far.
struct Reader {
    child: ChildGuard,
    lines: Arc<Mutex<Vec<Reading>>>,
    name: String,
}

impl Reader {
    fn start(cgroup: Option<&Cgroup>, name: &str, cmd: Command) -> Self {
        Self::start_in(cgroup, None, name, cmd)
    }

    fn start_in(cgroup: Option<&Cgroup>, ns: Option<&Netns>, name: &str, mut cmd: Command) -> Self {
        cmd.stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .stdin(Stdio::null());
        let mut child = spawn_in(cgroup, ns, cmd);
        let out = child.child_mut().stdout.take().expect("piped stdout");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink = lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                let f: Vec<&str> = line.split_whitespace().collect();
                if let [label, seen, truth] = f[..] {
                    if let (Ok(seen), Ok(truth)) = (seen.parse(), truth.parse()) {
                        sink.lock().unwrap().push(Reading {
                            at: Instant::now(),
                            label: label.to_owned(),
                            seen,
                            truth,
                        });
                    }
                }
            }
        });
        Reader {
            child,
            lines,
            name: name.to_owned(),
        }
    }

    fn c(cgroup: Option<&Cgroup>, clock: i32) -> Self {
        let mut cmd = Command::new(programs().path("clockread"));
        cmd.args([clock.to_string(), "20".to_string()]);
        Self::start(cgroup, "C", cmd)
    }

    fn all_runtimes(cgroup: &Cgroup) -> Vec<Reader> {
        let p = programs();
        let mut py = Command::new("python3");
        py.arg("-u").arg(p.path("reader.py"));
        vec![
            Self::c(Some(cgroup), 0),
            Self::start(Some(cgroup), "Python", py),
            Self::start(Some(cgroup), "Rust", Command::new(p.path("rustread"))),
            Self::start(Some(cgroup), "Go", Command::new(p.path("goread"))),
        ]
    }

    fn pid(&self) -> u32 {
        self.child.pid()
    }

    fn readings(&self) -> Vec<Reading> {
        self.lines.lock().unwrap().clone()
    }

    /// Readings that arrived after `since`, waiting until there are at least `n`.
    fn after(&self, since: Instant, n: usize) -> Vec<Reading> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let got: Vec<Reading> = self
                .readings()
                .into_iter()
                .filter(|r| r.at > since)
                .collect();
            if got.len() >= n {
                return got;
            }
            assert!(
                Instant::now() < deadline,
                "{} reader (pid {}) printed {} readings after the mark, expected {n}",
                self.name,
                self.pid(),
                got.len()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn running(&mut self) -> bool {
        self.child.try_wait().is_none()
    }
}

#[track_caller]
fn assert_skews(reader: &Reader, readings: &[Reading], want: i64, tolerance: i64, what: &str) {
    for r in readings {
        assert!(
            (r.skew() - want).abs() <= tolerance,
            "{what}: {} reader (pid {}) {} read {:+.6} s off true time, expected {:+.3} s ± {} ms: {r:?}",
            reader.name,
            reader.pid(),
            r.label,
            r.skew() as f64 / 1e9,
            want as f64 / 1e9,
            tolerance / MS
        );
    }
}

fn policy(name: &str, cgroup: &Cgroup, duration: &str, rules: &str) -> String {
    format!(
        "apiVersion: fault/v1\nkind: FaultPolicy\nmetadata:\n  name: {name}\nspec:\n  \
         duration: {duration}\n  targets:\n    - cgroup: {}\n  clock:\n{rules}",
        cgroup.path().display()
    )
}

fn has_stub(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/maps")).is_ok_and(|m| m.contains("fault-clock"))
}

/// Every reader's vDSO is the pristine one again (this test process's is never patched).
#[track_caller]
fn assert_vdso_restored(readers: &[&Reader]) {
    let pristine = vdso_of(std::process::id());
    for r in readers {
        assert!(
            vdso_of(r.pid()) == pristine,
            "{} reader (pid {}): its vDSO differs from the pristine one after revert",
            r.name,
            r.pid()
        );
    }
}

fn wait(d: Duration) {
    std::thread::sleep(d);
}

// ---- the tests --------------------------------------------------------------------------------

#[test]
fn offset_reaches_every_runtime_before_and_after_apply_and_reverts() {
    require_root();
    programs();
    {
        let cgroup = Cgroup::new("clock-offset");
        let mut early = Reader::all_runtimes(&cgroup);
        let bystander = Reader::c(None, 0);
        wait(Duration::from_millis(300));

        let file = write_policy(&policy(
            "clock-offset",
            &cgroup,
            "60s",
            "    - name: behind\n      offset: -2s\n",
        ));
        let started = Instant::now();
        let mut apply = FaultApply::start(file.path(), "clock-offset");
        apply.wait_ready();
        let ready = Instant::now();
        let late = Reader::all_runtimes(&cgroup);
        let late_started = Instant::now();
        wait(Duration::from_millis(1200));

        let mark = Instant::now();
        for r in &early {
            let got = r.after(mark, 5);
            assert_skews(r, &got, -2 * SEC, 5 * MS, "started before apply");
            // The first faulted reading came soon after apply.
            let first = r
                .readings()
                .into_iter()
                .find(|x| (x.skew() + 2 * SEC).abs() < 5 * MS)
                .expect("a faulted reading");
            println!(
                "{} (before apply): first faulted reading {:?} after `fault apply` started, {:?} after ready",
                r.name,
                first.at - started,
                first.at.saturating_duration_since(ready)
            );
        }
        for r in &late {
            let got = r.after(mark, 5);
            assert_skews(r, &got, -2 * SEC, 5 * MS, "started after apply");
            let first = r
                .readings()
                .into_iter()
                .find(|x| (x.skew() + 2 * SEC).abs() < 5 * MS)
                .expect("a faulted reading");
            println!(
                "{} (after apply): first faulted reading {:?} after it started",
                r.name,
                first.at - late_started
            );
        }
        assert_skews(
            &bystander,
            &bystander.after(mark, 5),
            0,
            5 * MS,
            "untargeted",
        );

        let status = fault_ok(["status"]);
        assert!(
            status.contains("behind")
                && status.contains("offset -2s")
                && status.contains("in 8 process(es)"),
            "fault status shows the clock rule and its 8 processes:\n{status}"
        );

        let (exit, log) = apply.stop();
        assert!(exit.success(), "fault apply exits 0 after SIGTERM:\n{log}");
        let reverted = Instant::now();
        wait(Duration::from_millis(200));
        for r in early.iter().chain(&late) {
            assert_skews(r, &r.after(reverted, 3), 0, 5 * MS, "after revert");
        }
        for r in early.iter_mut() {
            assert!(r.running(), "{} reader keeps running after revert", r.name);
        }
        let all: Vec<&Reader> = early.iter().chain(&late).collect();
        assert_vdso_restored(&all);
        assert!(
            all.iter().all(|r| has_stub(r.pid())),
            "the inert stub mapping stays, as documented"
        );
    }
    assert_no_leftovers();
}

#[test]
fn drift_of_500ppm_shows_over_three_seconds() {
    require_root();
    programs();
    {
        let cgroup = Cgroup::new("clock-drift");
        let reader = Reader::c(Some(&cgroup), 0);
        let file = write_policy(&policy(
            "clock-drift",
            &cgroup,
            "60s",
            "    - name: fast\n      drift: 500ppm\n",
        ));
        let mut apply = FaultApply::start(file.path(), "clock-drift");
        apply.wait_ready();
        let mark = Instant::now();
        wait(Duration::from_millis(3200));
        let got: Vec<Reading> = reader
            .after(mark, 100)
            .into_iter()
            .filter(|r| r.label == "c")
            .collect();
        let (a, b) = (&got[0], got.last().unwrap());
        let elapsed = (b.truth - a.truth) as f64;
        let rate = (b.skew() - a.skew()) as f64 / elapsed * 1e6;
        println!(
            "drift: {:+.3} ms over {:.3} s = {rate:.1} ppm",
            (b.skew() - a.skew()) as f64 / 1e6,
            elapsed / 1e9
        );
        assert!(elapsed > 2.5e9, "readings span {:.2} s", elapsed / 1e9);
        assert!(
            (rate - 500.0).abs() < 25.0,
            "measured {rate:.1} ppm, expected 500 ± 25 ppm"
        );
        drop(apply);
    }
    assert_no_leftovers();
}

#[test]
fn jumps_happen_at_their_interval() {
    require_root();
    programs();
    {
        let cgroup = Cgroup::new("clock-jumps");
        let reader = Reader::c(Some(&cgroup), 0);
        let file = write_policy(&policy(
            "clock-jumps",
            &cgroup,
            "60s",
            "    - name: steps\n      jumps: {every: 1s, by: -100ms}\n",
        ));
        let mut apply = FaultApply::start(file.path(), "clock-jumps");
        apply.wait_ready();
        let mark = Instant::now();
        wait(Duration::from_millis(3600));
        let got: Vec<Reading> = reader
            .after(mark, 100)
            .into_iter()
            .filter(|r| r.label == "c")
            .collect();
        // Every reading sits on a step of -100 ms, and the steps come a second apart.
        let mut steps: Vec<(i64, i64)> = Vec::new(); // (step, true time it was first seen)
        for r in &got {
            let step = (-r.skew() + 50 * MS) / (100 * MS);
            assert!(
                (r.skew() + step * 100 * MS).abs() < MS,
                "skew {:+.6} s is not a multiple of -100 ms",
                r.skew() as f64 / 1e9
            );
            if steps.last().is_none_or(|&(s, _)| s != step) {
                steps.push((step, r.truth));
            }
        }
        println!("jumps: {steps:?}");
        assert!(steps.len() >= 3, "at least 3 steps in 3.6 s: {steps:?}");
        for w in steps.windows(2).skip(1) {
            let (s0, t0) = w[0];
            let (s1, t1) = w[1];
            assert_eq!(s1, s0 + 1, "one step at a time: {steps:?}");
            let gap = t1 - t0;
            assert!(
                (gap - SEC).abs() < 60 * MS,
                "steps {:.3} s apart, expected 1 s ± 60 ms: {steps:?}",
                gap as f64 / 1e9
            );
        }
        drop(apply);
    }
    assert_no_leftovers();
}

#[test]
fn jitter_spreads_and_monotonic_never_goes_back() {
    require_root();
    programs();
    {
        let cgroup = Cgroup::new("clock-jitter");
        let file = write_policy(&policy(
            "clock-jitter",
            &cgroup,
            "60s",
            "    - name: noisy\n      clocks: [realtime, monotonic]\n      jitter: 2ms\n",
        ));
        let mut apply = FaultApply::start(file.path(), "clock-jitter");
        apply.wait_ready();
        // Started after apply: it waits until fault has patched it, then hammers.
        let mut cmd = Command::new(programs().path("hammer"));
        cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
        let out = spawn_in(Some(&cgroup), None, cmd).wait_output(Duration::from_secs(60));
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "hammer: {text} {}",
            String::from_utf8_lossy(&out.stderr)
        );
        println!("jitter: {text}");
        let f: Vec<i64> = text
            .split_whitespace()
            .filter_map(|w| w.parse().ok())
            .collect();
        let [back, reads, rt_min, rt_max, mono_min, mono_max] = f[..] else {
            panic!("unexpected hammer output: {text}");
        };
        assert_eq!(reads, 1_000_000);
        assert_eq!(
            back, 0,
            "monotonic went backwards {back} times in a million reads"
        );
        assert!(
            rt_min >= -2 * MS - 100_000 && rt_max <= 2 * MS + 100_000,
            "realtime noise within ±2 ms: {rt_min}..{rt_max}"
        );
        assert!(
            rt_min < -MS && rt_max > MS,
            "realtime noise spreads over the range: {rt_min}..{rt_max}"
        );
        assert!(
            mono_max <= 100_000 && mono_min >= -2 * MS - 100_000,
            "monotonic only lags, by up to 2 ms: {mono_min}..{mono_max}"
        );
        drop(apply);
    }
    assert_no_leftovers();
}

#[test]
fn after_sigkill_the_skew_ends_within_a_second_and_stop_restores_the_bytes() {
    require_root();
    programs();
    {
        let cgroup = Cgroup::new("clock-kill");
        // With time() too, which a whole-second offset takes on the stub's fast path.
        let mut cmd = Command::new(programs().path("clockread"));
        cmd.args(["0", "20", "time"]);
        let reader = Reader::start(Some(&cgroup), "C", cmd);
        let file = write_policy(&policy(
            "clock-kill",
            &cgroup,
            "60s",
            "    - name: behind\n      offset: -2s\n",
        ));
        let mut apply = FaultApply::start(file.path(), "clock-kill");
        apply.wait_ready();
        wait(Duration::from_millis(300));
        let killed = wall_ns();
        // SAFETY: kill has no memory-safety preconditions; the pid is our child.
        unsafe { libc::kill(apply.pid() as i32, libc::SIGKILL) };
        apply.wait_exit(Duration::from_secs(5));
        wait(Duration::from_millis(2000));

        let got: Vec<Reading> = reader
            .readings()
            .into_iter()
            .filter(|r| r.label == "c" && r.truth > killed - 200 * MS)
            .collect();
        let last_skewed = got
            .iter()
            .rfind(|r| (r.skew() + 2 * SEC).abs() < 5 * MS)
            .expect("skewed readings up to the SIGKILL");
        let first_true = got
            .iter()
            .find(|r| r.skew().abs() < 5 * MS)
            .expect("true readings after the loader died");
        println!(
            "heartbeat: last skewed reading {:.3} s and first true one {:.3} s after SIGKILL (policy 60 s)",
            (last_skewed.truth - killed) as f64 / 1e9,
            (first_true.truth - killed) as f64 / 1e9
        );
        assert!(
            first_true.truth <= killed + SEC + 50 * MS,
            "true time within a second of the loader's death (and a 20 ms reading interval)"
        );
        assert!(
            got.iter()
                .filter(|r| r.truth > first_true.truth)
                .all(|r| r.skew().abs() < 5 * MS),
            "and true time from then on"
        );
        // time() reads whole seconds: 2 s behind is a skew in (-3 s, -2 s], true time one
        // in (-1 s, 0].
        let times: Vec<Reading> = reader
            .readings()
            .into_iter()
            .filter(|r| r.label == "time" && r.truth > killed - 200 * MS)
            .collect();
        let behind = |r: &Reading| (-3 * SEC - 5 * MS..=-2 * SEC + 5 * MS).contains(&r.skew());
        let truth = |r: &Reading| (-SEC - 5 * MS..=5 * MS).contains(&r.skew());
        assert!(
            times.iter().any(|r| r.truth < killed && behind(r)),
            "time() read the skew before the SIGKILL: {times:?}"
        );
        let late: Vec<&Reading> = times
            .iter()
            .filter(|r| r.truth > killed + SEC + 50 * MS)
            .collect();
        assert!(
            !late.is_empty() && late.iter().all(|r| truth(r)),
            "time() reads true time within a second of the loader's death: {late:?}"
        );

        assert!(
            vdso_of(reader.pid()) != vdso_of(std::process::id()),
            "still patched"
        );
        let out = fault(["status"]);
        let status = String::from_utf8_lossy(&out.stdout);
        assert!(
            status.contains("is gone"),
            "status tells the loader died:\n{status}"
        );
        fault_ok(["stop", "--all"]);
        assert_vdso_restored(&[&reader]);
        let after: Vec<Reading> = (reader.after(Instant::now(), 4).into_iter())
            .filter(|r| r.label != "time")
            .collect();
        assert_skews(&reader, &after, 0, 5 * MS, "after stop");
        drop(apply);
    }
    assert_no_leftovers();
}

#[test]
fn traced_and_seccomp_confined_targets_are_reported_and_left_alone() {
    require_root();
    programs();
    {
        let cgroup = Cgroup::new("clock-blocked");
        let traced = Reader::c(Some(&cgroup), 0);
        let mut tracer_cmd = Command::new(programs().path("tracer"));
        tracer_cmd
            .arg(traced.pid().to_string())
            .stdout(Stdio::null());
        let _tracer = spawn_in(None, None, tracer_cmd);
        let mut confined_cmd = Command::new(programs().path("seccomp-wrap"));
        confined_cmd.args([programs().path("clockread").to_str().unwrap(), "0", "20"]);
        let confined = Reader::start(Some(&cgroup), "seccomp-confined C", confined_cmd);
        let healthy = Reader::c(Some(&cgroup), 0);
        wait(Duration::from_millis(300));

        let file = write_policy(&policy(
            "clock-blocked",
            &cgroup,
            "60s",
            "    - name: behind\n      offset: -2s\n",
        ));
        let mut apply = FaultApply::start(file.path(), "clock-blocked");
        apply.wait_ready();
        wait(Duration::from_millis(400));
        let mark = Instant::now();
        assert_skews(
            &healthy,
            &healthy.after(mark, 3),
            -2 * SEC,
            5 * MS,
            "the healthy one",
        );
        assert_skews(&traced, &traced.after(mark, 3), 0, 5 * MS, "the traced one");
        assert_skews(
            &confined,
            &confined.after(mark, 3),
            0,
            5 * MS,
            "the confined one",
        );
        let log = apply.log();
        assert!(
            log.contains(&format!("process {} (clockread)", traced.pid()))
                && log.contains("already traced by pid"),
            "the log names the traced process and its tracer:\n{log}"
        );
        assert!(
            log.contains(&format!("process {} (clockread)", confined.pid()))
                && log.contains("seccomp filter answers errno 1 to memfd_create"),
            "the log names the confined process and what its filter refused:\n{log}"
        );
        assert!(
            !has_stub(traced.pid()) && !has_stub(confined.pid()),
            "nothing was mapped into the refused processes"
        );
        let (exit, log) = apply.stop();
        assert!(exit.success(), "{log}");
    }
    assert_no_leftovers();
}

/// Sends 200 datagrams from the target to a receiver beside it on the namespace's loopback;
/// returns how many arrived.
fn udp_delivered(cgroup: &Cgroup, ns: &Netns, port: u16) -> u64 {
    let bind = format!("127.0.0.1:{port}");
    let mut receiver = spawn_in(
        None,
        Some(ns),
        probe(&[
            "udp-recv",
            "--bind",
            &bind,
            "--expect",
            "200",
            "--timeout-ms",
            "800",
        ]),
    );
    receiver.wait_listening(port);
    let sent = probe_json(&run_in(
        Some(cgroup),
        Some(ns),
        probe(&["udp-send", "--to", &bind, "--count", "200", "--size", "64"]),
        Duration::from_secs(20),
    ));
    assert_eq!(sent["sent"], 200, "{sent}");
    let got = probe_json(&receiver.wait_output(Duration::from_secs(20)));
    got["unique"].as_u64().unwrap_or_else(|| panic!("{got}"))
}

#[test]
fn network_and_clock_rules_apply_and_revert_together() {
    require_root();
    programs();
    {
        let ns = Netns::new("clock-net");
        let cgroup = Cgroup::new("clock-net");
        let mut cmd = Command::new(programs().path("clockread"));
        cmd.args(["0", "20"]);
        let reader = Reader::start_in(Some(&cgroup), Some(&ns), "C", cmd);
        wait(Duration::from_millis(200));
        let text = policy(
            "clock-net",
            &cgroup,
            "60s",
            "    - name: behind\n      offset: -2s\n",
        ) + "  network:\n    - name: no-udp\n      direction: egress\n      \
               match: {protocol: udp, loopback: true}\n      drop: {probability: 100%}\n";
        let file = write_policy(&text);
        let mut apply = FaultApply::start(file.path(), "clock-net");
        apply.wait_ready();
        wait(Duration::from_millis(100));
        let mark = Instant::now();
        assert_skews(
            &reader,
            &reader.after(mark, 3),
            -2 * SEC,
            5 * MS,
            "with network rules",
        );
        assert_eq!(
            udp_delivered(&cgroup, &ns, 9301),
            0,
            "every datagram dropped"
        );
        let out = fault(["status", "--json"]);
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
        assert!(v[0]["attachments"].as_u64() >= Some(1), "{v}");
        assert_eq!(v[0]["rules"][0]["name"], "no-udp", "{v}");
        assert_eq!(v[0]["clock_rules"][0]["name"], "behind", "{v}");
        assert_eq!(v[0]["clock_processes"], 1, "{v}");

        let (exit, log) = apply.stop();
        assert!(exit.success(), "{log}");
        let reverted = Instant::now();
        assert_skews(
            &reader,
            &reader.after(reverted, 3),
            0,
            5 * MS,
            "after revert",
        );
        assert_eq!(
            udp_delivered(&cgroup, &ns, 9302),
            200,
            "traffic flows again"
        );
        assert_vdso_restored(&[&reader]);
    }
    assert_no_leftovers();
}

#[test]
fn a_busy_target_with_a_signal_handler_survives_100_apply_revert_cycles() {
    require_root();
    programs();
    {
        let cgroup = Cgroup::new("clock-stress");
        let mut cmd = Command::new(programs().path("stress"));
        cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut target = spawn_in(Some(&cgroup), None, cmd);
        wait(Duration::from_millis(200));
        let file = write_policy(&policy(
            "clock-stress",
            &cgroup,
            "60s",
            "    - name: behind\n      offset: -2s\n",
        ));
        for cycle in 0..100 {
            let mut apply = FaultApply::start_verbose(file.path(), "clock-stress");
            apply.wait_ready();
            wait(Duration::from_millis(10));
            let (exit, log) = apply.stop();
            assert!(exit.success(), "cycle {cycle}: {log}");
            assert!(
                log.contains("patched process"),
                "cycle {cycle}: the target was patched:\n{log}"
            );
            assert!(
                target.try_wait().is_none(),
                "the target died in cycle {cycle}"
            );
        }
        assert!(
            vdso_of(target.pid()) == vdso_of(std::process::id()),
            "after 100 cycles the target's vDSO is the pristine one"
        );
        target.signal(libc::SIGUSR1);
        let out = target.wait_output(Duration::from_secs(10));
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "stress target: {text}");
        println!("stress: {text}");
        let f: Vec<i64> = text
            .split_whitespace()
            .filter_map(|w| w.parse().ok())
            .collect();
        let [checks, bad, faulted, alarms] = f[..] else {
            panic!("unexpected output: {text}");
        };
        assert_eq!(
            bad, 0,
            "{bad} of {checks} reads were neither true nor true - 2 s"
        );
        assert!(
            faulted > 0 && faulted < checks,
            "both faulted and true reads: {text}"
        );
        assert!(alarms > 100, "the signal handler ran: {text}");
    }
    assert_no_leftovers();
}

/// `(faultable, true)` pairs a container's reader printed so far (`podman logs`).
fn container_readings(c: &Container) -> Vec<(i64, i64)> {
    let out = Command::new("podman")
        .args(["logs", c.name()])
        .output()
        .expect("podman logs");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            match f[..] {
                ["c", seen, truth] => Some((seen.parse().ok()?, truth.parse().ok()?)),
                _ => None,
            }
        })
        .collect()
}

#[test]
fn a_podman_container_reads_the_skew() {
    require_root();
    programs();
    assert!(
        podman_available(),
        "podman is missing: `cargo xtask setup` installs it"
    );
    {
        // The C reader, run inside the container (the image carries the host's glibc).
        let volume = format!("{}:/p:ro", programs().dir.display());
        let c = Container::run_with(
            "clock",
            &["-v", &volume],
            IMAGE_PYTHON,
            &["/p/clockread", "0", "20"],
        );
        wait(Duration::from_millis(300));
        let text = format!(
            "apiVersion: fault/v1\nkind: FaultPolicy\nmetadata:\n  name: clock-container\n\
             spec:\n  duration: 60s\n  targets:\n    - container: {}\n  clock:\n    \
             - name: behind\n      offset: -2s\n",
            c.name()
        );
        let file = write_policy(&text);
        let mut apply = FaultApply::start_verbose(file.path(), "clock-container");
        apply.wait_ready();
        let log = apply.log();
        assert!(log.contains("patched process"), "{log}");
        let before = container_readings(&c).len();
        wait(Duration::from_millis(300));
        let during = container_readings(&c);
        assert!(during.len() > before + 5, "the container keeps printing");
        for &(seen, truth) in &during[before + 1..] {
            let skew = seen - truth;
            assert!(
                (skew + 2 * SEC).abs() < 5 * MS,
                "inside the container: {:+.6} s off, expected -2 s",
                skew as f64 / 1e9
            );
        }
        let (exit, log) = apply.stop();
        assert!(exit.success(), "{log}");
        let reverted = container_readings(&c).len();
        wait(Duration::from_millis(300));
        let after = container_readings(&c);
        for &(seen, truth) in &after[reverted + 1..] {
            assert!((seen - truth).abs() < 5 * MS, "true time after revert");
        }
    }
    assert_no_leftovers();
}

/// A container removed and started again under its name while the run goes on (a new id,
/// a new cgroup) reads the skew again: the run follows it to its new cgroup.
#[test]
fn a_container_started_again_under_its_name_reads_the_skew_again() {
    require_root();
    programs();
    assert!(
        podman_available(),
        "podman is missing: `cargo xtask setup` installs it"
    );
    {
        let volume = format!("{}:/p:ro", programs().dir.display());
        let opts = ["-v", volume.as_str()];
        let args = ["/p/clockread", "0", "20"];
        let c = Container::run_with("clockagain", &opts, IMAGE_PYTHON, &args);
        let text = format!(
            "apiVersion: fault/v1\nkind: FaultPolicy\nmetadata:\n  name: clock-again\n\
             spec:\n  duration: 60s\n  targets:\n    - container: {}\n  clock:\n    \
             - name: behind\n      offset: -2s\n",
            c.name()
        );
        let file = write_policy(&text);
        let mut apply = FaultApply::start(file.path(), "clock-again");
        apply.wait_ready();
        let c = c.recreate(&opts, IMAGE_PYTHON, &args);
        let begun = std::time::Instant::now();
        let skewed = |r: &(i64, i64)| (r.0 - r.1 + 2 * SEC).abs() < 5 * MS;
        // Followed within a second or so; then every reading of the new one is skewed.
        loop {
            let r = container_readings(&c);
            if r.iter().rev().take(5).filter(|r| skewed(r)).count() == 5 {
                break;
            }
            assert!(
                begun.elapsed() < Duration::from_secs(10),
                "the new container reads no skew 10 s on: {:?}\n{}",
                r.iter().rev().take(5).collect::<Vec<_>>(),
                apply.log()
            );
            wait(Duration::from_millis(50));
        }
        eprintln!(
            "the recreated container read the skew {} ms after podman run returned",
            begun.elapsed().as_millis()
        );
        // The exec hold follows too: a process exec'd in the new container reads the skew
        // from its first read (the rescan alone would leave it 250 ms of true time).
        for run in 0..10 {
            let out = c.exec(&["/p/firstread-static"]);
            let (seen, truth) = first_read(&out);
            assert!(
                skewed(&(seen, truth)),
                "run {run}: the first read of a process exec'd in the recreated container was \
                 {:+.6} s off true time, expected -2 s\n{}",
                (seen - truth) as f64 / 1e9,
                apply.log()
            );
        }
        let (exit, log) = apply.stop();
        assert!(exit.success(), "{log}");
        assert!(log.contains("following it there"), "{log}");
    }
    assert_no_leftovers();
}

/// What a `firstread` program printed: its first read through the vDSO, and the raw one.
fn first_read(out: &std::process::Output) -> (i64, i64) {
    let text = String::from_utf8_lossy(&out.stdout);
    let f: Vec<i64> = text
        .split_whitespace()
        .filter_map(|w| w.parse().ok())
        .collect();
    let [seen, truth] = f[..] else {
        panic!("firstread printed {text:?}");
    };
    (seen, truth)
}

fn wall_ns() -> i64 {
    let d = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    d.as_nanos() as i64
}

/// The processes of `cgroup` that are stopped (state `T`), with their state.
fn stopped_in(cgroup: &Cgroup) -> Vec<(i32, char)> {
    states(cgroup)
        .into_iter()
        .filter(|&(_, s)| s == 'T')
        .collect()
}

/// The state letter of every process in `cgroup` (`T` is stopped).
fn states(cgroup: &Cgroup) -> Vec<(i32, char)> {
    cgroup
        .procs()
        .into_iter()
        .filter_map(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            let (_, rest) = stat.rsplit_once(')')?;
            Some((pid, rest.trim_start().chars().next()?))
        })
        .collect()
}

#[test]
fn processes_that_exec_in_the_target_are_faulted_from_their_first_read() {
    require_root();
    programs();
    {
        let cgroup = Cgroup::new("clock-exec");
        let bystander = Reader::c(None, 0);
        let file = write_policy(&policy(
            "clock-exec",
            &cgroup,
            "60s",
            "    - name: ahead\n      offset: 1h\n",
        ));
        let mut apply = FaultApply::start_verbose(file.path(), "clock-exec");
        apply.wait_ready();

        // `date +%s`, started after apply: true time + 1 h, to the second.
        for _ in 0..3 {
            let before = wall_ns() / SEC;
            let out = run_in(
                Some(&cgroup),
                None,
                {
                    let mut c = Command::new("date");
                    c.arg("+%s").stdout(Stdio::piped());
                    c
                },
                Duration::from_secs(10),
            );
            let after = wall_ns() / SEC;
            let text = String::from_utf8_lossy(&out.stdout);
            let seen: i64 = text.trim().parse().unwrap_or_else(|_| {
                panic!(
                    "date +%s printed {text:?}: {}",
                    String::from_utf8_lossy(&out.stderr)
                )
            });
            assert!(
                seen >= before + 3600 && seen <= after + 3600,
                "date +%s in the target read {seen}, expected true time + 3600 s in [{}, {}]",
                before + 3600,
                after + 3600
            );
        }

        // A C program whose first instruction-level act is a clock read: that read is
        // faulted, and it comes within 10 ms of the exec (spawn included).
        let mut latencies = Vec::new();
        for run in 0..20 {
            let spawned = wall_ns();
            let out = run_in(
                Some(&cgroup),
                None,
                {
                    let mut c = Command::new(programs().path("firstread"));
                    c.stdout(Stdio::piped());
                    c
                },
                Duration::from_secs(10),
            );
            let (seen, truth) = first_read(&out);
            assert!(
                (seen - truth - 3600 * SEC).abs() < 5 * MS,
                "run {run}: the first read of a process exec'd in the target was {:+.6} s off \
                 true time, expected +3600 s",
                (seen - truth) as f64 / 1e9
            );
            latencies.push(truth - spawned);
        }
        latencies.sort();
        let ms = |ns: i64| ns as f64 / 1e6;
        println!(
            "exec -> first perturbed read (spawn included), 20 runs: p50 {:.2} ms, p90 {:.2} ms, max {:.2} ms",
            ms(latencies[10]),
            ms(latencies[18]),
            ms(latencies[19])
        );
        // Not a speed test (the figures are printed): a hold that failed and left the
        // process to the rescan would take a second or more.
        assert!(
            latencies[18] < 200 * MS,
            "exec -> first perturbed read p90 {:.2} ms, expected well under the rescan's \
             second: {latencies:?}",
            ms(latencies[18])
        );
        assert_skews(
            &bystander,
            &bystander.after(Instant::now(), 3),
            0,
            5 * MS,
            "untargeted",
        );
        let log = apply.log();
        assert!(
            log.contains("(firstread) at exec"),
            "the log tells the exec'd processes were patched:\n{log}"
        );
        let (exit, log) = apply.stop();
        assert!(exit.success(), "{log}");
    }
    assert_no_leftovers();
}

#[test]
fn drift_of_10000ppm_shows_as_100ms_over_10_seconds() {
    require_root();
    programs();
    {
        let cgroup = Cgroup::new("clock-drift10k");
        let early = Reader::c(Some(&cgroup), 0);
        let file = write_policy(&policy(
            "clock-drift10k",
            &cgroup,
            "60s",
            "    - name: fast\n      drift: 10000ppm\n",
        ));
        let mut apply = FaultApply::start(file.path(), "clock-drift10k");
        apply.wait_ready();
        // Exec'd after apply: held at exec and patched, so it drifts from its first read.
        let late = Reader::c(Some(&cgroup), 0);
        let mark = Instant::now();
        wait(Duration::from_millis(10_300));
        for r in [&early, &late] {
            let got: Vec<Reading> = r
                .after(mark, 100)
                .into_iter()
                .filter(|x| x.label == "c")
                .collect();
            let a = &got[0];
            let b = got
                .iter()
                .find(|x| x.truth >= a.truth + 10 * SEC)
                .expect("readings 10 s apart");
            let gained = b.skew() - a.skew();
            println!(
                "drift ({} reader, pid {}): {:+.3} ms over {:.3} s",
                if std::ptr::eq(r, &early) {
                    "started before apply"
                } else {
                    "exec'd after apply"
                },
                r.pid(),
                gained as f64 / 1e6,
                (b.truth - a.truth) as f64 / 1e9
            );
            assert!(
                (gained - 100 * MS).abs() <= 10 * MS,
                "10,000 ppm over 10 s: {:+.3} ms, expected 100 ms ± 10 ms",
                gained as f64 / 1e6
            );
        }
        drop(apply);
    }
    assert_no_leftovers();
}

#[test]
fn a_sigkilled_loader_never_leaves_a_process_held_at_exec() {
    require_root();
    programs();
    {
        let cgroup = Cgroup::new("clock-held");
        let file = write_policy(&policy(
            "clock-held",
            &cgroup,
            "60s",
            "    - name: behind\n      offset: -2s\n",
        ));
        let mut apply = FaultApply::start_verbose(file.path(), "clock-held");
        apply.wait_ready();
        // Execs without pause: events flow when the loader dies.
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "while :; do /bin/true; done"]);
        let mut looper = spawn_in(Some(&cgroup), None, cmd);
        wait(Duration::from_millis(500));
        let log = apply.log();
        assert!(
            log.contains("(true) at exec"),
            "execs are being held and patched:\n{log}"
        );
        // SAFETY: kill has no memory-safety preconditions; the pid is our child.
        unsafe { libc::kill(apply.pid() as i32, libc::SIGKILL) };
        apply.wait_exit(Duration::from_secs(5));
        wait(Duration::from_millis(100));
        println!("held when the loader died: {:?}", stopped_in(&cgroup));
        // The watchdog continues them, and the exec hold's lease ends: within a second,
        // before anyone runs `fault stop`.
        wait(Duration::from_millis(1100));
        let stopped = stopped_in(&cgroup);
        assert!(
            stopped.is_empty(),
            "processes still stopped a second after the loader died: {stopped:?}"
        );

        fault_ok(["stop", "--all"]);
        // Whatever was held goes on, and nothing is stopped again: the loop keeps exec'ing.
        for _ in 0..10 {
            wait(Duration::from_millis(50));
            let stopped = stopped_in(&cgroup);
            assert!(
                stopped.is_empty(),
                "processes left stopped after `fault stop --all`: {stopped:?}"
            );
        }
        assert!(looper.try_wait().is_none(), "the exec loop keeps running");
        looper.signal(libc::SIGKILL);
        drop(apply);
    }
    assert_no_leftovers();
}

/// An experiment's clock step: true time before it, the skew while it is on (counted from
/// when it went on), and true time again after it, in a process that runs throughout.
#[test]
fn a_clock_step_skews_only_while_it_is_on() {
    require_root();
    programs();
    {
        let cgroup = Cgroup::new("clock-step");
        let reader = Reader::c(Some(&cgroup), 0);
        let file = write_policy(&format!(
            "apiVersion: fault/v1\nkind: Experiment\nmetadata: {{name: clock-step}}\nspec:\n  \
             duration: 20s\n  groups:\n    app: [{{cgroup: {}}}]\n  steps:\n    \
             - {{name: skew, at: 1s, for: 2s, targets: app, clock: [{{offset: 30s}}]}}\n",
            cgroup.path().display()
        ));
        let mut apply = FaultApply::start(file.path(), "clock-step");
        apply.wait_ready();
        let start = Instant::now();
        wait(Duration::from_millis(4000));
        let got: Vec<Reading> = reader
            .after(start, 150)
            .into_iter()
            .filter(|r| r.label == "c")
            .collect();
        let within = |from: u64, to: u64| -> Vec<Reading> {
            got.iter()
                .filter(|r| {
                    let t = r.at.duration_since(start);
                    t > Duration::from_millis(from) && t < Duration::from_millis(to)
                })
                .cloned()
                .collect()
        };
        let (before, during, after) = (within(0, 800), within(1300, 2700), within(3300, 4000));
        assert!(!before.is_empty() && !during.is_empty() && !after.is_empty());
        assert_skews(&reader, &before, 0, 5 * MS, "before the step");
        assert_skews(&reader, &during, 30 * SEC, 5 * MS, "during the step");
        assert_skews(&reader, &after, 0, 5 * MS, "after the step");
        println!(
            "clock step: {} readings before, {} during (+30 s), {} after",
            before.len(),
            during.len(),
            after.len()
        );
        let (status, out) = apply.stop();
        assert!(status.success(), "{out}");
        assert!(
            out.contains("step skew on") && out.contains("step skew off"),
            "{out}"
        );
    }
    assert_no_leftovers();
}

/// Jepsen's strobe in a clock step: the clock reads 5 s ahead during every other 300 ms and
/// true time in between, in a process that runs throughout.
#[test]
fn a_strobe_flips_the_clock_ahead_and_back() {
    require_root();
    programs();
    {
        let cgroup = Cgroup::new("clock-strobe");
        let reader = Reader::c(Some(&cgroup), 0);
        let file = write_policy(&format!(
            "apiVersion: fault/v1\nkind: Experiment\nmetadata: {{name: clock-strobe}}\nspec:\n  \
             duration: 20s\n  groups:\n    app: [{{cgroup: {}}}]\n  steps:\n    \
             - {{name: strobe, at: 0s, for: 20s, targets: app, clock: [{{strobe: {{by: 5s, every: 300ms}}}}]}}\n",
            cgroup.path().display()
        ));
        let mut apply = FaultApply::start(file.path(), "clock-strobe");
        apply.wait_ready();
        let mark = Instant::now();
        wait(Duration::from_millis(2500));
        let got: Vec<Reading> = reader
            .after(mark, 100)
            .into_iter()
            .filter(|r| r.label == "c")
            .collect();
        // Every reading is either true or 5 s ahead, and both kinds come in runs.
        let ahead = |r: &Reading| (r.skew() - 5 * SEC).abs() <= 5 * MS;
        let true_time = |r: &Reading| r.skew().abs() <= 5 * MS;
        assert!(
            got.iter().all(|r| ahead(r) || true_time(r)),
            "readings other than true or +5 s: {:?}",
            got.iter().map(Reading::skew).collect::<Vec<_>>()
        );
        let flips = got
            .windows(2)
            .filter(|w| ahead(&w[0]) != ahead(&w[1]))
            .count();
        let share = got.iter().filter(|r| ahead(r)).count() as f64 / got.len() as f64;
        println!(
            "strobe: {} readings over 2.5 s, {flips} flips, {:.0} % ahead",
            got.len(),
            share * 100.0
        );
        // 2.5 s of 300 ms intervals: about 8 flips, half the time ahead.
        assert!((6..=10).contains(&flips), "{flips} flips");
        assert!((0.35..=0.65).contains(&share), "{share} of readings ahead");
        drop(apply);
    }
    assert_no_leftovers();
}

/// Polls `fault status --json` until `pred` holds for the run's `clock_calls`, at most 5 s.
fn clock_calls_until(pred: impl Fn(&[serde_json::Value]) -> bool) -> Vec<serde_json::Value> {
    let until = Instant::now() + Duration::from_secs(5);
    loop {
        let out = fault_ok(["status", "--json"]);
        let entries: serde_json::Value = serde_json::from_str(&out).expect("status JSON");
        let calls: Vec<serde_json::Value> = entries
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|e| e["clock_calls"].as_array().cloned().unwrap_or_default())
            .collect();
        if pred(&calls) || Instant::now() > until {
            return calls;
        }
        wait(Duration::from_millis(200));
    }
}

/// Raw `clock_gettime` system calls read true time and an absolute `clock_nanosleep`
/// waits by the true clock, whatever the vDSO says; where eBPF may not rewrite them
/// (lockdown), fault names each such process in its output and in `fault status`, and
/// not a process that reads through the vDSO and sleeps for relative times.
#[test]
fn processes_the_skew_cannot_reach_are_named_in_the_output_and_the_status() {
    require_root();
    {
        let cgroup = Cgroup::new("clock-calls");
        let raw = spawn_in(
            Some(&cgroup),
            None,
            probe(&["clock-pair", "--interval-ms", "20"]),
        );
        let waiter = spawn_in(
            Some(&cgroup),
            None,
            probe(&["abs-wait", "--interval-ms", "50"]),
        );
        let ticks_file = tempfile::NamedTempFile::new().unwrap();
        let quiet = spawn_in(
            Some(&cgroup),
            None,
            probe(&[
                "ticks",
                "--out",
                ticks_file.path().to_str().unwrap(),
                "--interval-ms",
                "20",
            ]),
        );
        let file = write_policy(&policy(
            "clock-calls",
            &cgroup,
            "60s",
            // Small, so the waiter's waits (each 50 ms by its skewed clock, so 50 ms plus
            // the skew by the true one) come often enough to be seen in a 2 s window.
            "    - name: ahead\n      offset: 100ms\n",
        ));
        let mut apply = FaultApply::start(file.path(), "clock-calls");
        apply.wait_ready();
        let (r, w) = (raw.pid() as u64, waiter.pid() as u64);
        let calls = clock_calls_until(|c| {
            let of = |pid| c.iter().find(|x| x["pid"] == pid);
            of(r).is_some_and(|x| x["raw_reads"].as_u64() > Some(3))
                && of(w).is_some_and(|x| x["abs_waits"].as_u64() > Some(3))
        });
        let of = |pid: u64| calls.iter().find(|x| x["pid"] == pid);
        let reader = of(r).unwrap_or_else(|| panic!("raw reader {r} not in {calls:?}"));
        assert_eq!(reader["abs_waits"], 0, "{reader}");
        assert!(
            reader["calls"].to_string().contains("clock_gettime"),
            "{reader}"
        );
        let sleeper = of(w).unwrap_or_else(|| panic!("waiter {w} not in {calls:?}"));
        assert!(
            sleeper["calls"]
                .to_string()
                .contains("clock_nanosleep(TIMER_ABSTIME)"),
            "{sleeper}"
        );
        assert!(
            of(quiet.pid() as u64).is_none(),
            "the vDSO reader is not named: {calls:?}"
        );
        let text = fault_ok(["status"]);
        assert!(
            text.contains(&format!("clock: not reached: process {r} (fault-probe)")),
            "{text}"
        );
        let log = apply.log();
        assert!(
            log.contains(
                "reads made as system calls and waits until an absolute time follow the true clock"
            ),
            "said once why: {log}"
        );
        for (pid, what) in [
            (
                r,
                "clock read(s) made as system calls, which read true time",
            ),
            (
                w,
                "wait(s) until an absolute time, which end by the true clock",
            ),
        ] {
            assert!(
                log.contains(&format!("process {pid} (fault-probe)")) && log.contains(what),
                "named in the output: {pid}: {log}"
            );
        }
        let (exit, log) = apply.stop();
        assert!(exit.success(), "{log}");
    }
    assert_no_leftovers();
}

/// A runtime's program: once, it prints its first realtime read and exits; looping, it
/// prints one every 50 ms or so. The first number of a line is the read, in `unit` ns.
struct Runtime {
    name: &'static str,
    once: Vec<String>,
    looping: Vec<String>,
    unit: i64,
}

fn runtimes() -> Vec<Runtime> {
    let p = programs();
    let path = |name: &str| p.path(name).display().to_string();
    let out = Command::new("python3")
        .args(["-c", "import sys; print(sys.executable)"])
        .output()
        .expect("python3");
    // The interpreter itself, not a version manager's shim script.
    let python = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let strings = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    let dir = p.dir.display().to_string();
    vec![
        Runtime {
            name: "glibc dynamic",
            once: vec![path("firstread")],
            looping: vec![path("clockread"), "0".into(), "50".into()],
            unit: 1,
        },
        Runtime {
            name: "glibc static",
            once: vec![path("firstread-static")],
            looping: vec![path("clockread-static"), "0".into(), "50".into()],
            unit: 1,
        },
        Runtime {
            name: "musl static",
            once: vec![path("firstread-musl")],
            looping: vec![path("clockread-musl"), "0".into(), "50".into()],
            unit: 1,
        },
        Runtime {
            name: "Python",
            once: strings(&[&python, "-S", "-c", "import time; print(time.time_ns())"]),
            looping: strings(&[
                &python,
                "-S",
                "-u",
                "-c",
                "import time\nwhile True:\n    print(time.time_ns()); time.sleep(0.05)",
            ]),
            unit: 1,
        },
        Runtime {
            name: "Go",
            once: vec![path("firstread-go")],
            looping: vec![path("goread")],
            unit: 1,
        },
        Runtime {
            name: "Java",
            once: strings(&["java", "-cp", &dir, "First"]),
            looping: strings(&["java", "-cp", &dir, "First", "loop"]),
            unit: 1,
        },
        Runtime {
            name: "Node",
            once: strings(&["node", "-e", "console.log(Date.now())"]),
            looping: strings(&[
                "node",
                "-e",
                "setInterval(() => console.log(Date.now()), 50)",
            ]),
            unit: MS,
        },
    ]
}

fn command_of(argv: &[String]) -> Command {
    let mut c = Command::new(&argv[0]);
    c.args(&argv[1..]);
    c
}

/// The first number of a line (a label may come before it), times `unit`.
fn first_number(line: &str, unit: i64) -> Option<i64> {
    line.split_whitespace()
        .find_map(|w| w.parse::<i64>().ok())
        .map(|n| n * unit)
}

/// A looping runtime in the target: each read with the true time its line arrived at.
struct Looping {
    _child: ChildGuard,
    reads: Arc<Mutex<Vec<(i64, i64)>>>,
}

impl Looping {
    fn start(cgroup: &Cgroup, r: &Runtime) -> Self {
        let mut cmd = command_of(&r.looping);
        cmd.stdout(Stdio::piped()).stdin(Stdio::null());
        let mut child = spawn_in(Some(cgroup), None, cmd);
        let out = child.child_mut().stdout.take().expect("piped stdout");
        let reads: Arc<Mutex<Vec<(i64, i64)>>> = Arc::default();
        let sink = reads.clone();
        let unit = r.unit;
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if let Some(seen) = first_number(&line, unit) {
                    sink.lock().unwrap().push((wall_ns(), seen));
                }
            }
        });
        Looping {
            _child: child,
            reads,
        }
    }

    /// How far ahead of the true time each read since `since` (true ns) was.
    fn skews_since(&self, since: i64) -> Vec<i64> {
        let reads = self.reads.lock().unwrap();
        reads
            .iter()
            .filter(|(at, _)| *at > since)
            .map(|(at, seen)| seen - at)
            .collect()
    }
}

/// Processes of each runtime exec'd into the target after apply, one after another.
const EXECS: usize = 200;

#[test]
fn every_runtime_reads_the_skew_running_before_apply_and_from_its_first_read_after() {
    require_root();
    programs();
    let runtimes = runtimes();
    {
        let cgroup = Cgroup::new("clock-runtimes");
        let running: Vec<Looping> = runtimes
            .iter()
            .map(|r| Looping::start(&cgroup, r))
            .collect();
        // The JVM and Node take a moment to print their first line.
        wait(Duration::from_millis(1500));
        let file = write_policy(&policy(
            "clock-runtimes",
            &cgroup,
            "600s",
            "    - name: ahead\n      offset: 1h\n",
        ));
        let mut apply = FaultApply::start_verbose(file.path(), "clock-runtimes");
        apply.wait_ready();
        let ready = wall_ns();
        wait(Duration::from_millis(1200));
        let hour = 3600 * SEC;
        for (r, l) in runtimes.iter().zip(&running) {
            // Each read's line arrives a little after it was made.
            let skews = l.skews_since(ready + 300 * MS);
            assert!(
                skews.len() >= 3 && skews.iter().all(|s| (s - hour).abs() < 100 * MS),
                "{} running before apply: reads ahead of true time by {skews:?} ns, expected \
                 1 h",
                r.name
            );
        }
        for r in &runtimes {
            first_reads_are_faulted(&cgroup, r, hour, &apply);
        }
        let (exit, log) = apply.stop();
        assert!(exit.success(), "{log}");
    }
    assert_no_leftovers();
}

/// Runs [`EXECS`] processes of `r` in the target, each bracketed by true time: every one's
/// first read must be `offset` ahead.
fn first_reads_are_faulted(cgroup: &Cgroup, r: &Runtime, offset: i64, apply: &FaultApply) {
    let mut misses = Vec::new();
    let mut took = Vec::new();
    for run in 0..EXECS {
        let mut cmd = command_of(&r.once);
        cmd.stdout(Stdio::piped());
        let before = wall_ns();
        let child = spawn_in(Some(cgroup), None, cmd);
        let pid = child.pid();
        let out = child.wait_output(Duration::from_secs(30));
        let after = wall_ns();
        let text = String::from_utf8_lossy(&out.stdout);
        let seen = first_number(&text, r.unit).unwrap_or_else(|| {
            panic!(
                "{} run {run} printed {text:?}: {}",
                r.name,
                String::from_utf8_lossy(&out.stderr)
            )
        });
        // A read in whole units (Node's milliseconds) may be up to one unit early.
        if !(before + offset - r.unit..=after + offset).contains(&seen) {
            misses.push((run, pid, seen - before));
        }
        took.push(after - before);
    }
    took.sort();
    println!(
        "runtimes: {}: {EXECS} processes exec'd in the target, {} read true time first; \
         {:.1} ms per process (median, spawn to exit)",
        r.name,
        misses.len(),
        took[EXECS / 2] as f64 / 1e6
    );
    // What the loader said of the missed processes (the run is verbose: every patch).
    let log = apply.log();
    let said: Vec<&str> = log
        .lines()
        .filter(|l| {
            misses
                .iter()
                .any(|m| l.contains(&format!("process {} ", m.1)))
        })
        .collect();
    assert!(
        misses.is_empty(),
        "{}: first reads off the skew (run, pid, ns ahead of the spawn): {misses:?}; the \
         loader said of them:\n{}",
        r.name,
        said.join("\n")
    );
}
