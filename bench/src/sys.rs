//! CPU time and memory of this process and of the broker under test, from the kernel.

use std::time::Duration;

/// User plus system CPU time this process has used so far.
pub fn self_cpu_time() -> Option<Duration> {
    let mut usage = std::mem::MaybeUninit::<libc::rusage>::uninit();
    // SAFETY: getrusage writes a whole `rusage` through the pointer when it returns 0, and
    // the value is only read in that case.
    let usage = unsafe {
        if libc::getrusage(libc::RUSAGE_SELF, usage.as_mut_ptr()) != 0 {
            return None;
        }
        usage.assume_init()
    };
    Some(timeval(usage.ru_utime) + timeval(usage.ru_stime))
}

fn timeval(tv: libc::timeval) -> Duration {
    Duration::from_secs(tv.tv_sec.max(0) as u64) + Duration::from_micros(tv.tv_usec.max(0) as u64)
}

/// User plus system CPU time of another process, from `/proc/PID/stat`.
pub fn process_cpu_time(pid: u32) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces and parentheses; the fields after the last ')' do not.
    let rest = stat.get(stat.rfind(')')? + 1..)?;
    let mut fields = rest.split_whitespace();
    // After the name: state is field 3, utime field 14 and stime field 15 of the whole line.
    let utime: u64 = fields.nth(11)?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    // SAFETY: sysconf only reads a configuration value.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks <= 0 {
        return None;
    }
    Some(Duration::from_secs_f64(
        (utime + stime) as f64 / ticks as f64,
    ))
}

/// Time all cores together spent on anything but idling, from the first line of
/// `/proc/stat`; time the hypervisor gave to other machines (steal) counts as busy, since
/// it was not ours either.
pub fn machine_busy_time() -> Option<Duration> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let mut fields = stat.lines().next()?.split_whitespace();
    if fields.next()? != "cpu" {
        return None;
    }
    let values: Vec<u64> = fields.take(8).filter_map(|v| v.parse().ok()).collect();
    let [user, nice, system, _idle, _iowait, irq, softirq, steal] = values.as_slice() else {
        return None;
    };
    // SAFETY: sysconf only reads a configuration value.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks <= 0 {
        return None;
    }
    let busy = user + nice + system + irq + softirq + steal;
    Some(Duration::from_secs_f64(busy as f64 / ticks as f64))
}

/// Resident set size of a process in KiB (`VmRSS` in `/proc/PID/status`).
pub fn process_rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
}

/// Raises the open-file soft limit to the hard limit, which is as far as an unprivileged
/// process may go. Returns the limit now in force.
pub fn raise_nofile_limit() -> Option<libc::rlim_t> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: both calls only read or write the `rlimit` passed by reference.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return None;
        }
        if limit.rlim_cur < limit.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: limit.rlim_max,
                rlim_max: limit.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                limit = raised;
            }
        }
    }
    Some(limit.rlim_cur)
}

/// CPU use between two readings, as a percentage of one core.
pub fn cpu_percent(
    before: Option<Duration>,
    after: Option<Duration>,
    wall: Duration,
) -> Option<f64> {
    let used = after?.checked_sub(before?)?;
    (wall > Duration::ZERO).then(|| used.as_secs_f64() / wall.as_secs_f64() * 100.0)
}

/// What the machine spent on neither us nor the broker, as a percentage of one core.
/// Each pair is (before, after); the broker's may be absent.
pub fn others_percent(
    machine: (Option<Duration>, Option<Duration>),
    us: (Option<Duration>, Option<Duration>),
    broker: (Option<Duration>, Option<Duration>),
    wall: Duration,
) -> Option<f64> {
    let all = cpu_percent(machine.0, machine.1, wall)?;
    let ours = cpu_percent(us.0, us.1, wall)?;
    let brokers = cpu_percent(broker.0, broker.1, wall).unwrap_or(0.0);
    // Jiffies are coarse: over a short window the difference can dip below zero.
    Some(((all - ours - brokers).max(0.0) * 100.0).round() / 100.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_its_own_cpu_time_and_memory() {
        let pid = std::process::id();
        assert!(self_cpu_time().is_some());
        assert!(process_cpu_time(pid).is_some());
        assert!(machine_busy_time().is_some());
        assert!(process_rss_kib(pid).is_some_and(|kib| kib > 0));
        assert_eq!(process_rss_kib(u32::MAX), None);
    }
}
