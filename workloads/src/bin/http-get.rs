//! A minimal HTTP/1.1 client for test pods (the images have no shell or curl): prints the
//! status line and body of `GET <url>`, exits non-zero if no response arrives in time.
//! With `--repeat N` it sends N requests, one every `--every-ms` (each on its own
//! connection and thread, so a held one does not delay the next), and prints one line per
//! request: `<i> <status line>` or `<i> error: <cause>`.
use std::{
    io::{Read, Write},
    net::{TcpStream, ToSocketAddrs},
    process::ExitCode,
    time::Duration,
};

use clap::Parser;

#[derive(Parser)]
struct Args {
    /// `http://host[:port]/path`
    url: String,
    /// Give up after this many seconds (connect plus response).
    #[arg(long, default_value_t = 10)]
    timeout: u64,
    /// Requests to send (a stream when more than one).
    #[arg(long, default_value_t = 1)]
    repeat: u32,
    /// Milliseconds between the starts of two requests of a stream.
    #[arg(long, default_value_t = 0)]
    every_ms: u64,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let timeout = Duration::from_secs(args.timeout);
    if args.repeat > 1 {
        return stream(
            &args.url,
            timeout,
            args.repeat,
            Duration::from_millis(args.every_ms),
        );
    }
    match get(&args.url, timeout) {
        Ok(resp) => {
            print!("{resp}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("http-get {}: {e:#}", args.url);
            ExitCode::FAILURE
        }
    }
}

/// `repeat` requests, one started every `every`; one line each, in order.
fn stream(url: &str, timeout: Duration, repeat: u32, every: Duration) -> ExitCode {
    let started = std::time::Instant::now();
    let requests: Vec<_> = (0..repeat)
        .map(|i| {
            let due = started + every * i;
            std::thread::sleep(due.saturating_duration_since(std::time::Instant::now()));
            let url = url.to_string();
            std::thread::spawn(move || get(&url, timeout))
        })
        .collect();
    let mut failed = false;
    for (i, r) in requests.into_iter().enumerate() {
        match r.join() {
            Ok(Ok(resp)) => println!("{i} {}", resp.lines().next().unwrap_or("")),
            Ok(Err(e)) => {
                failed = true;
                println!("{i} error: {e:#}");
            }
            Err(_) => {
                failed = true;
                println!("{i} error: request thread panicked");
            }
        }
    }
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

fn get(url: &str, timeout: Duration) -> anyhow::Result<String> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| anyhow::anyhow!("only http:// URLs"))?;
    let (authority, path) = rest
        .split_once('/')
        .map_or((rest, "/".to_string()), |(a, p)| (a, format!("/{p}")));
    let hostport = if authority.contains(':') {
        authority.to_string()
    } else {
        format!("{authority}:80")
    };
    let addr = hostport
        .to_socket_addrs()?
        .next()
        .ok_or_else(|| anyhow::anyhow!("{hostport} resolved to nothing"))?;
    let mut s = TcpStream::connect_timeout(&addr, timeout)?;
    s.set_read_timeout(Some(timeout))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\n\r\n"
    )?;
    let mut buf = String::new();
    s.read_to_string(&mut buf)?;
    if buf.is_empty() {
        anyhow::bail!("connection closed without a response");
    }
    Ok(buf)
}
