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
        let fields = after_comm(&stat)?;
        // utime and stime are fields 14 and 15; `fields` starts at field 3 (state).
        let field = |n: usize| -> Result<f64> {
            Ok(fields.get(n - 3).context("a short /proc stat")?.parse()?)
        };
        total += (field(14)? + field(15)?) / ticks;
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
        let Ok(fields) = after_comm(&stat) else {
            continue;
        };
        if fields.get(1).and_then(|p| p.parse::<u32>().ok()) == Some(pid) {
            found.push(dir);
        }
    }
    Ok(found)
}

/// `/proc/<pid>`.
pub fn proc_dir(pid: u32) -> PathBuf {
    Path::new("/proc").join(pid.to_string())
}

/// The fields of a `/proc/<pid>/stat` line after the command's closing parenthesis (the
/// command may hold spaces and parentheses): state first.
fn after_comm(stat: &str) -> Result<Vec<&str>> {
    Ok(stat
        .rsplit_once(')')
        .context("a /proc stat without its command")?
        .1
        .split_whitespace()
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

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
