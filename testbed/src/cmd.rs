//! Running external programs with errors that name the step that failed, and long steps
//! that say how far they are (no silent stretch: a heartbeat line at least every
//! [`HEARTBEAT`], or an updating line on a terminal, the way cargo shows its build).
use std::{
    ffi::OsStr,
    io::{BufRead, BufReader, IsTerminal, Write},
    path::Path,
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};

/// Longest a long step stays silent when stderr is not a terminal (CI logs).
pub const HEARTBEAT: Duration = Duration::from_secs(10);

/// Runs `cmd`, inheriting stdio; fails naming `step` and the exit status.
pub fn run(step: &str, cmd: &mut Command) -> Result<()> {
    let status = cmd
        .status()
        .with_context(|| format!("{step}: could not start {:?}", cmd.get_program()))?;
    if !status.success() {
        bail!("{step}: {} exited with {status}", describe(cmd));
    }
    Ok(())
}

/// Runs `cmd` and returns its stdout; stderr is included in the error.
pub fn output(step: &str, cmd: &mut Command) -> Result<String> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("{step}: could not start {:?}", cmd.get_program()))?;
    if !out.status.success() {
        bail!(
            "{step}: {} exited with {}: {}",
            describe(cmd),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Runs `cmd` with `input` on its stdin and returns its stdout.
pub fn output_with_input(step: &str, cmd: &mut Command, input: &[u8]) -> Result<String> {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("{step}: could not start {:?}", cmd.get_program()))?;
    child
        .stdin
        .take()
        .context("stdin")?
        .write_all(input)
        .with_context(|| format!("{step}: writing stdin"))?;
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!(
            "{step}: {} exited with {}: {}",
            describe(cmd),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Runs `cmd` quietly and reports only whether it succeeded.
pub fn succeeds(cmd: &mut Command) -> bool {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Runs `cmd` with its output sent to `log`, showing progress while it runs; on failure
/// the log's tail is in the error.
pub fn run_logged(step: &str, cmd: &mut Command, log: &Path) -> Result<()> {
    run_logged_counting(step, cmd, log, None)
}

/// [`run_logged`] for a command that writes one log line per unit of work (`go build -v`
/// prints one package per line): progress shows `lines/total unit`.
pub fn run_logged_counting(
    step: &str,
    cmd: &mut Command,
    log: &Path,
    total: Option<(usize, &str)>,
) -> Result<()> {
    run_logged_inner(step, cmd, log, total, None)
}

/// A step that ran past its limit and was stopped (its whole process group killed).
#[derive(Debug)]
pub struct TimedOut {
    pub step: String,
    pub limit: Duration,
    /// The last lines of its log.
    pub tail: String,
}

impl std::fmt::Display for TimedOut {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}: still running after {}; stopped; its last lines:\n{}",
            self.step,
            elapsed_text(self.limit),
            self.tail
        )
    }
}

impl std::error::Error for TimedOut {}

/// [`run_logged`] for a command that may hang: after `limit`, `on_hang` is given its PID
/// (its process group) to look at what hangs while it still does; then the command and
/// everything it started are killed, and the error is a [`TimedOut`].
pub fn run_logged_within(
    step: &str,
    cmd: &mut Command,
    log: &Path,
    limit: Duration,
    on_hang: &dyn Fn(u32),
) -> Result<()> {
    use std::os::unix::process::CommandExt;
    // Its own process group, so that the kill reaches what it started (podman, netavark).
    cmd.process_group(0);
    run_logged_inner(step, cmd, log, None, Some((limit, on_hang)))
}

fn run_logged_inner(
    step: &str,
    cmd: &mut Command,
    log: &Path,
    total: Option<(usize, &str)>,
    limit: Option<(Duration, &dyn Fn(u32))>,
) -> Result<()> {
    if let Some(dir) = log.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let file = std::fs::File::create(log).with_context(|| format!("{step}: {}", log.display()))?;
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(file.try_clone()?)
        .stderr(file)
        .spawn()
        .with_context(|| format!("{step}: could not start {:?}", cmd.get_program()))?;
    let start = Instant::now();
    let tty = std::io::stderr().is_terminal();
    let mut last_beat = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if let Some((limit, on_hang)) = limit
            && start.elapsed() >= limit
        {
            if tty {
                eprint!("\r\x1b[2K");
            }
            on_hang(child.id());
            let group = nix::unistd::Pid::from_raw(-(child.id() as i32));
            let _ = nix::sys::signal::kill(group, nix::sys::signal::Signal::SIGKILL);
            let _ = child.wait();
            let text = std::fs::read_to_string(log).unwrap_or_default();
            return Err(TimedOut {
                step: step.to_string(),
                limit,
                tail: tail(&text, 25),
            }
            .into());
        }
        thread::sleep(Duration::from_millis(500));
        if tty || last_beat.elapsed() >= HEARTBEAT {
            last_beat = Instant::now();
            let line = progress_line(step, start.elapsed(), log, total);
            if tty {
                eprint!("\r\x1b[2K{line}");
            } else {
                eprintln!("{line}");
            }
        }
    };
    if tty {
        eprint!("\r\x1b[2K");
    }
    if !status.success() {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        bail!(
            "{step}: {} exited with {status}; last lines of {}:\n{}",
            describe(cmd),
            log.display(),
            tail(&text, 25)
        );
    }
    Ok(())
}

