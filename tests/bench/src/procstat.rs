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
    /// The role of each PostgreSQL process counted in [`Group::Postgres`].
    pg_roles: BTreeMap<u32, String>,
}

/// Cores each group kept busy between two snapshots.
#[derive(Debug, Clone, Default)]
pub struct CpuUse {
    pub cores: BTreeMap<Group, f64>,
    /// [`Group::Postgres`] split by process role: `backends` (the connections doing the
    /// statements) and each background process (`checkpointer`, `walwriter`, …).
    pub postgres_roles: BTreeMap<String, f64>,
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

    /// `backends 0.40, checkpointer 0.05, …` (roles above 0.005 cores).
    pub fn postgres_summary(&self) -> String {
        self.postgres_roles
            .iter()
            .filter(|(_, cores)| **cores >= 0.005)
            .map(|(role, cores)| format!("{role} {cores:.2}"))
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
        // The cluster is shared: a backend serving another database is someone else's
        // work, not the bench's PostgreSQL cost.
        match postgres_role(pid) {
            PgRole::Backend(database) if !database.starts_with(BENCH_DATABASES) => Group::Other,
            _ => Group::Postgres,
        }
    } else if comm == "beam.smp" || comm == "erl_child_setup" || comm == "epmd" {
        Group::RabbitMq
    } else {
        Group::Other
    }
}

/// Every database the bench creates starts with this.
const BENCH_DATABASES: &str = "anchorpipe_bench";

/// What a PostgreSQL process is, from the title it sets (`/proc/PID/cmdline`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PgRole {
    /// A client backend, with its database.
    Backend(String),
    /// The postmaster or a background process: `checkpointer`, `walwriter`, …
    Background(String),
}

pub fn postgres_role(pid: u32) -> PgRole {
    let title = std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|bytes| String::from_utf8_lossy(&bytes).replace('\0', " "))
        .unwrap_or_default();
    let Some(rest) = title.trim().strip_prefix("postgres: ") else {
        return PgRole::Background("postmaster".to_owned());
    };
    let background = [
        "checkpointer",
        "background writer",
        "walwriter",
        "autovacuum launcher",
        "autovacuum worker",
        "logical replication launcher",
        "archiver",
        "startup",
    ];
    if let Some(role) = background.iter().find(|role| rest.starts_with(*role)) {
        return PgRole::Background((*role).to_owned());
    }
    // `user database host(port) state`
    let database = rest.split_whitespace().nth(1).unwrap_or_default();
    PgRole::Backend(database.to_owned())
}

/// CPU seconds (user, system) of one process.
pub fn process_cpu(pid: u32) -> Option<(f64, f64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let close = stat.rfind(')')?;
    let fields: Vec<&str> = stat[close + 1..].split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<u64>().ok());
    Some((
        ticks(11)? as f64 / TICKS_PER_SEC,
        ticks(12)? as f64 / TICKS_PER_SEC,
    ))
}

/// CPU seconds so far of every PostgreSQL process but `except`, by pid, with a role
/// name: the background process's, `backends of <database>` for `database`, and
/// `backends of other databases`.
pub fn postgres_roles(except: &[u32], database: &str) -> BTreeMap<u32, (String, f64)> {
    let mut roles = BTreeMap::new();
    for pid in pids() {
        if except.contains(&pid) {
            continue;
        }
        let is_postgres = std::fs::read_to_string(format!("/proc/{pid}/comm"))
            .is_ok_and(|comm| comm.trim() == "postgres");
        let Some((user, system)) = process_cpu(pid).filter(|_| is_postgres) else {
            continue;
        };
        let role = match postgres_role(pid) {
            PgRole::Background(role) => role,
            PgRole::Backend(db) if db == database => format!("backends of {database}"),
            PgRole::Backend(_) => "backends of other databases".to_owned(),
        };
        roles.insert(pid, (role, user + system));
    }
    roles
}

/// CPU seconds per role between two [`postgres_roles`] readings (a process that
/// started in between counts all it used).
pub fn roles_since(
    now: &BTreeMap<u32, (String, f64)>,
    then: &BTreeMap<u32, (String, f64)>,
) -> BTreeMap<String, f64> {
    let mut by_role = BTreeMap::new();
    for (pid, (role, seconds)) in now {
        let before = then.get(pid).map_or(0.0, |(_, s)| *s);
        *by_role.entry(role.clone()).or_insert(0.0) += (seconds - before).max(0.0);
    }
    by_role
}

/// The ids of the processes alive now (none if /proc cannot be read).
fn pids() -> impl Iterator<Item = u32> {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse::<u32>().ok())
}

/// Reads `utime + stime` of every process.
pub fn snapshot(ingest_pids: &[u32]) -> CpuSnapshot {
    let mut by_pid = BTreeMap::new();
    let mut pg_roles = BTreeMap::new();
    for pid in pids() {
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
        let group = classify(pid, comm, ingest_pids);
        if group == Group::Postgres {
            let role = match postgres_role(pid) {
                PgRole::Backend(_) => "backends".to_owned(),
                PgRole::Background(role) => role,
            };
            pg_roles.insert(pid, role);
        }
        by_pid.insert(pid, (group, seconds));
    }
    CpuSnapshot { by_pid, pg_roles }
}

impl CpuSnapshot {
    /// Cores used per group from `earlier` to `self` over `seconds` of wall time:
    /// processes alive at both ends count their difference, new ones all they used;
    /// ones that exited in between are lost (their last moments are not counted).
    pub fn since(&self, earlier: &CpuSnapshot, seconds: f64) -> CpuUse {
        let mut cores: BTreeMap<Group, f64> = Group::ALL.iter().map(|g| (*g, 0.0)).collect();
        let mut postgres_roles: BTreeMap<String, f64> = BTreeMap::new();
        for (pid, (group, now)) in &self.by_pid {
            let then = earlier.by_pid.get(pid).map_or(0.0, |(_, t)| *t);
            if let Some(role) = self.pg_roles.get(pid) {
                *postgres_roles.entry(role.clone()).or_insert(0.0) +=
                    (now - then).max(0.0) / seconds.max(1e-9);
            }
            *cores.entry(*group).or_insert(0.0) += (now - then).max(0.0) / seconds.max(1e-9);
        }
        CpuUse {
            cores,
            postgres_roles,
        }
    }
}

/// Load average and the number of cores, for the "was the machine quiet" line.
pub fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}
