//! A minimal HTTP/1.1 client for test pods (the images have no shell or curl): prints the
//! status line and body of `GET <url>`, exits non-zero if no response arrives in time.
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
}

fn main() -> ExitCode {
    let args = Args::parse();
    match get(&args.url, Duration::from_secs(args.timeout)) {
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