/// `    step: 1m05s, 1234/2890 packages, last: k8s.io/api/core/v1`.
fn progress_line(
    step: &str,
    elapsed: Duration,
    log: &Path,
    total: Option<(usize, &str)>,
) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines = text.lines().count();
    let last: String = text.lines().last().unwrap_or("").chars().take(70).collect();
    let count = match total {
        Some((n, unit)) => format!("{}/{n} {unit}", lines.min(n)),
        None => format!("{lines} log lines"),
    };
    format!(
        "    {step}: {}, {count}, last: {last}",
        elapsed_text(elapsed)
    )
}

/// `42s` or `3m07s`.
pub fn elapsed_text(d: Duration) -> String {
    let s = d.as_secs();
    if s < 60 {
        format!("{s}s")
    } else {
        format!("{}m{:02}s", s / 60, s % 60)
    }
}

/// The last `n` lines of `text`.
pub fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Streams `cmd`'s stdout line by line to `each`, then fails if it exited non-zero.
pub fn stream_lines(step: &str, cmd: &mut Command, mut each: impl FnMut(&str)) -> Result<()> {
    let mut child = cmd
        .stdout(Stdio::piped())
        .spawn()
        .with_context(|| format!("{step}: could not start {:?}", cmd.get_program()))?;
    if let Some(out) = child.stdout.take() {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            each(&line);
        }
    }
    let status = child.wait()?;
    if !status.success() {
        bail!("{step}: {} exited with {status}", describe(cmd));
    }
    Ok(())
}

/// The processes of process group `pgid`, one line each: PID, state, what the kernel waits
/// in (`wchan`), command line. For saying where a hung step hangs.
pub fn process_group(pgid: u32) -> Vec<String> {
    let mut found = Vec::new();
    for pid in std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_string_lossy().parse::<u32>().ok())
    {
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        if crate::procs::stat_field::<u32>(&stat, crate::procs::PGRP) != Some(pgid) {
            continue;
        }
        let wchan = std::fs::read_to_string(format!("/proc/{pid}/wchan")).unwrap_or_default();
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline"))
            .map(|b| String::from_utf8_lossy(&b).replace('\0', " "))
            .unwrap_or_default();
        found.push(format!(
            "{pid} {} wchan={} {}",
            crate::procs::stat_field::<String>(&stat, crate::procs::STATE)
                .unwrap_or_else(|| "?".into()),
            if wchan.is_empty() { "-" } else { &wchan },
            cmdline.trim().chars().take(160).collect::<String>()
        ));
    }
    found
}

/// `cmd` as a shell-like line, for error messages.
pub fn describe(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

/// Whether `program` is on PATH.
pub fn have(program: impl AsRef<OsStr>) -> bool {
    let program = program.as_ref();
    std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|dir| dir.join(program).is_file()))
}

/// A progress line at the start of a step and one with its duration at the end. A step
/// that runs long between the two prints a heartbeat through [`Progress::beat`] or
/// [`run_logged`].
pub struct Progress {
    what: String,
    start: Instant,
}

