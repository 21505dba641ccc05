//! What processes cost, from `/proc`: resident memory and CPU time, for the bench's figures
//! (an agent or operator pod's processes, a proxy and its workers).
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

/// The resident memory (`VmRSS`) of `procs` (their `/proc/<pid>` directories) together,
/// bytes.
pub fn rss_bytes(procs: &[PathBuf]) -> Result<u64> {
    let mut total = 0;
    for dir in procs {
        let status = std::fs::read_to_string(dir.join("status"))?;
        let kib = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .context("no VmRSS in /proc status")?;
        total += kib * 1024;
    }
    Ok(total)
}

/// The CPU time (user and system, all threads) `procs` have used so far, seconds.
pub fn cpu_seconds(procs: &[PathBuf]) -> Result<f64> {
    let ticks =
        nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)?.context("no CLK_TCK")? as f64;
    let mut total = 0.0;
    for dir in procs {
        let stat = std::fs::read_to_string(dir.join("stat"))?;
        let field = |n| stat_field::<f64>(&stat, n).context("a short /proc stat");
        total += (field(UTIME)? + field(STIME)?) / ticks;
    }
    Ok(total)
}

/// `pid` and its children (by parent PID), as `/proc/<pid>` directories: a server's master
/// and its workers.
pub fn with_children(pid: u32) -> Result<Vec<PathBuf>> {
    let mut found = vec![proc_dir(pid)];
    for entry in std::fs::read_dir("/proc")? {
        let dir = entry?.path();
        let Ok(stat) = std::fs::read_to_string(dir.join("stat")) else {
            continue;
        };
        if stat_field::<u32>(&stat, PPID) == Some(pid) {
            found.push(dir);
        }
    }
    Ok(found)
}

/// Fields of a `/proc/<pid>/stat` line, numbered as `proc(5)` numbers them.
pub const STATE: usize = 3;
pub const PPID: usize = 4;
pub const PGRP: usize = 5;
pub const UTIME: usize = 14;
pub const STIME: usize = 15;

/// Field `n` of `stat`, a `/proc/<pid>/stat` line (numbered as `proc(5)` does: [`STATE`],
/// [`PPID`], …), parsed. Counted after the command's closing parenthesis, since the
/// command may hold spaces and parentheses.
pub fn stat_field<T: std::str::FromStr>(stat: &str, n: usize) -> Option<T> {
    stat.rsplit_once(')')?
        .1
        .split_whitespace()
        .nth(n.checked_sub(STATE)?)?
        .parse()
        .ok()
}

/// `/proc/<pid>`.
pub fn proc_dir(pid: u32) -> PathBuf {
    Path::new("/proc").join(pid.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_are_counted_after_a_command_with_spaces_and_parentheses() {
        let stat = "42 (a (b) c) S 7 42 42 0 -1 4194560 1 0 0 0 250 30 0 0";
        assert_eq!(stat_field::<String>(stat, STATE).as_deref(), Some("S"));
        assert_eq!(stat_field::<u32>(stat, PPID), Some(7));
        assert_eq!(stat_field::<u32>(stat, PGRP), Some(42));
        assert_eq!(stat_field::<u64>(stat, UTIME), Some(250));
        assert_eq!(stat_field::<u64>(stat, STIME), Some(30));
        assert_eq!(
            stat_field::<u32>(stat, 1),
            None,
            "the PID is before the command"
        );
    }

    #[test]
    fn this_process_uses_cpu_and_memory_and_is_its_childrens_parent() {
        let me = proc_dir(std::process::id());
        assert!(rss_bytes(std::slice::from_ref(&me)).unwrap_or(0) > 0);
        let spent = cpu_seconds(std::slice::from_ref(&me)).unwrap_or(-1.0);
        let start = std::time::Instant::now();
        let mut x = 0u64;
        while start.elapsed() < std::time::Duration::from_millis(100) {
            x = std::hint::black_box(x.wrapping_add(1));
        }
        let later = cpu_seconds(std::slice::from_ref(&me)).unwrap_or(-1.0);
        assert!(
            later - spent >= 0.05,
            "100 ms of spinning: {spent} → {later}"
        );
        let mut child = std::process::Command::new("sleep")
            .arg("5")
            .spawn()
            .unwrap_or_else(|e| panic!("sleep: {e}"));
        let family = with_children(std::process::id()).unwrap_or_default();
        let _ = child.kill();
        let _ = child.wait();
        assert!(family.contains(&proc_dir(child.id())), "{family:?}");
    }
}
