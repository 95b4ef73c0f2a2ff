//! Readings of a process from /proc, shared by the tests and the benchmark harness
//! (which includes this file by path).

/// (resident set size in bytes, thread count) of process `pid`; zeros if it is gone.
pub fn rss_and_threads(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| -> u64 {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:") * 1024, field("Threads:"))
}

/// CPU time (user + system) process `pid` (or `"self"`) has used, in seconds, from
/// /proc/PID/stat; 0 if it is gone.
pub fn cpu_seconds(pid: &str) -> f64 {
    let (user, system) = cpu_user_system(pid);
    user + system
}

/// CPU time process `pid` (or `"self"`) has used, in seconds, as (user, system), from
/// /proc/PID/stat; zeros if it is gone.
pub fn cpu_user_system(pid: &str) -> (f64, f64) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which is in parentheses and may hold spaces).
    let rest = stat.rsplit_once(") ").map_or("", |(_, r)| r);
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // USER_HZ is 100 on Linux.
    let seconds = |i: usize| fields.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0) / 100.0;
    (seconds(11), seconds(12))
}