impl Progress {
    pub fn start(what: impl Into<String>) -> Self {
        let what = what.into();
        eprintln!("==> {what}");
        Self {
            what,
            start: Instant::now(),
        }
    }

    /// Prints how far the step is, with its elapsed time.
    pub fn beat(&self, detail: &str) {
        eprintln!(
            "    {}: {}, {detail}",
            self.what,
            elapsed_text(self.start.elapsed())
        );
    }

    /// Prints how long the step took.
    pub fn done(self) {
        eprintln!(
            "    {}: done in {:.1}s",
            self.what,
            self.start.elapsed().as_secs_f64()
        );
    }
}

/// Polls `check` every 250 ms until it succeeds, failing with `what` after `timeout`; says
/// what it waits for every [`HEARTBEAT`].
pub fn wait_for(what: &str, timeout: Duration, mut check: impl FnMut() -> bool) -> Result<()> {
    let start = Instant::now();
    let mut last_beat = Instant::now();
    while start.elapsed() < timeout {
        if check() {
            return Ok(());
        }
        if last_beat.elapsed() >= HEARTBEAT {
            last_beat = Instant::now();
            eprintln!("    waiting for {what}: {}", elapsed_text(start.elapsed()));
        }
        thread::sleep(Duration::from_millis(250));
    }
    bail!("timed out after {}s waiting for {what}", timeout.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn elapsed_is_seconds_then_minutes() {
        assert_eq!(elapsed_text(Duration::from_secs(42)), "42s");
        assert_eq!(elapsed_text(Duration::from_secs(187)), "3m07s");
    }

    #[test]
    fn tail_keeps_the_last_lines() {
        assert_eq!(tail("a\nb\nc\n", 2), "b\nc");
        assert_eq!(tail("a", 5), "a");
    }

    #[test]
    fn a_failed_logged_command_names_its_step_and_shows_the_log_tail() {
        let log = std::env::temp_dir().join(format!("elasti-cmd-test-{}.log", std::process::id()));
        let err = run_logged(
            "the step",
            Command::new("sh").args(["-c", "echo first; echo last; exit 3"]),
            &log,
        )
        .expect_err("exit 3 fails");
        let text = format!("{err:#}");
        assert!(text.starts_with("the step: "), "{text}");
        assert!(
            text.contains("exit status: 3") && text.ends_with("first\nlast"),
            "{text}"
        );
        let _ = std::fs::remove_file(log);
    }

    #[test]
    fn a_hung_command_is_stopped_at_its_limit_with_what_it_started() {
        let dir = std::env::temp_dir().join(format!("elasti-cmd-hang-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{e}"));
        let (log, pid_file) = (dir.join("log"), dir.join("pid"));
        let looked = std::cell::Cell::new(false);
        let started = Instant::now();
        let err = run_logged_within(
            "the step",
            Command::new("sh").arg("-c").arg(format!(
                "echo preparing; sleep 60 & echo $! > {}; wait",
                pid_file.display()
            )),
            &log,
            Duration::from_secs(1),
            &|pid| looked.set(process_group(pid).iter().any(|p| p.contains("sleep 60"))),
        )
        .expect_err("it hangs");
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "stopped at its limit"
        );
        assert!(
            looked.get(),
            "the hang was looked at, its background child listed, before the kill"
        );
        let timed_out = err.downcast_ref::<TimedOut>().expect("a TimedOut");
        assert_eq!(timed_out.tail, "preparing");
        assert!(format!("{err:#}").starts_with("the step: still running after 1s"));
        // The background `sleep` is in the killed group: gone (a zombie at most, until init
        // reaps it).
        let pid = std::fs::read_to_string(&pid_file).unwrap_or_else(|e| panic!("{e}"));
        let gone = || match std::fs::read_to_string(format!("/proc/{}/stat", pid.trim())) {
            Err(_) => true,
            Ok(stat) => stat.contains(") Z "),
        };
        assert!(
            wait_for("the killed child", Duration::from_secs(5), gone).is_ok(),
            "the command's child was killed too"
        );
        let _ = std::fs::remove_dir_all(dir);
    }
}
