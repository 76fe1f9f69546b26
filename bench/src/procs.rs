//! CPU time and memory of running processes, read from `/proc` (Linux).
//!
//! CPU is user + system time, the process's own and its waited-for children's, in
//! clock ticks (`/proc/<pid>/stat` fields 14–17: utime, stime, cutime, cstime),
//! converted at `sysconf(_SC_CLK_TCK)`. Peak memory is `VmHWM`, the resident-set
//! high-water mark the kernel keeps for the process's whole life.

use std::path::Path;
use std::time::Duration;

/// Clock ticks a second in `/proc/<pid>/stat` (USER_HZ; 100 on Linux).
fn ticks_per_sec() -> f64 {
    // SAFETY: sysconf only reads a configuration value.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if hz > 0 {
        hz as f64
    } else {
        100.0
    }
}

/// A process's CPU time so far: user + system, and its waited-for children's.
pub fn cpu_time(pid: u32) -> Option<Duration> {
    let fields = stat_fields(pid)?;
    // Fields after the command (`pid (comm) state ...`): utime is field 14 overall,
    // i.e. index 11 after `state`; stime, cutime and cstime follow.
    let ticks: u64 = (11..15)
        .map(|i| fields.get(i).and_then(|f| f.parse::<u64>().ok()))
        .sum::<Option<u64>>()?;
    Some(Duration::from_secs_f64(ticks as f64 / ticks_per_sec()))
}

/// The fields of `/proc/<pid>/stat` after the `(comm)` field, from `state` on.
fn stat_fields(pid: u32) -> Option<Vec<String>> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may contain spaces and parentheses: split after the last ')'.
    let rest = &text[text.rfind(')')? + 1..];
    Some(rest.split_whitespace().map(str::to_string).collect())
}

/// Current resident set size, in bytes.
pub fn rss(pid: u32) -> Option<u64> {
    status_kib(pid, "VmRSS:").map(|kib| kib * 1024)
}

/// Peak resident set size over the process's life, in bytes.
pub fn peak_rss(pid: u32) -> Option<u64> {
    status_kib(pid, "VmHWM:").map(|kib| kib * 1024)
}

fn status_kib(pid: u32, key: &str) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = text.lines().find(|l| l.starts_with(key))?;
    line[key.len()..].split_whitespace().next()?.parse().ok()
}

/// Total CPU time of every process whose command name is `comm` (e.g. all of
/// PostgreSQL's: postmaster, backends, background workers; exited backends are in the
/// postmaster's children's time). Compare two readings for the time spent between them.
/// On a shared server this counts every database's work, not only the benchmark's.
pub fn cpu_time_of_all(comm: &str) -> Duration {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Duration::ZERO;
    };
    entries
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| command_name(*pid).as_deref() == Some(comm))
        .filter_map(cpu_time)
        .sum()
}

fn command_name(pid: u32) -> Option<String> {
    let text =
        std::fs::read_to_string(Path::new("/proc").join(pid.to_string()).join("comm")).ok()?;
    Some(text.trim_end().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_this_process() {
        let me = std::process::id();
        // Burn a little CPU so the reading cannot be zero.
        let started = std::time::Instant::now();
        let mut x = 0u64;
        while started.elapsed() < Duration::from_millis(60) {
            x = x.wrapping_mul(31).wrapping_add(7);
        }
        std::hint::black_box(x);
        assert!(cpu_time(me).expect("cpu time") >= Duration::from_millis(20));
        let rss = rss(me).expect("rss");
        let peak = peak_rss(me).expect("peak");
        assert!(rss > 1 << 20 && peak >= rss, "rss {rss} peak {peak}");
        assert_eq!(cpu_time(u32::MAX), None);
    }
}
