//! `kubectl get --watch` with every line stamped on arrival, so the bench can time cluster
//! events (a pod created, an endpoint Ready, replicas changed) to the millisecond. The
//! objects' own timestamps have whole seconds only. Two watches see the apiserver's events
//! with the same delay, so the difference between their stamps is exact to about a
//! millisecond.
use std::{
    io::{BufRead, BufReader},
    process::{Child, Stdio},
    sync::mpsc,
    time::{Duration, Instant, SystemTime},
};

use anyhow::{Context, Result, bail};

pub struct Watch {
    what: String,
    child: Child,
    lines: mpsc::Receiver<(SystemTime, String)>,
}

impl Watch {
    /// `kubectl get <args> --watch -o jsonpath=<template>`; `template` prints one line per
    /// object (it must end in `{"\n"}`).
    pub fn start(what: &str, args: &[&str], template: &str) -> Result<Self> {
        let mut child = super::cluster()
            .kubectl()
            .arg("get")
            .args(args)
            .args(["--watch", "-o", &format!("jsonpath={template}")])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("kubectl watch {what}"))?;
        let out = child.stdout.take().context("kubectl watch stdout")?;
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                if tx.send((SystemTime::now(), line)).is_err() {
                    break;
                }
            }
        });
        Ok(Self {
            what: what.into(),
            child,
            lines,
        })
    }

    /// The first line stamped at or after `since` that satisfies `pred`, waiting up to
    /// `timeout`. Earlier lines, and lines that do not match, are dropped.
    pub fn first(
        &self,
        since: SystemTime,
        timeout: Duration,
        pred: impl Fn(&str) -> bool,
    ) -> Result<(SystemTime, String)> {
        let mut found = None;
        self.until(since, timeout, |at, line| {
            let hit = pred(line);
            if hit {
                found = Some((at, line.to_owned()));
            }
            hit
        })?;
        found.context("bench: watch ended without its line")
    }

    /// Hands each line stamped at or after `since` to `done` with its stamp, until `done`
    /// says so, waiting up to `timeout` in all. Earlier lines are dropped.
    pub fn until(
        &self,
        since: SystemTime,
        timeout: Duration,
        mut done: impl FnMut(SystemTime, &str) -> bool,
    ) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok((at, line)) if at >= since && done(at, &line) => return Ok(()),
                Ok(_) => {}
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    bail!("bench: no matching {} event within {timeout:?}", self.what)
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    bail!("bench: the {} watch ended", self.what)
                }
            }
        }
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        // Our own child, by PID.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Milliseconds from `a` to `b` (negative if `b` is earlier).
pub fn ms_between(a: SystemTime, b: SystemTime) -> f64 {
    match b.duration_since(a) {
        Ok(d) => d.as_secs_f64() * 1e3,
        Err(e) => -e.duration().as_secs_f64() * 1e3,
    }
}
