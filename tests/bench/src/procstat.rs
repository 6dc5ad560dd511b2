//! What the kernel knows about the processes under test, from `/proc`: peak and current
//! resident memory of the ingest process, and where the machine's CPU time went during
//! a measurement (ingest, PostgreSQL, RabbitMQ, this load generator, everything else).
//!
//! The CPU split is the cheap profile behind the bottleneck verdict: on a two-core box
//! a component that is not itself saturated can still be the limit if the others
//! together eat the cores.

use std::collections::BTreeMap;

/// Linux reports `/proc/*/stat` times in clock ticks of `USER_HZ`, 100 on every
/// mainstream architecture (it is fixed by the ABI, not by the kernel's `HZ`).
const TICKS_PER_SEC: f64 = 100.0;

fn status_kib(pid: u32, field: &str) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    text.lines()
        .find_map(|line| line.strip_prefix(field))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
}

/// Peak resident set size (`VmHWM`) in MiB.
pub fn peak_rss_mib(pid: u32) -> Option<f64> {
    status_kib(pid, "VmHWM:").map(|kib| kib as f64 / 1024.0)
}

/// Current resident set size (`VmRSS`) in MiB.
pub fn rss_mib(pid: u32) -> Option<f64> {
    status_kib(pid, "VmRSS:").map(|kib| kib as f64 / 1024.0)
}

/// Resets the peak to the current RSS (`echo 5 > /proc/PID/clear_refs`, Linux ≥ 4.0),
/// so each scenario gets its own peak without restarting the process.
pub fn reset_peak(pid: u32) -> bool {
    std::fs::write(format!("/proc/{pid}/clear_refs"), "5").is_ok()
}

/// CPU consumers the verdict distinguishes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Group {
    Ingest,
    Postgres,
    RabbitMq,
    LoadGenerator,
    Other,
}

impl Group {
    pub const ALL: [Group; 5] = [
        Group::Ingest,
        Group::Postgres,
        Group::RabbitMq,
        Group::LoadGenerator,
        Group::Other,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Group::Ingest => "ingest",
            Group::Postgres => "postgres",
            Group::RabbitMq => "rabbitmq",
            Group::LoadGenerator => "bench client",
            Group::Other => "other",
        }
    }
}

/// CPU seconds consumed so far by every process, with its group. Kept per process so
/// that a process exiting between two snapshots (a closed connection's PostgreSQL
/// backend) does not make its group's figure go backwards.
#[derive(Debug, Clone, Default)]
pub struct CpuSnapshot {
    by_pid: BTreeMap<u32, (Group, f64)>,
}

/// Cores each group kept busy between two snapshots.
#[derive(Debug, Clone, Default)]
pub struct CpuUse {
    pub cores: BTreeMap<Group, f64>,
}

impl CpuUse {
    pub fn get(&self, group: Group) -> f64 {
        self.cores.get(&group).copied().unwrap_or(0.0)
    }

    /// `ingest 0.9, postgres 0.6, …` for progress lines.
    pub fn summary(&self) -> String {
        Group::ALL
            .iter()
            .map(|g| format!("{} {:.2}", g.name(), self.get(*g)))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

fn classify(pid: u32, comm: &str, ingest_pids: &[u32]) -> Group {
    if ingest_pids.contains(&pid) {
        Group::Ingest
    } else if pid == std::process::id() {
        Group::LoadGenerator
    } else if comm == "postgres" {
        Group::Postgres
    } else if comm == "beam.smp" || comm == "erl_child_setup" || comm == "epmd" {
        Group::RabbitMq
    } else {
        Group::Other
    }
}

/// Reads `utime + stime` of every process.
pub fn snapshot(ingest_pids: &[u32]) -> CpuSnapshot {
    let mut by_pid = BTreeMap::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return CpuSnapshot::default();
    };
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // `pid (comm) state ppid …`: comm may contain spaces, so split at the last ')'.
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        let comm = &stat[open + 1..close];
        let fields: Vec<&str> = stat[close + 1..].split_whitespace().collect();
        // After comm: state is field 0, utime field 11, stime field 12.
        let ticks = |i: usize| {
            fields
                .get(i)
                .and_then(|f| f.parse::<u64>().ok())
                .unwrap_or(0)
        };
        let seconds = (ticks(11) + ticks(12)) as f64 / TICKS_PER_SEC;
        by_pid.insert(pid, (classify(pid, comm, ingest_pids), seconds));
    }
    CpuSnapshot { by_pid }
}

impl CpuSnapshot {
    /// Cores used per group from `earlier` to `self` over `seconds` of wall time:
    /// processes alive at both ends count their difference, new ones all they used;
    /// ones that exited in between are lost (their last moments are not counted).
    pub fn since(&self, earlier: &CpuSnapshot, seconds: f64) -> CpuUse {
        let mut cores: BTreeMap<Group, f64> = Group::ALL.iter().map(|g| (*g, 0.0)).collect();
        for (pid, (group, now)) in &self.by_pid {
            let then = earlier.by_pid.get(pid).map_or(0.0, |(_, t)| *t);
            *cores.entry(*group).or_insert(0.0) += (now - then).max(0.0) / seconds.max(1e-9);
        }
        CpuUse { cores }
    }
}

/// Load average and the number of cores, for the "was the machine quiet" line.
pub fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}
